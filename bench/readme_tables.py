"""The generated tables of README.md and the docs pages, written from benchmark CSVs and from the solver registry:
each table's text lives between `<!-- table:NAME -->` and `<!-- /table:NAME -->` in the page that holds it (PAGES,
README.md when a table is not listed there) and is rewritten from its source; nothing else is touched.

    python bench/readme_tables.py            # every table in TABLES, each into its page
    python bench/readme_tables.py quality    # one
    python bench/readme_tables.py --check    # write nothing; fail naming, per page, the tables that are out of date

A bench adds its table by writing a function that returns markdown (`pivot` makes the usual solver x calls grid),
registering it in TABLES and naming its page in PAGES. Rerunning on the same sources leaves every page unchanged; a
missing marker, or the markers of a registered table in a page other than its own, is an error. Markers of a name
that is not registered are left alone.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import math
from pathlib import Path
from typing import Callable

import fused_diffusion as fd
from common import RESULTS
from fused_diffusion import demo
from fused_diffusion.zoo.sampling_methods import Method
from fused_diffusion.solvers import EAGER_ONLY, SOLVERS, Solver
from fused_diffusion.solvers.base import SCHEDULE_KINDS

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "docs" / "demo"  # `python -m fused_diffusion demo --out docs/demo`: the README's demo table and picture


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def significant(value: float, digits: int = 3) -> str:
    """`digits` significant figures without an exponent: 156, 54.2, 7.74, 0.0231."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def pivot(rows: list[dict], row: str, column: str, value: str, labels: dict[str, str] | None = None,
          corner: str = "", missing: str = "·") -> str:
    """A markdown table: one line per distinct `row` (in CSV order), one column per distinct numeric `column` (sorted),
    cells `value` to 3 significant figures, the smallest of each column in bold."""
    labels = labels or {}
    names = list(dict.fromkeys(r[row] for r in rows))
    columns = sorted({int(r[column]) for r in rows})
    cells = {(r[row], int(r[column])): float(r[value]) for r in rows}
    best = {c: min(v for (_, c2), v in cells.items() if c2 == c) for c in columns}
    lines = [f"| {corner} | " + " | ".join(map(str, columns)) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        shown = [(f"**{significant(cells[name, c])}**" if cells[name, c] == best[c] else significant(cells[name, c]))
                 if (name, c) in cells else missing for c in columns]
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def replace_between_markers(text: str, name: str, body: str, page: str = "README.md") -> str:
    """`text` (of `page`) with everything between the markers of table `name` replaced by `body` (on lines of its
    own)."""
    start, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{page} needs exactly one '{start}' followed by one '{end}' (table {name})")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def provenance(row: dict) -> str:
    """Where a CSV's figures come from: machine, threads, torch, date and the command."""
    return f"{row['machine']}, {row['threads']} threads, torch {row['torch']}, {row['date']}: `{row['command']}`."


def quality_table() -> str:
    """FD of the digits model against model calls, from bench_quality.py."""
    rows = read_csv(RESULTS / "quality_digits_cpu.csv")
    floor = next(r for r in rows if r["calls"] == "0")
    # the solvers' own labels; the AMED rows say how the bench ran them
    labels = {**{name: cls.label for name, cls in SOLVERS.items()},
              "amed": "AMED, r = ½ (AMED's schedule, no predictor)", "amed_learned": "AMED (learned)",
              "amed_plugin": "AMED-Plugin (iPNDM)"}
    return (f"FD of {floor['samples']} digits samples against model calls (train-split floor "
            f"{significant(float(floor['fd']))}; the best of each column in bold; · = the solver cannot spend exactly "
            "that many calls). " + provenance(floor) + "\n\n"
            + pivot([r for r in rows if r["calls"] != "0"], "solver", "calls", "fd", labels, corner="solver \\ calls"))


def samplers_table() -> str:
    """FD of the digits model for k-diffusion's samplers, from bench_samplers.py quality."""
    rows = read_csv(RESULTS / "samplers_digits_cpu.csv")
    fixed = [r for r in rows if not r["sampler"].startswith("dpm_adaptive")]
    adaptive = "; ".join(f"{r['sampler'].removeprefix('dpm_adaptive ')}: {r['calls']} calls, FD "
                         f"{significant(float(r['fd']))}" for r in rows if r["sampler"].startswith("dpm_adaptive"))
    first = rows[0]
    return (f"FD of {first['samples']} digits samples against model calls for each k-diffusion sampler (the most calls "
            f"within each budget on a Karras schedule to 0; dpm_fast exactly the budget; stochastic samplers with their "
            f"default noise, seed 0; the best of each column in bold). dpm_adaptive picks its own steps ({adaptive}). "
            + provenance(first) + "\n\n"
            + pivot(fixed, "sampler", "budget", "fd", corner="sampler \\ calls"))


def samplers_overhead_table() -> str:
    """Host time per step of the solver, fused against k-diffusion's ops and diffusers' loop, from bench_samplers.py
    overhead."""
    rows = read_csv(RESULTS / "samplers_overhead_cpu.csv")
    first = rows[0]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    lines = ["| sampler | " + " | ".join(f"x {shape}: k-diffusion / diffusers / fd, us" for shape in shapes) + " |",
             "|---|" + "---|" * len(shapes)]
    cells = {(r["sampler"], r["shape"]): r for r in rows}
    other_commands: dict[str, list[str]] = {}  # rows measured by another run than the first row's
    for r in rows:
        if r["command"] != first["command"] and r["label"] not in other_commands.setdefault(r["command"], []):
            other_commands[r["command"]].append(r["label"])

    def cell(r: dict) -> str:
        diffusers = r["diffusers_us_per_step"]
        shown = "–" if diffusers in ("", "nan") else diffusers
        return (f"{r['k_diffusion_us_per_step']} / {shown} / **{r['fd_us_per_step']}** "
                f"({float(r['speedup_vs_k_diffusion']):.2f}×)")

    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        lines.append(f"| {cells[sampler, shapes[0]]['label']} | "
                     + " | ".join(cell(cells[sampler, shape]) for shape in shapes) + " |")
    return (f"Host time per step with a model that is one multiply, so the time is the solver's (and its checks): fd's "
            f"`sample_*` on its `{first['backend']}` backend, k-diffusion's update rules as it writes them "
            f"(fused_diffusion/testing/reference_samplers.py) and diffusers' own loop where a diffusers scheduler runs "
            f"the same solver; runs of {first['steps']} and {first['short_steps']} steps differenced, the best of interleaved runs, speed against "
            f"k-diffusion in brackets (bench/results/samplers_overhead_cpu.png). " + provenance(first)
            + "".join(f" The {', '.join(labels)} rows: `{command}`." for command, labels in other_commands.items())
            + "\n\n"
            + "\n".join(lines))


def ops_host_table() -> str:
    """Host time per call of each fused op's forms against one torch op, from bench_ops.py --host."""
    rows = read_csv(RESULTS / "ops_host_cpu.csv")
    first = rows[0]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    cells = {(r["op"], r["impl"]): r for r in rows}
    lines = ["| op | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
    for op in dict.fromkeys(r["op"] for r in rows):
        lines.append(f"| {op} | " + " | ".join(
            f"{cells[op, impl]['us_per_call']} ({float(cells[op, impl]['vs_torch_op']):.1f}×)" if (op, impl) in cells
            else "–" for impl in impls) + " |")
    return (f"Host µs per call on {first['device']} tensors of 2×8×2×8 (the arithmetic is nothing), in brackets against "
            f"one torch op (torch.add) timed alongside; backend `{first['backend']}`, the least of interleaved runs "
            f"(bench/results/ops_host_cpu.png). " + provenance(first) + "\n\n" + "\n".join(lines))


def few_step_table() -> str:
    """FD of every few-step method on the digits model against model calls, with what each cost to get, from
    bench_few_step.py."""
    rows = read_csv(RESULTS / "few_step_digits_cpu.csv")
    floor = rows[0]
    teacher = next(r for r in rows if r["method"].startswith("teacher:"))
    methods = [r for r in rows[1:] if r is not teacher]
    costs = {}
    for r in methods:
        minutes, calls = r["train_minutes"], r["teacher_calls"]
        parts = ([f"{minutes} min"] if minutes else []) + ([f"{int(float(calls)) // 1000}k teacher calls"] if calls else [])
        costs[r["method"]] = "none" if minutes in ("0", "0.0") else ", ".join(parts)
    labels = {name: f"{name} ({cost})" for name, cost in costs.items()}
    return (f"FD of {floor['samples']} samples against model calls, the same seeded noise for every row (train-split "
            f"floor {significant(float(floor['fd']))}; {teacher['method']}: FD {significant(float(teacher['fd']))}; "
            f"the best of each column in bold; · = the method does not run at that budget). In brackets what the "
            f"method cost to get: training minutes on one CPU thread and the teacher's model calls (the Γ estimate's "
            f"for Analytic-DPM). " + provenance(floor) + "\n\n"
            + pivot(methods, "method", "calls", "fd", labels, corner="method (cost) \\ calls"))


def demo_table() -> str:
    """The demo's time to quality: each fast method's runs (model calls: FD, speed-up over the baselines at equal FD)
    and what it cost to get, then what the baselines need for the target FD, from the CSV that
    `python -m fused_diffusion demo --out docs/demo` writes."""
    rows = read_csv(DEMO / "time_to_quality.csv")
    first, target = rows[0], float(rows[0]["target_fd"])
    baselines = [r for r in rows if r["kind"] == "baseline"]
    lines = ["| method | model calls: FD (speed-up at equal FD) | training |", "|---|---|---|"]
    for label in dict.fromkeys(r["method"] for r in rows if r["kind"] != "baseline"):
        mine = [r for r in rows if r["method"] == label]
        runs = ", ".join(f"{r['calls']}: {significant(float(r['fd']))} ({r['speedup'].replace('x', '×')})"
                         for r in mine)
        minutes, calls = mine[0]["train_minutes"], mine[0]["teacher_calls"]
        cost = "none" if float(minutes or 0) == 0 else f"{float(minutes):.0f} min" + (
            f", {int(float(calls)) // 1000}k teacher calls" if calls not in ("", "0") else "")
        lines.append(f"| {label} | {runs} | {cost} |")
    needs = []
    for label in dict.fromkeys(r["method"] for r in baselines):
        reached = [r for r in baselines if r["method"] == label and float(r["fd"]) <= target]
        if reached:
            r = min(reached, key=lambda r: int(r["calls"]))
            needs.append(f"{label} {r['calls']} calls ({float(r['seconds']):.2f} s)")
    runs = [demo.Measured(Method(r["method"], r["kind"], (), None), int(r["calls"]), float(r["seconds"]),
                          float(r["fd"]), float(r["confidence"]), None) for r in rows]
    advice = demo.advice_text(demo.which_to_use(runs, target))
    return (f"Which to use, in this run: {advice}.\n\n"
            f"{first['samples']} samples from the same noise; FD: Frechet distance to held-out digits in a digits "
            f"classifier's features, lower is better (the train digits score {significant(float(first['data_fd']))}). "
            f"The baselines reach the target FD {significant(target)} with " + ", ".join(needs) + "; a method's "
            f"speed-up is their wall time for its FD over its own (> : no baseline run reaches it). "
            + provenance(first) + "\n\n" + "\n".join(lines))


def shortcut_table() -> str:
    """FD against steps for the shortcut digits model and its flow-matching twin, from bench_shortcut.py."""
    rows = read_csv(RESULTS / "shortcut_digits_cpu.csv")
    floor = rows[0]
    labels = {"shortcut": "shortcut model (`fd.zoo.digits_shortcut()`)",
              "flow": "flow matching only (`objective=\"flow\"`)"}
    return (f"FD of {floor['samples']} samples against steps (= model calls), the same seeded noise for both "
            f"(train-split floor {significant(float(floor['fd']))}; the best of each column in bold). "
            + provenance(floor) + "\n\n"
            + pivot(rows[1:], "model", "steps", "fd", labels, corner="model \\ steps"))


def analytic_dpm_table() -> str:
    """FD against steps for Analytic-DPM and the same loop with DDPM's / DDIM's variances, on the paper's even and
    optimal trajectories, from bench_analytic_dpm.py."""
    rows = read_csv(RESULTS / "analytic_dpm_digits_cpu.csv")
    floor = rows[0]
    labels = {"analytic_ddpm": "Analytic-DDPM (η = 1, optimal variance)",
              "analytic_ddpm_no_clip": "Analytic-DDPM, last noise not clipped",
              "analytic_ddim": "Analytic-DDIM (η = 0, optimal variance)", "ddpm_beta_tilde": "DDPM, β̃ (posterior)",
              "ddpm_beta": "DDPM, β", "ddim": "DDIM (no noise)", "fd.sample_ddim": "`fd.sample_ddim` (diffusers' loop)",
              "analytic_ddpm_optimal": "Analytic-DDPM, optimal trajectory",
              "analytic_ddim_optimal": "Analytic-DDIM, optimal trajectory (the DDPM one)"}
    return (f"FD of {floor['samples']} samples against steps (= model calls), the same seeded noise for every row, "
            f"the paper's even timesteps unless the row says optimal trajectory (train-split floor "
            f"{significant(float(floor['fd']))}; the best of each column in bold; Γ from {floor['gamma_draws']} draws "
            f"per timestep in {floor['gamma_seconds']} s, largest standard error {floor['gamma_max_stderr']}, above 1 "
            f"at {floor['gamma_over_1']} timesteps from t = {floor['gamma_first_over_1']}). " + provenance(floor)
            + "\n\n" + pivot(rows[1:], "sampler", "steps", "fd", labels, corner="variance \\ steps"))


def sdo_table() -> str:
    """One optimisation step through the sampler, SDO against full backprop, from bench_sdo.py cost and steer."""
    cost = read_csv(RESULTS / "sdo_cost_cpu.csv")
    steer = {r["method"]: r for r in read_csv(RESULTS / "sdo_steer_cpu.csv")}
    cells = {(int(r["batch"]), int(r["steps"]), r["method"]): r for r in cost}
    lines = ["| batch | solver steps | time, SDO / full (ms) | time ratio | peak memory, SDO / full (MB) | peak ratio "
             "| saved for backward, SDO / full (MB) | ratio |", "|---" * 8 + "|"]
    for batch, steps in dict.fromkeys((b, n) for b, n, _ in cells):
        sdo, full = cells[batch, steps, "sdo"], cells[batch, steps, "full"]
        pairs = []
        for key in ("ms_per_step", "peak_memory_mb", "autograd_saved_mb"):
            mine, theirs = float(sdo[key]), float(full[key])
            pairs.append(f"{significant(mine)} / {significant(theirs)} | {theirs / mine:.1f}×")
        lines.append(f"| {batch} | {steps} | " + " | ".join(pairs) + " |")
    hits = "; ".join(f"{'SDO' if method == 'sdo' else 'full backprop'} {float(r['hit_rate_start']):.0%} → "
                     f"{float(r['hit_rate_final']):.0%} in {r['seconds']} s" for method, r in steer.items())
    return ("One optimisation step (a DPM++(2M) sample of the batch's noises, the classifier's loss, backward, Adam): "
            "median time of 5, the highest resident memory during a fresh process's first step above its start, the "
            "bytes autograd saved for backward. " + provenance(cost[0]) + "\n\n" + "\n".join(lines)
            + f"\n\nSteering 80 noises (8 per class) to their class, {steer['sdo']['iterations']} Adam steps through "
            f"{steer['sdo']['steps']} solver steps, the fraction classified as the target: {hits}. "
            + provenance(steer["sdo"]))


def integrations_table() -> str:
    """A diffusers pipeline with its own scheduler, with FusedScheduler, and fd.from_diffusers, from
    bench_integrations.py."""
    rows = read_csv(RESULTS / "integrations_speed_cpu.csv")
    first = rows[0]
    methods = ("FusedScheduler", "accelerate(pipe)", "fd.from_diffusers(...).sample")
    lines = ["| model | scheduler | diffusers' scheduler, ms | FusedScheduler, ms | `accelerate(pipe)`, ms "
             "| `from_diffusers(...).sample`, ms |", "|---|---|---|---|---|---|"]
    cells = {(r["model"], r["scheduler"], r["method"]): r for r in rows}
    for model, scheduler in dict.fromkeys((r["model"], r["scheduler"]) for r in rows):
        shown = [f"{significant(float(cells[model, scheduler, m]['ms']))} "
                 f"({float(cells[model, scheduler, m]['speedup_vs_diffusers']):.2f}×)"
                 for m in methods]
        lines.append(f"| {model} | {scheduler} | {significant(float(cells[model, scheduler, 'diffusers scheduler']['ms']))}"
                     f" | " + " | ".join(shown) + " |")
    return (f"`DDPMPipeline` at {first['steps']} steps, batch {first['batch']}, with diffusers' scheduler, with "
            "FusedScheduler and accelerated, and this library's own loop (`fd.from_diffusers`, no pipeline) on the "
            "same noise; the best of 5 interleaved runs, speed relative to diffusers' scheduler in brackets, outputs "
            "checked equal first. " + provenance(first)
            + "\n\n" + "\n".join(lines))


def pipelines_table() -> str:
    """Host time per step and per call of each pipeline family's own loop and accelerated, from bench_integrations.py
    pipelines."""
    rows = read_csv(RESULTS / "integrations_pipelines_cpu.csv")
    cells = {(r["pipeline"], r["method"]): r for r in rows}
    steps = rows[0]["steps"]
    lines = ["| pipeline | scheduler | own loop, us / step | `accelerate(pipe)`, us / step | speed per step | "
             f"own loop, ms / call of {steps} steps | `accelerate(pipe)`, ms / call | speed per call |",
             "|---|---|---|---|---|---|---|---|"]
    for pipeline in dict.fromkeys(r["pipeline"] for r in rows):
        own, fast = cells[pipeline, "own loop"], cells[pipeline, "accelerate(pipe)"]
        lines.append(f"| {pipeline} | {own['scheduler']} | {own['us_per_step']} | {fast['us_per_step']} | "
                     f"{float(fast['speedup_per_step']):.2f}× | {own['ms']} | {fast['ms']} | "
                     f"{float(fast['speedup_whole_call']):.2f}× |")
    return ("The tiny random pipelines of fused_diffusion/testing/tiny_pipelines.py with a network that is one "
            "multiply (what is left is the loop's host time), guidance on: whole calls at 1 and at " + steps + " steps, interleaved, the best "
            "of each; a step is their difference over the steps between, a call is what a user waits for (prompt "
            "handling and the run's setup included); the latents checked equal first. " + provenance(rows[0])
            + "\n\n" + "\n".join(lines))


def calls_in_n(calls: Callable[[int], int]) -> str:
    """`calls(n)` = a n + b written out ("2n − 1", "n"), checked over 1 to 8 steps."""
    steps = range(1, 9)
    counts = [calls(n) for n in steps]
    slope, intercept = counts[1] - counts[0], 2 * counts[0] - counts[1]
    if counts != [slope * n + intercept for n in steps]:
        raise ValueError(f"model calls {counts} of 1 to 8 steps are not a n + b")
    term = "n" if slope == 1 else f"{slope}n"
    return f"{term} {'+' if intercept > 0 else '−'} {abs(intercept)}" if intercept else term


def solver_with_defaults(cls: type[Solver]) -> Solver:
    """The solver with its default options, and stand-ins for those it has no default for (they change nothing the
    solvers table shows: dpm_fast's calls are its nfe whatever it is)."""
    stand_ins = {"alphas_cumprod": fd.ddpm_alphas_cumprod(), "nfe": 10}
    return cls(**{name: stand_ins[name] for name in inspect.signature(cls).parameters if name in stand_ins})


def solvers_table() -> str:
    """Every solver fd.Sampler and fd.solvers.get_solver take by name, each fact read from its class (the registry,
    fd.solvers.SOLVERS)."""
    lines = ["| function | solver (`fd.Sampler(model, name, ...)`) | model calls for n steps | noise: option (default) "
             "| model returns | schedule | paper |", "|---" * 7 + "|"]
    for name, cls in SOLVERS.items():
        solver = solver_with_defaults(cls)
        function = f"`sample_{name}`" if hasattr(fd, f"sample_{name}") else "—"
        if cls.schedule_kind == "sigma_range":  # the schedule has no steps: the run makes its nfe option's calls
            calls = "`nfe`"
        else:
            to_zero = calls_in_n(lambda n: solver.calls(n, to_zero=True))
            above_zero = calls_in_n(lambda n: solver.calls(n, to_zero=False))
            calls = to_zero if to_zero == above_zero else f"{to_zero}; ending above 0: {above_zero}"
        if cls.noise_option:
            noise = f"`{cls.noise_option}` ({inspect.signature(cls).parameters[cls.noise_option].default:g})"
        else:
            noise = "always" if solver.stochastic else "—"
        lines.append(f"| {function} | `{name}` | {calls} | {noise} | `{cls.model_output}` | `{cls.schedule_kind}` "
                     f"| {cls.paper} |")
    kinds = dict.fromkeys(cls.schedule_kind for cls in SOLVERS.values())
    return ("Every solver `fd.Sampler` and `fd.solvers.get_solver` take by name (`fd.solvers.SOLVERS`), each fact read "
            "from its class by `python bench/readme_tables.py solvers`; each runs eagerly and inside `fd.Sampler`'s "
            "CUDA graph. n is the number of steps, the schedule's length − 1; calls and noise are those of the default "
            "options (`get_solver(name, **options).calls(n, to_zero)` counts others). Schedules: "
            + "; ".join(f"`{kind}`, {SCHEDULE_KINDS[kind]}" for kind in kinds) + ".\n\n" + "\n".join(lines) + "\n\n"
            + " ".join(f"`{name}` is not a solver name: {reason}." for name, reason in EAGER_ONLY.items()))


TABLES: dict[str, Callable[[], str]] = {"quality": quality_table, "samplers": samplers_table,
                                        "samplers_overhead": samplers_overhead_table, "shortcut": shortcut_table,
                                        "analytic_dpm": analytic_dpm_table, "sdo": sdo_table,
                                        "integrations": integrations_table, "pipelines": pipelines_table,
                                        "solvers": solvers_table, "ops_host": ops_host_table,
                                        "few_step": few_step_table, "demo": demo_table}
# the page that holds each table, relative to the repository root (README.md for a table not listed here)
PAGES: dict[str, str] = {"solvers": "docs/samplers.md", "samplers": "docs/samplers.md",
                         "quality": "docs/few-step.md", "few_step": "docs/few-step.md", "shortcut": "docs/few-step.md",
                         "analytic_dpm": "docs/training-side.md", "sdo": "docs/training-side.md",
                         "integrations": "docs/integrations.md", "pipelines": "docs/integrations.md",
                         "ops_host": "docs/benchmarks.md", "samplers_overhead": "docs/benchmarks.md",
                         "demo": "README.md"}


def page_of(name: str) -> str:
    return PAGES.get(name, "README.md")


def markdown_pages(root: Path) -> list[Path]:
    """README.md and every page under docs/: where a table's markers could be."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def misplaced_markers(root: Path) -> list[str]:
    """'PAGE: table NAME (its page is OTHER)' for each registered table whose markers are in a page not its own."""
    found = []
    for path in markdown_pages(root):
        if not path.is_file():
            continue
        page, text = path.relative_to(root).as_posix(), path.read_text()
        found += [f"{page}: table {name} (its page is {page_of(name)})" for name in TABLES
                  if page != page_of(name) and f"<!-- table:{name} -->" in text]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", help=f"of {', '.join(TABLES)} (default: all)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the folder the pages are in, README.md and docs/ (default: this repository)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming, per page, the tables whose text differs from their source")
    args = parser.parse_args()
    names = args.tables or list(TABLES)
    if unknown := set(names) - set(TABLES):
        parser.error(f"unknown tables {sorted(unknown)}; known: {', '.join(TABLES)}")
    if misplaced := misplaced_markers(args.root):
        raise SystemExit("tables in a page not their own (move the markers, or change PAGES): " + "; ".join(misplaced))
    pages: dict[str, list[str]] = {}
    for name in names:
        pages.setdefault(page_of(name), []).append(name)
    updated, stale = {}, {}
    for page, page_names in pages.items():
        path = args.root / page
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: it should hold tables {', '.join(page_names)}")
        text = original = path.read_text()
        for name in page_names:
            new = replace_between_markers(text, name, TABLES[name](), page)
            if new != text:
                stale.setdefault(page, []).append(name)
            text = new
        if text != original:
            updated[path] = text
    if args.check:
        if stale:
            raise SystemExit("out-of-date tables: " + "; ".join(f"{page}: {', '.join(tables)}" for page, tables
                                                                 in stale.items())
                             + f" (run python bench/readme_tables.py {' '.join(n for t in stale.values() for n in t)})")
        print("up to date: " + "; ".join(f"{page}: {', '.join(page_names)}" for page, page_names in pages.items()))
        return
    for path, text in updated.items():
        path.write_text(text)
    print("updated: " + ("; ".join(f"{page}: {', '.join(tables)}" for page, tables in stale.items()) or "nothing"))


if __name__ == "__main__":
    main()
