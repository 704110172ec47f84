"""Few-step sampling on the digits model: every way the library reaches 1 to 8 model calls, from the same noise.

    python bench/bench_few_step.py --threads 2    # -> results/few_step_digits_cpu.csv/.png, _samples.png
    python bench/bench_few_step.py --gamma-file gamma.safetensors   # Γ (1000 draws, ~10 min) kept for the next run
    python bench/readme_tables.py few_step

Rows: the few-step models trained here and the shipped learned AMED predictor at its calls, as fd.zoo.methods()
runs them (the shortcut model; the consistency model distilled from the digits model; the phased consistency model),
and what runs the digits model itself at few calls (DPM++(2M) and DDIM on their own schedules; Analytic-DDPM /
Analytic-DDIM on even and on optimal timesteps; the teacher on the PCM student's timesteps, where that student
started), against the teacher's 50-call FD (DPM++(2M), the reference the consistency targets are stated against).
Each row carries what it cost to get: training minutes and, for distilled students, the teacher's model calls (from
the shipped file's metadata; the solvers cost nothing).
Quality is fd.metrics.frechet_distance (digits classifier features against the 297 held-out digits).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

import fused_diffusion as fd
from common import RESULTS, plot_fd_against_steps, save_grid, write_csv
from fused_diffusion import metrics, solvers
from fused_diffusion.analytic_dpm import GammaEstimate, estimate_gamma
from fused_diffusion.zoo.data import load_digits_split

TEACHER_CALLS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--gamma-samples", type=int, default=1000,
                        help="Monte-Carlo draws of Γ per timestep (at 100 the optimal trajectory is refused here)")
    parser.add_argument("--gamma-file", type=Path, help="load Γ from this file if it exists, else save it there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    denoiser, alphas_cumprod, shape = fd.zoo.digits()
    eps_model = denoiser.inner_model
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    split = load_digits_split()
    rows = [{"method": "data (train split)", "steps": 0, "calls": 0, "samples": args.samples,
             "fd": round(metrics.frechet_distance(split.train_images[: args.samples]), 4), "seconds": 0.0,
             "train_minutes": "", "teacher_calls": ""}]
    pictures: dict[tuple[str, int], torch.Tensor] = {}

    def measure(method: str, calls: int, steps: int, run: Callable[[], torch.Tensor], cost: dict | None = None):
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                images = run()
        except ValueError as e:  # a method refusing this budget (Analytic-DPM's optimal trajectory) says why
            print(f"{method} at {calls} calls: refused: {e}", flush=True)
            return
        seconds = time.perf_counter() - start
        rows.append({"method": method, "steps": steps, "calls": calls, "samples": args.samples,
                     "fd": round(metrics.frechet_distance(images), 4), "seconds": round(seconds, 2),
                     **(cost or {"train_minutes": 0, "teacher_calls": 0})})
        pictures[method, calls] = images[:36]
        print(rows[-1], flush=True)

    def renoise_generator() -> torch.Generator:
        """The stochastic samplers' draws: seeded, and not the initial noise's stream (args.seed's first draw)."""
        return torch.Generator().manual_seed(args.seed + 1)

    def karras(steps: int) -> torch.Tensor:
        return fd.get_sigmas_karras(steps, float(denoiser.sigma_min), float(denoiser.sigma_max))

    dpmpp = solvers.get_solver("dpmpp_2m")
    teacher_steps = dpmpp.steps_for(TEACHER_CALLS)
    measure("teacher: DPM++(2M), 50 calls", TEACHER_CALLS, teacher_steps,
            lambda: fd.sample_dpmpp_2m(denoiser, noise * karras(teacher_steps)[0], karras(teacher_steps),
                                       disable=True))
    for calls in args.calls:
        steps = dpmpp.steps_for(calls)
        measure("DPM++(2M)", calls, steps,
                lambda: fd.sample_dpmpp_2m(denoiser, noise * karras(steps)[0], karras(steps), disable=True))
        measure("DDIM", calls, calls, lambda: fd.sample_ddim(eps_model, noise, alphas_cumprod, calls,
                                                             clip_sample=False, disable=True))

    start = time.perf_counter()
    if args.gamma_file is not None and args.gamma_file.is_file():
        gamma, gamma_minutes = GammaEstimate.load(args.gamma_file), ""  # estimated by an earlier run: time unknown
    else:
        gamma = estimate_gamma(eps_model, alphas_cumprod, split.train_images, samples_per_step=args.gamma_samples,
                               generator=torch.Generator().manual_seed(args.seed))
        gamma_minutes = round((time.perf_counter() - start) / 60, 2)
        if args.gamma_file is not None:
            gamma.save(args.gamma_file)
    gamma_cost = {"train_minutes": gamma_minutes,
                  "teacher_calls": len(gamma.timesteps) * gamma.samples}  # the Γ estimate's model calls
    for calls in args.calls:
        for eta, name in ((1.0, "Analytic-DDPM"), (0.0, "Analytic-DDIM")):
            for spacing, trajectory in (("linear", "even"), ("optimal", "optimal")):
                measure(f"{name}, {trajectory} timesteps", calls, calls,
                        lambda: fd.sample_analytic_dpm(eps_model, noise, alphas_cumprod, calls, gamma, eta=eta,
                                                       timestep_spacing=spacing, disable=True,
                                                       generator=renoise_generator()),
                        gamma_cost)

    zoo = fd.zoo.digits()
    for method in fd.zoo.methods():  # the shipped learned solvers and few-step models, as the demo runs them
        if method.kind == "few-step model":
            budgets = args.calls
        elif method.kind == "learned solver":
            budgets = method.calls
        else:
            continue
        sample, cost = method.prepare(zoo), method.training_cost()
        for calls in budgets:
            measure(method.label, calls, calls, lambda: sample(noise, calls, renoise_generator()), cost)
    pcm = fd.zoo.digits_pcm()
    for calls in args.calls:
        if calls >= pcm.phases and calls % pcm.phases == 0:  # where the PCM student started: its teacher's steps
            measure("teacher on the PCM timesteps", calls, calls,
                    lambda: fd.sample_pcm(eps_model, noise, alphas_cumprod, pcm.phases, calls, disable=True))

    write_csv("few_step_digits", rows)
    plot(rows, RESULTS / "few_step_digits_cpu.png")
    save_grid(pictures, sorted({c for _, c in pictures}), RESULTS / "few_step_digits_cpu_samples.png", "calls")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    teacher = [r for r in rows if r["method"].startswith("teacher:")]  # the 50-call reference, a line
    curves = [{**r, "steps": r["calls"]} for r in rows if r not in teacher]
    plot_fd_against_steps(ax, curves, "method", "Few-step sampling on the digits model (same noise)")
    for r in teacher:
        ax.axhline(r["fd"], color="black", linestyle="--", linewidth=1, label=r["method"])
    ax.set_xlabel("model calls")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
