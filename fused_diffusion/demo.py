"""`python -m fused_diffusion demo`: time to quality on the shipped digits model. From the same noise, the baseline
solvers over a ladder of model calls against every faster method the library ships (fd.zoo.methods: learned AMED,
the shortcut, consistency and phased consistency models, DeepCache, Skip-Tuning), each with its calls, wall time,
quality and its speed-up over the baselines at equal quality, and which method to use for which budget.
`demo --solvers`: every ODE solver at a few model-call budgets; `demo --gmm`: the analytic Gaussian mixture against
its exact ODE solution. Also what the examples and benches do with the digits model alike: picture grids, steering
noise to a class through fd.sdo."""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

import fused_diffusion as fd
from fused_diffusion import cli_args, provenance
from fused_diffusion.zoo import sampling_methods


# the solvers compared (fd.solvers names), each with the option sets it may run with; AMED's analytic first step
# saves one call, so odd budgets run it without
ODE_SOLVERS: dict[str, list[dict]] = {
    "euler": [{}],
    "heun": [{}],
    "dpm_2": [{}],
    "dpmpp_2m": [{}],
    "amed": [{"afs": True}, {"afs": False}],
}


@dataclass
class SolverRun:
    """One solver at one model-call budget: the configuration with the most calls within it."""
    solver: str
    budget: int
    calls: int
    sample: Callable[[Callable, Tensor], Tensor]  # (denoiser, unit-variance noise) -> images


def within_budget(name: str, budget: int) -> tuple[int, int, dict]:
    """(calls, steps, options) of the option set of ODE_SOLVERS[name] and step count with the most model calls
    <= budget on a schedule ending at 0 (earlier option sets win ties)."""
    candidates = []
    for k, options in enumerate(ODE_SOLVERS[name]):
        solver = fd.solvers.get_solver(name, **options)
        steps = solver.steps_for(budget)
        if steps is not None:
            candidates.append((solver.calls(steps), -k, steps, options))
    calls, _, steps, options = max(candidates, key=lambda c: c[:2])
    return calls, steps, options


def solver_runs(budget: int, sigma_min: float, sigma_max: float, alphas_cumprod: Tensor) -> list[SolverRun]:
    """Every ODE solver of the library at `budget` model calls: Karras schedules from sigma_max to 0, and DDIM."""
    runs = []
    for name in ODE_SOLVERS:
        calls, steps, options = within_budget(name, budget)
        sigmas = fd.get_sigmas_karras(steps, sigma_min, sigma_max)

        def sample(den, noise, solver=fd.solvers.get_solver(name, **options), sigmas=sigmas):
            return fd.solvers.sample(solver, den, noise * sigmas[0], sigmas.to(noise.device), disable=True)

        runs.append(SolverRun(name, budget, calls, sample))
    ddim_solver = fd.solvers.get_solver("ddim", alphas_cumprod=alphas_cumprod)
    ddim_steps = ddim_solver.steps_for(budget)

    def ddim(den, noise):
        return sampling_methods.ddim_run(den.inner_model, alphas_cumprod, sigma_max, ddim_steps)(noise)

    return runs + [SolverRun("ddim", budget, ddim_solver.calls(ddim_steps), ddim)]


def image_grid(images: Tensor, columns: int) -> Tensor:
    """[N, 1, R, R] in [-1, 1] -> one [rows * R, columns * R] image in [0, 1] with 1-pixel gaps."""
    n, _, r, _ = images.shape
    rows = -(-n // columns)
    grid = torch.full((rows * (r + 1) - 1, columns * (r + 1) - 1), 0.2)  # light gray gaps
    for k, image in enumerate(images[:, 0].clamp(-1, 1).add(1).div(2)):
        i, j = divmod(k, columns)
        grid[i * (r + 1): i * (r + 1) + r, j * (r + 1): j * (r + 1) + r] = image
    return grid


def save_panels(panels: dict[str, Tensor], columns: int, path: str | Path,
                figsize: tuple[float, float] = (8, 4.5)) -> None:
    """Image grids ([N, 1, R, R] in [-1, 1]) side by side, each titled with its key, saved as one picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items()):
        ax.imshow(image_grid(images, columns).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")



def steer_digits(denoiser: Callable[..., Tensor], noise: Tensor, target: int, steps: int,
                 grad_step: int | str = "random", iterations: int = 30, lr: float = 0.05, solver: str = "dpmpp_2m",
                 seed: int = 0) -> tuple[Tensor, list[float]]:
    """Optimises unit-variance digits `noise` [B, 1, 8, 8] with Adam, through `steps` solver steps of fd.sdo.sample
    (`grad_step` "random": SDO, "all": full backpropagation), so that the shipped classifier takes the sample for
    digit `target`; the noise is renormalised to its norm after each step (it stays a plausible Gaussian draw).
    Returns the final noise and, per iteration, the fraction of samples classified as `target` (of the sample the
    step was taken on)."""
    classifier = fd.metrics.digits_classifier()
    sigmas = fd.get_sigmas_karras(steps, denoiser.sigma_min, denoiser.sigma_max)
    z = noise.clone().requires_grad_()
    norm = noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    optimizer = torch.optim.Adam([z], lr=lr)
    labels = torch.full((len(noise),), target)
    step_generator = torch.Generator().manual_seed(seed)
    hit_rates = []
    for _ in range(iterations):
        images = fd.sdo.sample(denoiser, z * sigmas[0], sigmas, solver, grad_step=grad_step,
                               step_generator=step_generator)
        logits = classifier(images.clamp(-1, 1))
        hit_rates.append((logits.argmax(1) == labels).float().mean().item())
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        with torch.no_grad():  # back onto the sphere of the starting noise
            z.mul_(norm / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    return z.detach(), hit_rates

def save_pictures(results: list[dict], samples: dict[tuple[str, int], Tensor], budgets: list[int], data_fd: float,
                  out: Path, shown: int = 36) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    solvers = list(dict.fromkeys(r["solver"] for r in results))
    columns = int(shown**0.5)
    fig, axes = plt.subplots(len(solvers), len(budgets), figsize=(2.6 * len(budgets), 2.7 * len(solvers)),
                             squeeze=False)
    for i, solver in enumerate(solvers):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            ax.imshow(image_grid(samples[solver, budget][:shown].cpu(), columns).numpy(), cmap="gray_r", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            row = next(r for r in results if r["solver"] == solver and r["budget"] == budget)
            ax.set_title(f"{row['calls']} calls, FD {row['fd']:.1f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(solver, fontsize=11)
    fig.suptitle("digits model: the same noise, one row per solver", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for solver in solvers:
        rows = [r for r in results if r["solver"] == solver]
        for k, (metric, label) in enumerate([("fd", "Frechet distance (classifier features)"),
                                             ("trajectory_error", "trajectory error (RMS vs 1000-call solve)")]):
            axes[k][0].plot([r["calls"] for r in rows], [r[metric] for r in rows], "o-", label=solver)
            axes[k][1].plot([r["ms"] for r in rows], [r[metric] for r in rows], "o-", label=solver)
            axes[k][0].set_ylabel(label)
    for ax in axes[0]:
        ax.axhline(data_fd, color="gray", linestyle="--", label="train digits (data floor)")
    for ax in axes.flat:
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1][0].set_xlabel("model calls")
    axes[1][1].set_xlabel(f"wall time for {len(next(iter(samples.values())))} samples (ms)")
    axes[0][0].legend()
    fig.suptitle("sample quality against model calls and wall time")
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=110)
    plt.close(fig)


# the quality the "which to use" advice and the baselines' calls are stated against: the converged baseline's FD
# (its most calls) plus this margin
TARGET_MARGIN = 1.1


@dataclass
class Measured:
    """One (method, calls) run of the time-to-quality demo."""
    method: sampling_methods.Method
    calls: int
    seconds: float
    fd: float
    confidence: float
    images: Tensor


def baseline_seconds(fd_value: float, baselines: list[Measured]) -> tuple[float, str]:
    """(wall time the baselines need for FD `fd_value`, relation): on their cheapest-first front (each run better
    than every cheaper one), log time interpolated in log FD between the two runs around `fd_value`. Relation "<="
    where even the cheapest run is better (its time, an upper bound), ">=" where no run reaches it (the slowest
    run's time, a lower bound), else "="."""
    front: list[Measured] = []
    for run in sorted(baselines, key=lambda r: r.seconds):
        if not front or run.fd < front[-1].fd:
            front.append(run)
    if fd_value >= front[0].fd:
        return front[0].seconds, "<="
    if fd_value < front[-1].fd:
        return front[-1].seconds, ">="
    above, below = next((a, b) for a, b in zip(front, front[1:]) if a.fd > fd_value >= b.fd)
    w = math.log(above.fd / fd_value) / math.log(above.fd / below.fd)
    return above.seconds ** (1 - w) * below.seconds ** w, "="


def speedup_text(run: Measured, baselines: list[Measured]) -> str:
    if run.method.kind == "baseline":
        return "·"
    seconds, relation = baseline_seconds(run.fd, baselines)
    return f"{ {'=': '', '<=': '<', '>=': '>'}[relation]}{seconds / run.seconds:.1f}x"


def which_to_use(runs: list[Measured], target: float) -> list[tuple[str, Measured]]:
    """(budget, best run within it) per model-call budget, listed where the best changes, until one reaches
    `target`; budget as text, "1 call" or "<= N calls"."""
    advice, best = [], None
    for calls in sorted({r.calls for r in runs}):
        candidate = min((r for r in runs if r.calls <= calls), key=lambda r: r.fd)
        if candidate is not best:
            best = candidate
            advice.append(("1 call" if calls == 1 else f"<= {calls} calls", best))
        if best.fd <= target:
            break
    return advice


def advice_text(advice: list[tuple[str, Measured]]) -> str:
    """which_to_use's advice on one line, for titles and the README."""
    return "; ".join(f"{budget}: {run.method.label} at {run.calls} (FD {run.fd:.1f})" for budget, run in advice)


def time_to_quality(args: argparse.Namespace) -> list[Measured]:
    from tqdm import tqdm

    from fused_diffusion import metrics
    from fused_diffusion.zoo.data import load_digits_split

    device = torch.device(args.device)
    zoo = fd.zoo.digits(device=device)
    noise = torch.randn(args.samples, *zoo.sample_shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    registry = sampling_methods.methods()
    runs: list[Measured] = []
    with tqdm(total=sum(len(m.calls) for m in registry), desc="sampling", unit="run", leave=False) as bar:
        for method in registry:
            sample = method.prepare(zoo)
            for calls in method.calls:
                with torch.inference_mode():
                    sample(noise[:2], calls, torch.Generator(device))  # warm-up: first-call costs are not its time
                    generator = torch.Generator(device).manual_seed(args.seed + 1)  # draws after the noise
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    images = sample(noise, calls, generator)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                confidence, _ = metrics.classifier_scores(images)
                runs.append(Measured(method, calls, seconds, metrics.frechet_distance(images), confidence, images))
                bar.update()
    baselines = [r for r in runs if r.method.kind == "baseline"]
    costs = {m.label: m.training_cost() for m in registry}  # read once from each file: printed and written below
    converged = max(baselines, key=lambda r: (r.calls, -r.fd))
    target = converged.fd * TARGET_MARGIN
    data_fd = metrics.frechet_distance(load_digits_split().train_images[: args.samples])

    print(f"digits model: {args.samples} samples from the same noise on {device} "
          f"({torch.get_num_threads()} threads, op backend {fd.backends()['active'][device.type]})")
    print(f"FD: Frechet distance to held-out digits in the digits classifier's features, lower is better\n"
          f"    (train digits: {data_fd:.1f}); conf: mean classifier confidence")
    needs = []
    for label in dict.fromkeys(r.method.label for r in baselines):
        reached = [r for r in baselines if r.method.label == label and r.fd <= target]
        if reached:
            first = min(reached, key=lambda r: r.calls)
            needs.append(f"{label} {first.calls} calls ({first.seconds:.2f} s)")
    print(f"target FD {target:.1f} ({converged.method.label} at {converged.calls} calls + "
          f"{TARGET_MARGIN - 1:.0%}): " + (", ".join(needs) or "no baseline run here reaches it"))
    print()
    print(f"{'method':<40}{'calls':>6}{'s':>7}{'FD':>7}{'conf':>6}{'speed-up*':>10}  training")
    kind = None
    for run in runs:
        if run.method.kind != kind:
            kind = run.method.kind
            print(f"  {kind}s")
        cost = costs[run.method.label]
        trained = (f"{cost['train_minutes']} min" + (f", {cost['teacher_calls']:,} teacher calls"
                                                    if cost["teacher_calls"] else "")
                   if cost["train_minutes"] else "-")
        print(f"{run.method.label:<40}{run.calls:>6}{run.seconds:>7.2f}{run.fd:>7.1f}{run.confidence:>6.2f}"
              f"{speedup_text(run, baselines):>10}  {trained}")
    print("* the baselines' wall time for the same FD (interpolated between their runs) over this run's;\n"
          "  > : no baseline run reaches it, < : even the cheapest is better")
    print()
    print("which to use: the best FD within a budget of model calls, in this run")
    advice = which_to_use(runs, target)
    for budget, run in advice:
        print(f"  {budget:<14}{run.method.label} at {run.calls}: FD {run.fd:.1f} in {run.seconds:.2f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_method_rows(runs, baselines, target, out / "samples.png", advice)
    save_quality_against_time(runs, target, data_fd, out / "quality.png")
    provenance.write_csv(out / "time_to_quality.csv", [
        {"method": r.method.label, "kind": r.method.kind, "calls": r.calls, "samples": args.samples,
         "seconds": round(r.seconds, 4), "fd": round(r.fd, 4), "confidence": round(r.confidence, 4),
         "speedup": speedup_text(r, baselines), **costs[r.method.label], "target_fd": round(target, 4),
         "data_fd": round(data_fd, 4)} for r in runs])
    print(f"wrote {out / 'samples.png'}, {out / 'quality.png'} and {out / 'time_to_quality.csv'}")
    return runs


def shown_runs(runs: list[Measured], target: float) -> list[Measured]:
    """The picture's rows: every method's runs; each baseline at its fewest calls and where it first reaches
    `target` (or its most calls)."""
    shown = []
    for label in dict.fromkeys(r.method.label for r in runs):
        mine = [r for r in runs if r.method.label == label]
        if mine[0].method.kind == "baseline" and len(mine) > 2:
            reached = [r for r in mine if r.fd <= target]
            mine = [mine[0], min(reached, key=lambda r: r.calls) if reached else mine[-1]]
        shown += mine
    return shown


def save_method_rows(runs: list[Measured], baselines: list[Measured], target: float, path: Path,
                     advice: list[tuple[str, Measured]], columns: int = 16) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = shown_runs(runs, target)
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 0.62 * len(shown) + 0.6), squeeze=False)
    for ax, run in zip(axes[:, 0], shown):
        ax.imshow(image_grid(run.images[:columns].cpu(), columns).numpy(), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.axis("off")
        speedup = speedup_text(run, baselines)
        ax.text(-0.01, 0.5, f"{run.method.label}, {run.calls} call{'s' * (run.calls > 1)}\n"
                f"FD {run.fd:.1f}, {run.seconds:.2f} s" + ("" if speedup == "·" else f", {speedup} faster"),
                fontsize=8, ha="right", va="center", transform=ax.transAxes)
    fig.suptitle("digits model, the same noise: one row per method and model-call budget\nwhich to use: "
                 + advice_text(advice), fontsize=9)
    fig.tight_layout(rect=(0.28, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_quality_against_time(runs: list[Measured], target: float, data_fd: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label in dict.fromkeys(r.method.label for r in runs):
        mine = [r for r in runs if r.method.label == label]
        style = "o-" if mine[0].method.kind == "baseline" else "s--"
        ax.plot([r.seconds for r in mine], [r.fd for r in mine], style, label=label, markersize=5)
        for r in mine:
            ax.annotate(str(r.calls), (r.seconds, r.fd), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target FD {target:.1f}")
    ax.axhline(data_fd, color="gray", linestyle="--", linewidth=1, label="train digits")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"wall time for {len(runs[0].images)} samples (s); numbers: model calls")
    ax.set_ylabel("FD (lower is better)")
    ax.set_title("digits model: quality against wall time, the same noise")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def solver_grid(args: argparse.Namespace) -> list[dict]:
    from fused_diffusion import metrics
    from fused_diffusion.zoo.data import load_digits_split

    device = torch.device(args.device)
    denoiser, alphas_cumprod, shape = fd.zoo.digits(device=device)
    sigma_min, sigma_max = denoiser.sigma_min, denoiser.sigma_max
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    start = time.perf_counter()
    reference = metrics.reference_solution(denoiser, noise[: args.reference_samples] * sigma_max, sigma_min,
                                           sigma_max, calls=args.reference_calls)
    print(f"digits model, {args.samples} samples, {device}, backend {fd.backends()['active'][device.type]}; "
          f"reference solve ({args.reference_calls} calls, {len(reference)} samples) "
          f"{time.perf_counter() - start:.1f} s")
    print("fd: Frechet distance to the held-out digits in the digits classifier's feature space (not FID); "
          "conf: mean classifier confidence; H: entropy of predicted classes (ln 10 = 2.30 is all classes); "
          "traj: RMS distance to the reference solve of the same noise")
    print(f"{'solver':<10}{'calls':>6}{'fd':>8}{'conf':>7}{'H':>6}{'traj':>9}{'ms':>9}")
    train = load_digits_split().train_images[: args.samples]
    data_fd = metrics.frechet_distance(train)
    confidence, entropy = metrics.classifier_scores(train)
    print(f"{'(data)':<10}{'':>6}{data_fd:>8.2f}{confidence:>7.3f}{entropy:>6.2f}  <- {len(train)} train digits")
    results, samples = [], {}
    for budget in args.calls:
        for run in solver_runs(budget, sigma_min, sigma_max, alphas_cumprod):
            start = time.perf_counter()
            images = run.sample(denoiser, noise)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - start) * 1e3
            quality = metrics.evaluate(images)
            quality["trajectory_error"] = metrics.trajectory_error(images[: len(reference)], reference)
            row = {"solver": run.solver, "budget": budget, "calls": run.calls, "ms": ms, **quality}
            results.append(row)
            samples[run.solver, budget] = images
            print(f"{run.solver:<10}{run.calls:>6}{row['fd']:>8.2f}{row['confidence']:>7.3f}"
                  f"{row['class_entropy']:>6.2f}{row['trajectory_error']:>9.4f}{ms:>9.1f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_pictures(results, samples, args.calls, data_fd, out)
    print(f"wrote {out / 'samples.png'} and {out / 'quality.png'}")
    return results


def gmm_demo(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    gmm = fd.GaussianMixture.random(args.components, args.dim, seed=0).to(device)
    noise = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(0)).to(device) * args.sigma_max
    exact = gmm.ode_solution(noise.double(), args.sigma_max).float()
    print(f"Gaussian mixture: {args.components} components in {args.dim} dims, batch {args.batch}, {device}; "
          f"backend {fd.backends()['active'][device.type]}")
    print(f"error = median over samples of ||x - exact ODE solution|| / ||exact|| "
          f"(Karras schedule, sigma {args.sigma_min}..{args.sigma_max})")
    print(f"{'solver':<10}{'steps':>6}{'calls':>7}{'error':>11}{'ms':>9}")
    for name, variants in ODE_SOLVERS.items():
        solver = fd.solvers.get_solver(name, **variants[0])
        for steps in args.steps:
            sigmas = fd.get_sigmas_karras(steps, args.sigma_min, args.sigma_max, device=device)
            start = time.perf_counter()
            x = fd.solvers.sample(solver, gmm, noise, sigmas, disable=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - start) * 1e3
            error = ((x - exact).norm(dim=1) / exact.norm(dim=1)).median().item()
            print(f"{name:<10}{steps:>6}{solver.calls(steps):>7}{error:>11.2e}{ms:>9.1f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--solvers", action="store_true",
                       help="every ODE solver at a few model-call budgets instead of time to quality")
    modes.add_argument("--gmm", action="store_true", help="the analytic Gaussian mixture instead of the digits model")
    parser.add_argument("--device", type=cli_args.device, default="cuda" if torch.cuda.is_available() else "cpu")
    digits = parser.add_argument_group("digits model (time to quality, and --solvers)")
    digits.add_argument("--samples", type=cli_args.count(2), default=500, help="samples per run (FD needs 2)")
    digits.add_argument("--seed", type=cli_args.seed, default=0)
    digits.add_argument("--out", type=cli_args.folder, default="demo",
                        help="folder for samples.png and quality.png (and time_to_quality.csv)")
    solvers = parser.add_argument_group("every solver (--solvers)")
    solvers.add_argument("--calls", type=cli_args.count(), nargs="+", default=[5, 10, 20], help="model-call budgets")
    solvers.add_argument("--reference-samples", type=cli_args.count(), default=50,
                         help="how many of the samples get the 1000-call reference solve (trajectory error)")
    solvers.add_argument("--reference-calls", type=cli_args.count(), default=1000)
    gmm = parser.add_argument_group("Gaussian mixture (--gmm)")
    gmm.add_argument("--steps", type=cli_args.count(), nargs="+", default=[5, 10, 20, 40])
    gmm.add_argument("--dim", type=cli_args.count(), default=64)
    gmm.add_argument("--components", type=cli_args.count(), default=8)
    gmm.add_argument("--batch", type=cli_args.count(), default=256)
    gmm.add_argument("--sigma-min", type=cli_args.real(above=0), default=0.002)
    gmm.add_argument("--sigma-max", type=cli_args.real(above=0), default=80.0)


# each mode's own options (the modes named as `mode` returns them): one given another value in another mode is
# refused by name, not ignored
MODE_OPTIONS = {"gmm": ("steps", "dim", "components", "batch", "sigma_min", "sigma_max"),
                "solvers": ("calls", "reference_samples", "reference_calls"),
                "digits": ("samples", "seed", "out")}
MODE_NAMES = {"gmm": "Gaussian mixture demo (--gmm)", "solvers": "solver grid (--solvers)",
              "digits": "digits model demos (without --gmm)"}


def mode(args: argparse.Namespace) -> str:
    return "gmm" if args.gmm else "solvers" if args.solvers else "time"


def check_mode_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    defaults = parser.parse_args([])  # converted by the options' types, as the given values are
    allowed = {"gmm": {"gmm"}, "solvers": {"solvers", "digits"}, "time": {"digits"}}[mode(args)]
    for owner, names in MODE_OPTIONS.items():
        for name in names:
            if owner not in allowed and getattr(args, name) != getattr(defaults, name):
                parser.error(f"argument --{name.replace('_', '-')}: belongs to the {MODE_NAMES[owner]}")
    if args.gmm and args.sigma_min >= args.sigma_max:
        parser.error(f"argument --sigma-min: must be below --sigma-max, got {args.sigma_min} and {args.sigma_max}")


def main(args: argparse.Namespace):
    """Runs the mode `args` chose; returns what it measured (the digits modes' runs or rows)."""
    return {"gmm": gmm_demo, "solvers": solver_grid, "time": time_to_quality}[mode(args)](args)
