"""Analytic-DPM (Bao et al., ICLR 2022) on the shipped digits model: sample quality of the optimal reverse variance
against DDPM's hand-picked variances and DDIM, at the same steps, and of the paper's optimal trajectory against its
even one.

    python bench/bench_analytic_dpm.py --threads 1    # -> results/analytic_dpm_digits_cpu.csv/.png, _samples.png

Γ_t = E||ε_θ(x_t, t)||² / d is estimated once (fd.analytic_dpm.estimate_gamma) on the digits training split at all
1000 training timesteps, --gamma-samples draws each. Every sampler then runs from the same --samples initial noises
(seeded) on the paper's even trajectory of --steps timesteps, in the same ancestral loop (fd.solvers.AnalyticDPM: x0
clamped to [-1, 1], no noise on the last step, the authors' clip of the last noise at 1 pixel step), differing only
in the reverse variance: Analytic-DDPM (η = 1, optimal; also without the last-noise clip), Analytic-DDIM (η = 0,
optimal), DDPM with β̃ (the posterior variance) and with β, DDIM (no noise). `fd.sample_ddim` (diffusers' DDIM
loop, 'leading' grid, no clamp) is the library's own DDIM for reference. Then Analytic-DDPM and Analytic-DDIM run
on the same noises over the optimal trajectory of as many timesteps (fd.analytic_dpm.optimal_timesteps with the same
Γ: the least-cost path of the KL bound, the DDPM one for both, as the authors' code). The trajectory needs a Γ
estimate whose first value above 1 (Monte-Carlo noise) lies in the upper half of the timesteps: at 100 draws it lies
at t = 436 and the trajectory is refused, hence 1000 draws by default. Quality is fd.metrics.frechet_distance (digits
classifier features against the 297 held-out digits); the floor row is the same number of training digits. Each row
records its timesteps.
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
from fused_diffusion.analytic_dpm import estimate_gamma, optimal_timesteps
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
# the samplers that also run on the optimal trajectory, as "<name>_optimal" rows
ON_OPTIMAL_TRAJECTORY = ("analytic_ddpm", "analytic_ddim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 15, 20, 50])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gamma-samples", type=int, default=1000, help="Monte-Carlo draws of Γ per timestep")
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
    over_one = gamma.timesteps[gamma.gamma > 1]
    print(f"Γ: {len(gamma.timesteps)} timesteps x {gamma.samples} draws in {gamma_seconds:.0f} s, largest standard "
          f"error {gamma.stderr.max():.2g}, above 1 at {len(over_one)} timesteps from "
          f"{over_one[0] if len(over_one) else None}", flush=True)

    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    rows = [{"sampler": "data (train split)", "eta": "", "variance": "", "clip_last_noise": "", "steps": 0,
             "samples": args.samples, "fd": round(metrics.frechet_distance(split.train_images[: args.samples]), 4),
             "seconds": 0.0, "timesteps": ""}]
    pictures, trajectories = {}, {}

    def record(name: str, eta: float, variance: str, clip: float | None, timesteps: torch.Tensor | None, steps: int,
               run: Callable[[], torch.Tensor]) -> None:
        start = time.perf_counter()
        images = run()
        seconds = time.perf_counter() - start
        rows.append({"sampler": name, "eta": eta, "variance": variance, "clip_last_noise": clip, "steps": steps,
                     "samples": args.samples, "fd": round(metrics.frechet_distance(images), 4),
                     "seconds": round(seconds, 2),
                     "timesteps": "" if timesteps is None else " ".join(map(str, timesteps.tolist()))})
        pictures[name, steps] = images[:36]
        print(rows[-1], flush=True)

    def run_solver(name: str, timesteps: torch.Tensor, steps: int) -> None:
        eta, variance, clip = SAMPLERS[name.removesuffix("_optimal")]
        solver = AnalyticDPM(alphas_cumprod, gamma if variance == "analytic" else None, eta, variance,
                             clip_last_noise=clip)
        record(name, eta, variance, clip, timesteps, steps, lambda: solvers.sample(
            solver, eps_model, noise, timesteps, disable=True, k_diffusion_rng=False,
            generator=torch.Generator().manual_seed(args.seed + 1)))

    for steps in args.steps:
        even = analytic_dpm_timesteps(len(alphas_cumprod), steps)
        optimal = optimal_timesteps(gamma, alphas_cumprod, steps)
        trajectories[steps] = (even, optimal)
        for name in SAMPLERS:
            run_solver(name, even, steps)
        record("fd.sample_ddim", 0.0, "none", None, None, steps,
               lambda: fd.sample_ddim(eps_model, noise, alphas_cumprod, steps, clip_sample=False, disable=True))
        for name in ON_OPTIMAL_TRAJECTORY:
            run_solver(f"{name}_optimal", optimal, steps)

    gamma_note = {"gamma_draws": gamma.samples, "gamma_seconds": round(gamma_seconds, 1),
                  "gamma_max_stderr": round(float(gamma.stderr.max()), 4), "gamma_over_1": len(over_one),
                  "gamma_first_over_1": int(over_one[0]) if len(over_one) else ""}
    write_csv("analytic_dpm_digits", [{**row, **gamma_note} for row in rows])
    plot(rows, gamma, trajectories, RESULTS / "analytic_dpm_digits_cpu.png")
    save_grid(pictures, args.steps, RESULTS / "analytic_dpm_digits_cpu_samples.png", "steps")


def plot(rows: list[dict], gamma, trajectories: dict[int, tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(18, 4.5))
    even = [r for r in rows if not r["sampler"].endswith("_optimal")]
    plot_fd_against_steps(left, even, "sampler", "Analytic-DPM vs hand-picked variances, digits model",
                          linestyle=lambda name: "-" if name.startswith("analytic") else "--")
    colors = {line.get_label(): line.get_color() for line in left.get_lines()}
    for name in ON_OPTIMAL_TRAJECTORY:  # dotted, in the colour of the same sampler on even timesteps
        mine = [r for r in rows if r["sampler"] == f"{name}_optimal"]
        left.plot([r["steps"] for r in mine], [r["fd"] for r in mine], marker="s", linestyle=":", color=colors[name],
                  label=f"{name}, optimal trajectory")
    left.legend(fontsize=8)
    t, g, se = gamma.timesteps.numpy(), gamma.gamma.numpy(), gamma.stderr.numpy()
    middle.plot(t, g, color="k", linewidth=1)
    middle.fill_between(t, g - 2 * se, g + 2 * se, color="k", alpha=0.2, label="±2 standard errors")
    over = g > 1
    middle.scatter(t[over], g[over], color="tab:red", s=4, label=f"Γ > 1 ({over.sum()} timesteps)", zorder=3)
    middle.set(xlabel="timestep t", ylabel="Γ_t = E||ε_θ(x_t, t)||² / d", title=f"Γ ({gamma.samples} draws per t)")
    middle.legend(fontsize=8)
    for k, (steps, (even, optimal)) in enumerate(trajectories.items()):
        color = plt.cm.tab10(k)
        right.plot(range(steps), even.numpy(), color=color, linestyle="--", marker=".", label=f"{steps}: even")
        right.plot(range(steps), optimal.numpy(), color=color, marker="o", markersize=3, label=f"{steps}: optimal")
    right.set(xlabel="step k", ylabel="timestep t_k", title="trajectories (optimal: least-cost path of the KL bound)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
