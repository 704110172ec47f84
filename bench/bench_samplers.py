"""k-diffusion's 13 samplers side by side in one run: sample quality against model calls on the shipped digits model,
and what the solver itself costs (its fused stages against k-diffusion's chain of torch ops) with a nearly free model.

    python bench/bench_samplers.py quality --threads 1     # -> results/samplers_digits_cpu.csv/.png
    python bench/bench_samplers.py overhead                # -> results/samplers_overhead_cpu.csv
    python bench/readme_tables.py samplers samplers_overhead

quality: FD (fd.metrics: the digits classifier's features against the held-out digits) of --samples samples from
fixed noise, at each budget the most model calls within it on a Karras schedule ending at 0 (dpm_fast: exactly the
budget, ending at sigma_min; dpm_adaptive picks its own steps and is one row per --rtol with its counted calls). The
stochastic samplers use their k-diffusion default noise (Brownian tree for the DPM++ SDE ones), global seed 0.

overhead: a model that is one multiply, so the time is the solver's: fd's sample_* (each stage one fused lincomb
launch, noise included, on the default op backend) against tests/reference_samplers.py, k-diffusion 0.1.1's update
rules as k-diffusion writes them (unfused torch ops), on the same inputs; the minimum of --repeats runs each.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fused_diffusion as fd  # noqa: E402
import reference_samplers as ref  # noqa: E402
from bench_digits import save_grid, write_csv  # noqa: E402
from fused_diffusion import metrics, solvers  # noqa: E402
from fused_diffusion.ops import count_op_launches  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# name: (fd's sampler, k-diffusion's re-statement); model calls and noise are the solvers' own (fd.solvers)
SAMPLERS: dict[str, tuple[Callable, Callable]] = {
    "euler": (fd.sample_euler, ref.euler),
    "euler_ancestral": (fd.sample_euler_ancestral, ref.euler_ancestral),
    "heun": (fd.sample_heun, ref.heun),
    "dpm_2": (fd.sample_dpm_2, ref.dpm_2),
    "dpm_2_ancestral": (fd.sample_dpm_2_ancestral, ref.dpm_2_ancestral),
    "lms": (fd.sample_lms, ref.lms),
    "dpmpp_2s_ancestral": (fd.sample_dpmpp_2s_ancestral, ref.dpmpp_2s_ancestral),
    "dpmpp_sde": (fd.sample_dpmpp_sde, ref.dpmpp_sde),
    "dpmpp_2m": (fd.sample_dpmpp_2m, ref.dpmpp_2m),
    "dpmpp_2m_sde": (fd.sample_dpmpp_2m_sde, ref.dpmpp_2m_sde),
    "dpmpp_3m_sde": (fd.sample_dpmpp_3m_sde, ref.dpmpp_3m_sde),
    "dpm_fast": (fd.sample_dpm_fast, ref.dpm_fast),
    "dpm_adaptive": (fd.sample_dpm_adaptive, ref.dpm_adaptive),
}


def solver_at(name: str, budget: int) -> solvers.Solver:
    """The registry's solver as this bench runs it at `budget` model calls (dpm_fast is given them as nfe)."""
    return solvers.get_solver(name, nfe=budget) if name == "dpm_fast" else solvers.get_solver(name)


def quality(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    denoiser, _, shape = fd.zoo.digits()
    sigma_min, sigma_max = denoiser.sigma_min, denoiser.sigma_max
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    rows, pictures = [], {}

    def record(name: str, budget: int, calls: int | None, run: Callable[[], torch.Tensor]) -> None:
        """One row; calls None: dpm_adaptive's, counted by the run."""
        torch.manual_seed(0)
        start = time.perf_counter()
        images = run()
        seconds = time.perf_counter() - start
        if calls is None:
            images, info = images
            calls = budget = info["nfe"]
        rows.append({"sampler": name, "budget": budget, "calls": calls, "samples": args.samples,
                     "fd": round(metrics.frechet_distance(images), 4), "seconds": round(seconds, 2)})
        pictures[name, budget] = images[:36]
        print(rows[-1], flush=True)

    for name in args.samplers:
        sampler, _ = SAMPLERS[name]
        if name == "dpm_adaptive":
            for rtol in args.rtol:
                record(f"dpm_adaptive rtol={rtol}", 0, None,
                       lambda rtol=rtol: sampler(denoiser, noise * sigma_max, sigma_min, sigma_max, rtol=rtol,
                                                 return_info=True, disable=True))
            continue
        for budget in args.budgets:
            solver = solver_at(name, budget)
            steps = solver.steps_for(budget)
            if name == "dpm_fast":  # over the range [sigma_max, sigma_min], its steps fixed by nfe
                record(name, budget, solver.calls(steps), lambda: sampler(denoiser, noise * sigma_max, sigma_min,
                                                                          sigma_max, budget, disable=True))
                continue
            sigmas = fd.get_sigmas_karras(steps, sigma_min, sigma_max)
            record(name, budget, solver.calls(steps),
                   lambda: sampler(denoiser, noise * sigmas[0], sigmas, disable=True))
    write_csv("samplers_digits", rows)
    plot(rows, RESULTS / "samplers_digits_cpu.png")
    save_grid({key: images for key, images in pictures.items() if not key[0].startswith("dpm_adaptive")},
              args.budgets, RESULTS / "samplers_digits_cpu_samples.png", "calls")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    names = dict.fromkeys(r["sampler"] for r in rows if not r["sampler"].startswith("dpm_adaptive"))
    for k, name in enumerate(names):
        mine = [r for r in rows if r["sampler"] == name]
        stochastic = solver_at(name, mine[0]["budget"]).stochastic
        ax.plot([r["calls"] for r in mine], [r["fd"] for r in mine], "--" if stochastic else "-", marker="o",
                color=plt.cm.tab20(k), label=name)
    adaptive = [r for r in rows if r["sampler"].startswith("dpm_adaptive")]
    if adaptive:
        ax.plot([r["calls"] for r in adaptive], [r["fd"] for r in adaptive], "k*", markersize=10, label="dpm_adaptive")
    ax.set(xscale="log", yscale="log", xlabel="model calls", ylabel="FD (digits classifier features)",
           title="k-diffusion samplers on the digits model (dashed: stochastic)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def overhead(args: argparse.Namespace) -> None:
    """Solver cost alone: fd against the unfused k-diffusion loop, same inputs, one run each after a warm-up."""
    x = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0)) * 20

    def model(x, sigma):
        return x * (1 / (1 + sigma**2)).reshape(-1, *[1] * (x.dim() - 1))

    sigmas = fd.get_sigmas_karras(args.steps, 0.01, 20.0)
    rows = []
    for name in args.samplers:
        ours, theirs = SAMPLERS[name]
        if name in ("dpm_fast", "dpm_adaptive"):
            extra = (args.steps,) if name == "dpm_fast" else ()
            run_ours = lambda: ours(model, x, 0.01, 20.0, *extra, disable=True)  # noqa: E731
            run_theirs = lambda: theirs(model, x, 0.01, 20.0, *extra)  # noqa: E731
        else:
            run_ours = lambda: ours(model, x, sigmas, disable=True)  # noqa: E731
            run_theirs = lambda: theirs(model, x, sigmas)  # noqa: E731
        times = {}
        for method, run in (("k-diffusion", run_theirs), ("fd", run_ours)):
            run()  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                torch.manual_seed(0)
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            times[method] = best
        with count_op_launches() as launches:
            run_ours()
        rows.append({"sampler": name, "shape": "x".join(map(str, args.shape)), "steps": args.steps,
                     "backend": fd.backends()["active"]["cpu"], "fd_launches": launches.count,
                     "k_diffusion_ms": round(times["k-diffusion"] * 1e3, 2), "fd_ms": round(times["fd"] * 1e3, 2),
                     "speedup": round(times["k-diffusion"] / times["fd"], 2)})
        print(rows[-1], flush=True)
    write_csv("samplers_overhead", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20, 50])
    q.add_argument("--samples", type=int, default=1500)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--rtol", type=float, nargs="+", default=[0.2, 0.05])
    q.add_argument("--threads", type=int, default=torch.get_num_threads())
    q.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    o = sub.add_parser("overhead")
    o.add_argument("--steps", type=int, default=20)
    o.add_argument("--shape", type=int, nargs="+", default=[16, 4, 64, 64])
    o.add_argument("--repeats", type=int, default=5)
    o.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Should have t")  # torchsde's clamped queries (see fd.noise)
    {"quality": quality, "overhead": overhead}[args.command](args)


if __name__ == "__main__":
    main()
