"""Analytic-DPM (Bao et al., ICLR 2022) on the shipped digits model: sample quality of the optimal reverse variance
against DDPM's hand-picked variances and DDIM, at the same steps.

    python bench/bench_analytic_dpm.py --threads 1    # -> results/analytic_dpm_digits_cpu.csv/.png, _samples.png

Γ_t = E||ε_θ(x_t, t)||² / d is estimated once (fd.analytic_dpm.estimate_gamma) on the digits training split at all
1000 training timesteps, --gamma-samples draws each. Every sampler then runs from the same --samples initial noises
(seeded) on the paper's even trajectory of --steps timesteps, in the same ancestral loop (fd.solvers.AnalyticDPM: x0
clamped to [-1, 1], no noise on the last step, the authors' clip of the last noise at 1 pixel step), differing only
in the reverse variance: Analytic-DDPM (η = 1, optimal; also without the last-noise clip), Analytic-DDIM (η = 0,
optimal), DDPM with β̃ (the posterior variance) and with β, DDIM (no noise). `fd.sample_ddim` (diffusers' DDIM
loop, 'leading' grid, no clamp) is the library's own DDIM for reference. Quality is fd.metrics.frechet_distance
(digits classifier features against the 297 held-out digits); the floor row is the same number of training digits.
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
from fused_diffusion.analytic_dpm import estimate_gamma
from fused_diffusion.solvers.analytic_dpm_sampler import AnalyticDPM, analytic_dpm_timesteps
from fused_diffusion.zoo.data import load_digits_split

# row name: (eta, variance, clip_last_noise) of fd.solvers.AnalyticDPM
SAMPLERS = {
    "analytic_ddpm": (1.0, "analytic", 1.0),
    "analytic_ddpm_no_clip": (1.0, "analytic", None),
    "analytic_ddim": (0.0, "analytic", 1.0),
    "ddpm_beta_tilde": (1.0, "small", 1.0),
    "ddpm_beta": (1.0, "large", 1.0),
    "ddim": (0.0, "small", 1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gamma-samples", type=int, default=100, help="Monte-Carlo draws of Γ per timestep")
    parser.add_argument("--batch-size", type=int, default=500, help="of the Γ estimate")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    denoiser, alphas_cumprod, shape = fd.zoo.digits()
    eps_model = denoiser.inner_model
    split = load_digits_split()
    start = time.perf_counter()
    gamma = estimate_gamma(eps_model, alphas_cumprod, split.train_images, samples_per_step=args.gamma_samples,
                           batch_size=args.batch_size, generator=torch.Generator().manual_seed(args.seed))
    gamma_seconds = time.perf_counter() - start
    print(f"Γ: {len(gamma.timesteps)} timesteps x {gamma.samples} draws in {gamma_seconds:.0f} s, largest standard "
          f"error {gamma.stderr.max():.2g}", flush=True)

    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    rows = [{"sampler": "data (train split)", "eta": "", "variance": "", "clip_last_noise": "", "steps": 0,
             "samples": args.samples, "fd": round(metrics.frechet_distance(split.train_images[: args.samples]), 4),
             "seconds": 0.0}]
    pictures = {}

    def record(name: str, eta: float, variance: str, clip: float | None, steps: int,
               run: Callable[[], torch.Tensor]) -> None:
        start = time.perf_counter()
        images = run()
        seconds = time.perf_counter() - start
        rows.append({"sampler": name, "eta": eta, "variance": variance, "clip_last_noise": clip, "steps": steps,
                     "samples": args.samples, "fd": round(metrics.frechet_distance(images), 4),
                     "seconds": round(seconds, 2)})
        pictures[name, steps] = images[:36]
        print(rows[-1], flush=True)

    for steps in args.steps:
        timesteps = analytic_dpm_timesteps(len(alphas_cumprod), steps)
        for name, (eta, variance, clip) in SAMPLERS.items():
            solver = AnalyticDPM(alphas_cumprod, gamma if variance == "analytic" else None, eta, variance,
                                 clip_last_noise=clip)
            record(name, eta, variance, clip, steps, lambda: solvers.sample(
                solver, eps_model, noise, timesteps, disable=True, k_diffusion_rng=False,
                generator=torch.Generator().manual_seed(args.seed + 1)))
        record("fd.sample_ddim", 0.0, "none", None, steps,
               lambda: fd.sample_ddim(eps_model, noise, alphas_cumprod, steps, clip_sample=False, disable=True))

    gamma_note = {"gamma_draws": gamma.samples, "gamma_seconds": round(gamma_seconds, 1),
                  "gamma_max_stderr": round(float(gamma.stderr.max()), 4)}
    write_csv("analytic_dpm_digits", [{**row, **gamma_note} for row in rows])
    plot(rows, gamma, RESULTS / "analytic_dpm_digits_cpu.png")
    save_grid(pictures, args.steps, RESULTS / "analytic_dpm_digits_cpu_samples.png", "steps")


def plot(rows: list[dict], gamma, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    plot_fd_against_steps(left, rows, "sampler", "Analytic-DPM vs hand-picked variances, digits model",
                          linestyle=lambda name: "-" if name.startswith("analytic") else "--")
    t, g, se = gamma.timesteps.numpy(), gamma.gamma.numpy(), gamma.stderr.numpy()
    right.plot(t, g, color="k", linewidth=1)
    right.fill_between(t, g - 2 * se, g + 2 * se, color="k", alpha=0.2, label="±2 standard errors")
    right.set(xlabel="timestep t", ylabel="Γ_t = E||ε_θ(x_t, t)||² / d", title=f"Γ ({gamma.samples} draws per t)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
