"""k-diffusion's 13 samplers side by side in one run: sample quality against model calls on the shipped digits model,
and what the solver itself costs (its fused stages against k-diffusion's chain of torch ops) with a nearly free model.

    python bench/bench_samplers.py quality --threads 1     # -> results/samplers_digits_cpu.csv/.png
    python bench/bench_samplers.py overhead                # -> results/samplers_overhead_cpu.csv/.png
    python bench/readme_tables.py samplers samplers_overhead

quality: FD (fd.metrics: the digits classifier's features against the held-out digits) of --samples samples from
fixed noise, at each budget the most model calls within it on a Karras schedule ending at 0 (dpm_fast: exactly the
budget, ending at sigma_min; dpm_adaptive picks its own steps and is one row per --rtol with its counted calls). The
stochastic samplers use their k-diffusion default noise (Brownian tree for the DPM++ SDE ones), global seed 0.

overhead: a model that is one multiply, so the time is the solver's: fd's sample_* (each stage one fused lincomb
launch, noise included, on the default op backend) against fused_diffusion/testing/reference_samplers.py, k-diffusion 0.1.1's update
rules as k-diffusion writes them (unfused torch ops), on the same inputs; the minimum of --repeats runs each.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

import fused_diffusion as fd
from common import RESULTS, save_grid, write_csv
from fused_diffusion import metrics, solvers
from fused_diffusion.ops import count_op_launches
from fused_diffusion.testing import reference_samplers as ref

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


SHORT = 2  # the short run the per-step time is measured from (k-diffusion's dpmpp_2m_sde fails on 1 step)


def overhead(args: argparse.Namespace) -> None:
    """Host time per step of the solver alone, at each shape: fd's sample_* against k-diffusion's update rules
    (fused_diffusion/testing/reference_samplers.py) and, where a diffusers scheduler runs the same solver, against diffusers' own loop
    (set_timesteps, scale_model_input, step), each with a model that is one multiply. A step's time is the difference
    between runs of --steps and of SHORT steps over the steps between (what a call costs once is reported apart: fd's
    first call builds the plan it then keeps); the minimum of --repeats interleaved runs each."""
    import diffusers

    from fused_diffusion.integrations.diffusers import FusedScheduler

    torch.set_num_threads(args.threads)

    def model(x, sigma):
        return x * (1 / (1 + sigma**2)).reshape(-1, *[1] * (x.dim() - 1))

    def diffusers_loop(scheduler_class, x0: torch.Tensor, steps: int) -> Callable[[], torch.Tensor]:
        scheduler = scheduler_class()

        def run() -> torch.Tensor:
            scheduler.set_timesteps(steps)
            x = x0 * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                x = scheduler.step(0.5 * scheduler.scale_model_input(x, t), t, x).prev_sample
            return x

        return run

    rows = []
    for shape in args.shapes:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 20
        for name in args.samplers:
            ours, theirs = SAMPLERS[name]
            if name in ("dpm_fast", "dpm_adaptive"):
                continue  # no fixed step count to difference over (dpm_fast's steps follow its nfe)
            runs = {}
            for steps in (SHORT, args.steps):
                sigmas = fd.get_sigmas_karras(steps, 0.01, 20.0)
                runs["fd", steps] = lambda sigmas=sigmas: ours(model, x, sigmas, disable=True)
                runs["k-diffusion", steps] = lambda sigmas=sigmas: theirs(model, x, sigmas)
                if name in FusedScheduler.SOLVERS:
                    scheduler_class = getattr(diffusers, FusedScheduler.SOLVERS[name])
                    runs["diffusers", steps] = diffusers_loop(scheduler_class, x, steps)
            times = {key: float("inf") for key in runs}
            for run in runs.values():
                run()  # warm-up (fd: the plans it keeps)
            for _ in range(args.repeats):
                for key, run in runs.items():
                    torch.manual_seed(0)
                    start = time.perf_counter()
                    run()
                    times[key] = min(times[key], time.perf_counter() - start)
            per_step = {method: 1e6 * (times[method, args.steps] - times[method, SHORT]) / (args.steps - SHORT)
                        for method, steps in runs if steps == args.steps}
            with count_op_launches() as launches:
                runs["fd", args.steps]()
            row = {"sampler": name, "label": solvers.get_solver(name).label, "shape": "x".join(map(str, shape)),
                   "steps": args.steps, "short_steps": SHORT, "backend": fd.backends()["active"]["cpu"],
                   "fd_launches": launches.count,
                   **{f"{m.replace('-', '_')}_us_per_step": round(per_step.get(m, float("nan")), 1)
                      for m in ("k-diffusion", "fd", "diffusers")},
                   "fd_ms_per_call": round(1e3 * times["fd", args.steps], 3),
                   "k_diffusion_ms_per_call": round(1e3 * times["k-diffusion", args.steps], 3),
                   "speedup_vs_k_diffusion": round(per_step["k-diffusion"] / per_step["fd"], 2),
                   "speedup_vs_diffusers": round(per_step["diffusers"] / per_step["fd"], 2) if "diffusers" in per_step
                   else ""}
            rows.append(row)
            print(row, flush=True)
    path = write_csv("samplers_overhead", rows)
    plot_overhead(rows, Path(path).with_suffix(".png"))


def plot_overhead(rows: list[dict], path: Path) -> None:
    """Host time per step of each sampler, one panel per shape: fd against k-diffusion's rules and diffusers' loop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        cells = [r for r in rows if r["shape"] == shape]
        for offset, (method, color) in enumerate((("k_diffusion", "tab:gray"), ("diffusers", "tab:orange"),
                                                 ("fd", "tab:blue"))):
            ax.bar([i + (offset - 1) * 0.27 for i in range(len(cells))],
                   [float(r[f"{method}_us_per_step"]) for r in cells], width=0.27, color=color,
                   label={"k_diffusion": "k-diffusion's rules", "diffusers": "diffusers' loop", "fd": "fd"}[method])
        ax.set_xticks(range(len(cells)), [r["label"] for r in cells], rotation=60, ha="right", fontsize=8)
        ax.set_title(f"x {shape}")
        ax.set_yscale("log")  # the SDE samplers are their Brownian tree, 100x the others
        ax.set_ylabel("host time per step, us")
        ax.legend(fontsize=8)
    fig.suptitle("Solver host time per step (model: one multiply); lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


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
    o.add_argument("--shapes", type=lambda text: [int(n) for n in text.split("x")], nargs="+",
                   default=[[1, 4, 8, 8], [1, 4, 64, 64], [8, 4, 64, 64]], help="e.g. 1x4x8x8 8x4x64x64")
    o.add_argument("--repeats", type=int, default=11)
    o.add_argument("--threads", type=int, default=1)
    o.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Should have t")  # torchsde's clamped queries (see fd.noise)
    {"quality": quality, "overhead": overhead}[args.command](args)


if __name__ == "__main__":
    main()
