"""Few-step time-to-quality: sample quality against model calls and wall time, for every ODE solver and the learned
AMED rows, on the shipped digits model and on an analytic Gaussian mixture.

    python bench/bench_quality.py                 # both problems, every solver -> results/quality_*_cpu.csv/.png
    python bench/bench_quality.py --problems digits --solvers euler heun dpmpp_2m --samples 300
    python bench/readme_tables.py quality         # then the quality table (docs/few-step.md) from the digits CSV

digits: Frechet distance in the digits classifier's features (fd.metrics, against the held-out digits) of 1500
samples from fixed noise, and the trajectory error (per-pixel RMS) of the first 200 against a 1000-call solve of the
same noise. gmm: fd.GaussianMixture.random with its component stds scaled down; Frechet distance in data space against
exact samples (gmm.sample), and the trajectory error against the exact ODE solution of the same noise. A row's floor
(calls 0) is the train split (digits) or the exact ODE solution itself (gmm), scored the same way.

Non-learned solvers run on Karras schedules ending at 0 with the most calls within each budget (demo.solver_runs;
DDIM on the digits model only), except AMED with r = 1/2, which runs AMED's own schedule (fd.amed.schedule, ending
at sigma_min, exactly the budget) as the learned rows do (AMED with its distilled predictor, AMED-Plugin on iPNDM),
so that the predictor is the only difference. The learned rows' trajectory error is still taken against the
solution at 0, a difference far below the errors measured. Their predictors are the shipped ones where they exist
(digits: AMED at 5 calls, 30k trajectories), else distilled here (--trajectories, from a Heun teacher with --M
points per interval, seed 0) and cached in --cache. The calls column is counted (a hook on the model), ms is the wall time of one batch (after a warm-up run on
2 samples; the minimum of --repeats runs). Timings need a quiet machine: with other processes on the cores, torch's
intra-op threads wait on each other (100x slower GMM runs measured on 2 busy cores); --threads 1 avoids that.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

import fused_diffusion as fd
from common import write_csv
from fused_diffusion.provenance import machine
from fused_diffusion import demo, metrics
from fused_diffusion.zoo.data import load_digits_split
from fused_diffusion.zoo.digits_amed import SCHEDULE_KIND, shipped

SOLVERS = ["ddim", "euler", "heun", "dpm_2", "dpmpp_2m", "ipndm", "amed", "amed_learned", "amed_plugin"]
LEARNED = {"amed_learned": "amed", "amed_plugin": "ipndm"}  # row -> fd.amed student


@dataclass
class Problem:
    name: str  # the CSV's name: quality_<name>_cpu.csv
    key: str  # what the cached predictors depend on
    model: nn.Module  # D(x, sigma) -> x0
    counted: nn.Module  # the module whose forward is one model call (DDIM calls the digits U-Net directly)
    shape: tuple[int, ...]  # one sample's
    noise: Tensor  # unit variance
    sigma_min: float
    sigma_max: float
    alphas_cumprod: Tensor | None  # DDIM's, or None to leave DDIM out
    reference: Tensor  # the ODE solution of noise[:len(reference)]
    distance: Callable[[Tensor], float]
    distance_name: str  # its CSV column
    distance_label: str  # its plot axis
    floor: float  # the distance of the floor row
    floor_name: str
    repeats: int


def digits_problem(args: argparse.Namespace) -> Problem:
    denoiser, alphas_cumprod, shape = fd.zoo.digits()
    sigma_min, sigma_max = denoiser.sigma_min, denoiser.sigma_max
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    reference = metrics.reference_solution(denoiser, noise[: args.reference_samples] * sigma_max, sigma_min, sigma_max)
    print(f"digits: {args.samples} samples, reference solve of {len(reference)} in {time.perf_counter() - start:.0f} s")
    floor = metrics.frechet_distance(load_digits_split().train_images[: args.samples])
    return Problem("digits", "digits", denoiser, denoiser.inner_model, tuple(shape), noise, sigma_min, sigma_max, alphas_cumprod,
                   reference, metrics.frechet_distance, "fd", "Frechet distance (digits classifier features)", floor,
                   "data (train split)", args.repeats)


def gmm_problem(args: argparse.Namespace) -> Problem:
    base = fd.GaussianMixture.random(args.gmm_components, args.gmm_dim, seed=args.seed)
    gmm = fd.GaussianMixture(base.means, base.stds * args.gmm_std_scale, base.log_weights.exp())
    noise = torch.randn(args.gmm_samples, args.gmm_dim, generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    exact = gmm.ode_solution(noise.double() * args.gmm_sigma_max, args.gmm_sigma_max).float()
    data = gmm.sample(args.gmm_samples, torch.Generator().manual_seed(args.seed + 1))
    print(f"gmm: {args.gmm_components} components in {args.gmm_dim} dims, stds {gmm.stds.min():.3f}.."
          f"{gmm.stds.max():.3f}, {args.gmm_samples} samples, exact ODE solution in "
          f"{time.perf_counter() - start:.0f} s")

    def distance(x: Tensor) -> float:
        return metrics.frechet_distance_of_features(x, data)

    key = f"gmm_k{args.gmm_components}_d{args.gmm_dim}_std{args.gmm_std_scale}_seed{args.seed}_" \
          f"sigma{args.gmm_sigma_min}-{args.gmm_sigma_max}"
    return Problem("gmm", key, gmm, gmm, (args.gmm_dim,), noise, args.gmm_sigma_min, args.gmm_sigma_max, None, exact, distance,
                   "frechet_distance_data_space", "Frechet distance in data space (vs exact samples)",
                   distance(exact), "exact ODE solution", args.gmm_repeats)


def solver_runs(problem: Problem, budget: int, solvers: list[str]) -> list[demo.SolverRun]:
    """The non-learned solvers at `budget` calls: the library's (demo.solver_runs) and iPNDM."""
    runs = demo.solver_runs(budget, problem.sigma_min, problem.sigma_max, problem.alphas_cumprod)
    ipndm_solver = fd.solvers.get_solver("ipndm", max_order=4)
    steps = ipndm_solver.steps_for(budget)
    sigmas = fd.get_sigmas_karras(steps, problem.sigma_min, problem.sigma_max)

    def ipndm(den, noise):
        return fd.solvers.sample(ipndm_solver, den, noise * sigmas[0], sigmas, disable=True)

    runs.append(demo.SolverRun("ipndm", budget, ipndm_solver.calls(steps), ipndm))
    if budget >= 2:  # r = 1/2 on the learned rows' schedule, so that the predictor is the only difference
        amed_sigmas, afs = amed_schedule(problem, budget)
        amed_solver = fd.solvers.get_solver("amed", afs=afs)

        def amed(den, noise):
            return fd.solvers.sample(amed_solver, den, noise * amed_sigmas[0], amed_sigmas, disable=True)

        calls = amed_solver.calls(len(amed_sigmas) - 1, to_zero=False)
        runs = [r for r in runs if r.solver != "amed"] + [demo.SolverRun("amed", budget, calls, amed)]
    return [r for r in runs if r.solver in solvers and (r.solver != "ddim" or problem.alphas_cumprod is not None)]


def amed_schedule(problem: Problem, budget: int, student: str = "amed") -> tuple[Tensor, bool]:
    """The student's schedule for exactly `budget` calls (ending at sigma_min; AFS for odd budgets), of the kind the
    shipped digits predictors use."""
    afs = budget % 2 == 1
    return fd.amed.schedule(budget, problem.sigma_min, problem.sigma_max, afs=afs, kind=SCHEDULE_KIND[student]), afs


def predictor_for(problem: Problem, student: str, budget: int, args: argparse.Namespace) -> fd.amed.Predictor:
    """The shipped digits predictor where one matches, else one distilled here (cached in --cache)."""
    if problem.name == "digits" and (student, budget) in shipped():
        return fd.zoo.digits_amed(problem.model, student, budget)
    sigmas, afs = amed_schedule(problem, budget, student)
    path = args.cache / f"{problem.key}_{student}_{budget}calls_M{args.M}_{args.trajectories}traj.safetensors"
    if path.exists():
        return fd.amed.load(path, model=problem.model)
    predictor = fd.amed.distill(problem.model, sigmas, problem.shape, student=student, afs=afs, M=args.M,
                                trajectories=args.trajectories)
    print(f"distilled {student} for {budget} calls in {predictor.info['seconds']:.0f} s -> {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    predictor.save(path)
    return predictor


def learned_runs(problem: Problem, budget: int, solvers: list[str], args: argparse.Namespace) -> list[demo.SolverRun]:
    """AMED and AMED-Plugin (iPNDM) with predictors distilled for exactly `budget` calls (AFS for odd budgets)."""
    runs = []
    for solver, student in LEARNED.items():
        if solver in solvers:
            predictor = predictor_for(problem, student, budget, args)

            def sample(den, noise, predictor=predictor):
                return predictor.sample(den, noise * predictor.sigmas[0])

            runs.append(demo.SolverRun(solver, budget, predictor.calls, sample))
    return runs


def measure(problem: Problem, run: demo.SolverRun) -> tuple[Tensor, float, int]:
    """(samples, ms per batch, model calls counted)."""
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    hook = problem.counted.register_forward_pre_hook(count)
    try:
        run.sample(problem.model, problem.noise[:2])  # warm-up (schedule tables, first-call costs), counted
    finally:
        hook.remove()
    if calls != run.calls or calls > run.budget:
        raise RuntimeError(f"{run.solver} at budget {run.budget}: expected {run.calls} model calls, counted {calls}")
    times = []
    for _ in range(problem.repeats):
        start = time.perf_counter()
        samples = run.sample(problem.model, problem.noise)
        times.append((time.perf_counter() - start) * 1e3)
    return samples, min(times), calls


def bench(problem: Problem, args: argparse.Namespace) -> None:
    n = len(problem.noise)
    rows = [{"solver": problem.floor_name, "calls": 0, "ms": 0.0, problem.distance_name: problem.floor,
             "trajectory_error": 0.0, "samples": n}]
    print(f"{problem.floor_name}: {problem.distance_name} {problem.floor:.4g}")
    pictures: dict[tuple[str, int], Tensor] = {}  # digits samples at 5 and 15 calls, to look at
    for budget in args.calls:
        runs = solver_runs(problem, budget, args.solvers)
        if budget in args.learned_calls:
            runs += learned_runs(problem, budget, args.solvers, args)
        for run in runs:
            if any(r["solver"] == run.solver and r["calls"] == run.calls for r in rows):
                continue  # a smaller budget already ran this configuration
            samples, ms, calls = measure(problem, run)
            error = metrics.trajectory_error(samples[: len(problem.reference)], problem.reference)
            rows.append({"solver": run.solver, "calls": calls, "ms": ms,
                         problem.distance_name: problem.distance(samples), "trajectory_error": error, "samples": n})
            print(f"{run.solver:<13}{calls:>4} calls  {problem.distance_name} {rows[-1][problem.distance_name]:9.4g}  "
                  f"traj {rows[-1]['trajectory_error']:9.4g}  {ms:9.1f} ms", flush=True)
            if problem.name == "digits" and calls in (5, 15):
                pictures[run.solver, calls] = samples[:36]
    summary(problem, rows)
    path = write_csv(f"quality_{problem.name}", rows)
    plot(problem, rows, args.calls, path.with_suffix(".png"))
    if pictures:
        save_pictures(pictures, rows, path.with_name(path.stem + "_samples.png"))


def save_pictures(pictures: dict[tuple[str, int], Tensor], rows: list[dict], path: Path) -> None:
    """One panel per (solver, calls): the first 36 samples of the same noise, titled with their FD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pictures), figsize=(2.3 * len(pictures), 2.8), squeeze=False)
    for ax, ((solver, calls), images) in zip(axes[0], pictures.items()):
        fd_value = next(r["fd"] for r in rows if r["solver"] == solver and r["calls"] == calls)
        ax.imshow(demo.image_grid(images, 6), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{solver}\n{calls} calls, FD {fd_value:.1f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def summary(problem: Problem, rows: list[dict]) -> None:
    """The issue's target: learned AMED at 5 calls against the fewest Heun calls that match its quality."""
    metric = problem.distance_name
    at5 = {r["solver"]: r[metric] for r in rows if r["calls"] == 5}
    if "amed_learned" not in at5:
        print(f"{problem.name} target: no amed_learned row at 5 calls")
        return
    amed = at5["amed_learned"]
    heun = [r for r in rows if r["solver"] == "heun"]
    match = min((r for r in heun if r[metric] <= amed), key=lambda r: r["calls"], default=None)
    heun_text = f"Heun needs {match['calls']} calls ({match[metric]:.4g}) to match it" if match else \
        f"no Heun run (up to {max((r['calls'] for r in heun), default=0)} calls) matches it"
    others = ", ".join(f"{s} {at5[s]:.4g}" for s in ("dpmpp_2m", "ipndm") if s in at5)
    print(f"{problem.name} target: AMED (learned) at 5 calls {metric} {amed:.4g}; {heun_text}; at 5 calls: {others}")


def plot(problem: Problem, rows: list[dict], budgets: list[int], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for solver in dict.fromkeys(r["solver"] for r in rows if r["calls"]):
        mine = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["calls"])
        for i, metric in enumerate([problem.distance_name, "trajectory_error"]):
            axes[i][0].plot([r["calls"] for r in mine], [r[metric] for r in mine], "o-", label=solver)
            axes[i][1].plot([r["ms"] for r in mine], [r[metric] for r in mine], "o-", label=solver)
    for ax in axes[0]:
        ax.axhline(problem.floor, color="gray", linestyle="--", label=problem.floor_name)
    axes[0][0].set_ylabel(problem.distance_label)
    axes[1][0].set_ylabel("trajectory error (RMS vs the ODE solution)")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_xticks(budgets)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1][0].set_xlabel("model calls")
    axes[1][1].set_xlabel(f"wall time per batch of {len(problem.noise)} (ms)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{problem.name}, {machine()}: quality against model calls and wall time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", choices=["digits", "gmm"], default=["digits", "gmm"])
    parser.add_argument("--solvers", nargs="+", choices=SOLVERS, default=SOLVERS)
    parser.add_argument("--calls", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10, 15, 20], help="model-call budgets")
    parser.add_argument("--learned-calls", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10],
                        help="budgets (among --calls) with distilled predictors")
    parser.add_argument("--trajectories", type=int, default=10000, help="teacher trajectories per distillation")
    parser.add_argument("--M", type=int, default=3, help="teacher points per student interval (Heun teacher)")
    parser.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache",
                        help="folder of distilled predictors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default torch's; 1 on a shared machine)")
    digits = parser.add_argument_group("digits")
    digits.add_argument("--samples", type=int, default=1500)
    digits.add_argument("--reference-samples", type=int, default=200)
    digits.add_argument("--repeats", type=int, default=1, help="timed runs per row (the minimum is kept)")
    gmm = parser.add_argument_group("Gaussian mixture")
    gmm.add_argument("--gmm-components", type=int, default=8)
    gmm.add_argument("--gmm-dim", type=int, default=32)
    gmm.add_argument("--gmm-std-scale", type=float, default=0.25, help="times random()'s stds of 0.3..0.8")
    gmm.add_argument("--gmm-samples", type=int, default=4000)
    gmm.add_argument("--gmm-sigma-min", type=float, default=0.002)
    gmm.add_argument("--gmm-sigma-max", type=float, default=80.0)
    gmm.add_argument("--gmm-repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.problems:
        bench({"digits": digits_problem, "gmm": gmm_problem}[name](args), args)


if __name__ == "__main__":
    main()
