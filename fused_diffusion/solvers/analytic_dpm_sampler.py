"""Analytic-DPM sampling (Bao et al., ICLR 2022): ancestral steps of DDIM's family over a skipped timestep sequence,
with the optimal reverse variance of fused_diffusion/analytic_dpm.py; the same loop with DDPM's variances (β̃ or β)
or none (DDIM), the paper's baselines.

Each step is one model call and one lincomb of [x, ε, z], as the authors' `reverse_ddpm_ms_eps` /
`reverse_ddim_ms_eps` write it: x0 = (x - sqrt(β̄_r) ε) / sqrt(ᾱ_r), then
    η = 1 (Analytic-DDPM):  x_s = sqrt(ᾱ_s) β_{r|s} / β̄_r x0 + sqrt(α_{r|s}) β̄_s / β̄_r x + σ z  (DDPM's mean)
    η < 1 (Analytic-DDIM):  x_s = sqrt(ᾱ_s) x0 + sqrt(β̄_s - λ²) ε + σ z                         (DDIM's mean)
(at η = 1 the two are equal unless x0 is clamped). For bounded data x0 is clamped into the data range first, as the
authors' code always does: then x0 is its own lincomb, clamped in place, and the update a lincomb of [x0, x, ε, z].
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..analytic_dpm import GammaEstimate, check_data_range, check_timesteps, optimal_timesteps, optimal_variance
from ..schedules import check_alphas_cumprod
from ..checks import check_count, check_eta, check_real, describe
from .base import Solver
from .ddim import ddim_timesteps
from .run import Callback, Run, sample

VARIANCES = ("analytic", "small", "large")
TIMESTEP_SPACINGS = ("linear", "leading", "trailing", "linspace")


def analytic_dpm_timesteps(num_train_timesteps: int, steps: int, spacing: str = "linear") -> Tensor:
    """The decreasing timesteps of a `steps`-step run: "linear" is the paper's even trajectory (its code's
    `_choice_steps_linear`: from the first to the last training timestep, both included, a float stride rounded
    half to even on its index t + 1); "leading", "trailing" and "linspace" are diffusers' DDIMScheduler grids."""
    num_train_timesteps = check_count("num_train_timesteps", num_train_timesteps)
    steps = check_count("steps", steps)
    if steps > num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}] (the number of training timesteps), got {steps}")
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {', '.join(map(repr, TIMESTEP_SPACINGS))}, got {spacing!r}")
    if spacing != "linear":
        return ddim_timesteps(num_train_timesteps, steps, spacing)
    if steps == 1:
        return torch.tensor([num_train_timesteps - 1])
    # accumulated from the paper's index 1 as its code does (rounding half to even): np.linspace's grid differs
    stride, position, grid = (num_train_timesteps - 1) / (steps - 1), 1.0, []
    for _ in range(steps):
        grid.append(round(position) - 1)
        position += stride
    return torch.tensor(grid[::-1], dtype=torch.int64)


class AnalyticDPM(Solver):
    """Ancestral sampling over any strictly decreasing timesteps (the schedule), the last step to the data (ᾱ = 1),
    returning its mean: no noise there, as in the paper.

    variance: "analytic" (the optimal variance from `gamma`, Theorem 1 clipped by Theorem 2), "small" (λ² = η² β̃:
    DDPM's β̃ for η = 1, none for η = 0, i.e. DDIM) or "large" (β_{r|s} = 1 - ᾱ_r / ᾱ_s, DDPM's other choice;
    η = 1 only). data_range: bounds of the data (None: unbounded): x0 is clamped into them and they bound the
    variance (Theorem 2). clip_last_noise: the authors' clip of the last noise added (the second-last step, landing
    on the last timestep) so that E|σ z| <= clip_last_noise 8-bit pixel steps of the data range, σ <= y (b - a) / 255
    sqrt(π / 2); they use 1 (Analytic-DDIM, cosine schedules, ImageNet, LSUN) or 2 (Analytic-DDPM on CIFAR10's
    linear schedule, CelebA); None: no clip.
    """

    name, label, paper = "analytic_dpm", "Analytic-DPM", "Bao et al. 2022 (Analytic-DPM)"
    model_output = "eps"
    schedule_kind = "timesteps"

    def __init__(self, alphas_cumprod: Tensor, gamma: GammaEstimate | None = None, eta: float = 1.0,
                 variance: str = "analytic", data_range: tuple[float, float] | None = (-1.0, 1.0),
                 clip_last_noise: float | None = 1.0):
        self.alphas_cumprod = check_alphas_cumprod(alphas_cumprod).detach().to("cpu", torch.float64)
        self.eta = check_eta(eta, ddim=True)
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(map(repr, VARIANCES))}, got {variance!r}")
        if variance == "analytic" and not isinstance(gamma, GammaEstimate):
            raise TypeError("gamma must be a fd.analytic_dpm.GammaEstimate (from estimate_gamma or "
                            f"GammaEstimate.load) for variance='analytic', got {describe(gamma)}")
        if variance != "analytic" and gamma is not None:
            raise ValueError(f"gamma is read by variance='analytic' only; variance={variance!r} takes gamma=None")
        if variance == "large" and self.eta != 1:
            raise ValueError(f"variance='large' (DDPM's beta) goes with DDPM's mean, eta=1; got eta={self.eta}")
        self.gamma, self.variance = gamma, variance
        self.data_range = check_data_range(data_range)
        if clip_last_noise is not None:
            clip_last_noise = check_real("clip_last_noise", clip_last_noise, above=0)
            if self.data_range is None:
                raise ValueError(f"clip_last_noise={clip_last_noise} counts 8-bit steps of the data range; with "
                                 "data_range=None (unbounded data) pass clip_last_noise=None")
        self.clip_last_noise = clip_last_noise
        # no noise at all: DDIM (the step structure, not just its values)
        self.noisy = not (variance == "small" and self.eta == 0)

    @property
    def stochastic(self) -> bool:
        return self.noisy

    def graph_key(self) -> tuple:
        return (type(self).__name__, self.data_range, self.noisy)

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return False  # a grid of timesteps, not sigmas

    def check_schedule(self, timesteps: Tensor) -> None:
        if not isinstance(timesteps, Tensor):
            raise TypeError(f"timesteps must be a torch.Tensor, got {describe(timesteps)}")
        t = check_timesteps("timesteps", timesteps, len(self.alphas_cumprod), order="decreasing")
        if self.gamma is not None:
            self.gamma.at(t)  # raises naming the timesteps it lacks

    def num_steps(self, timesteps: Tensor) -> int:
        return len(timesteps)

    def tables(self, timesteps: Tensor) -> dict[str, Tensor]:
        t = timesteps.long()
        ac = self.alphas_cumprod
        a_r = ac[t]
        a_s = torch.cat([ac[t[1:]], a_r.new_ones(1)])  # the last step lands on the data
        b_r, b_s = 1 - a_r, 1 - a_s
        beta = 1 - a_r / a_s  # β_{r|s}, the skipped step's total β
        lambda2 = self.eta**2 * b_s / b_r * beta
        if self.variance == "analytic":
            var = optimal_variance(ac, t, self.gamma, self.eta, data_range=self.data_range)
        else:
            var = (lambda2 if self.variance == "small" else beta).clone()
        var[-1] = 0  # the last step returns the mean
        if self.clip_last_noise is not None and len(t) > 1:
            low, high = self.data_range
            var[-2] = var[-2].clamp_max((self.clip_last_noise * (high - low) / 255 * math.sqrt(math.pi / 2)) ** 2)
        # the mean on [x0, x, eps]
        if self.eta == 1:
            mean = torch.stack([a_s.sqrt() * beta / b_r, (a_r / a_s).sqrt() * b_s / b_r, torch.zeros_like(a_r)], 1)
        else:
            mean = torch.stack([a_s.sqrt(), torch.zeros_like(a_r), (b_s - lambda2).clamp_min(0).sqrt()], 1)
        x0_row = torch.stack([a_r.rsqrt(), -(b_r / a_r).sqrt()], dim=1)
        tables = {"timestep": t, "x0": x0_row}
        if self.data_range is not None:
            tables["update"] = torch.cat([mean, var.sqrt()[:, None]], 1)
        else:  # x0 folded into x and eps: one lincomb of [x, eps, z]
            tables["update"] = torch.stack([mean[:, 1] + mean[:, 0] * x0_row[:, 0],
                                            mean[:, 2] + mean[:, 0] * x0_row[:, 1], var.sqrt()], 1)
        return tables

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        eps = run.call(x, i, "timestep")
        inputs = (x, eps)
        if self.data_range is not None or run.callback is not None:
            x0 = run.lincomb("x0", i, x, eps)
            if self.data_range is not None:
                x0 = x0.clamp_(*self.data_range)
                inputs = (x0, x, eps)
            if run.callback is not None:
                run.callback({"x": x, "i": i, "timestep": run.schedule[i], "denoised": x0})
        if self.noisy and i < run.n_steps - 1:
            return run.lincomb("update", i, *inputs, run.noise(i))
        return run.lincomb("update", i, *inputs)


def sample_analytic_dpm(eps_model: Callable[..., Any], x: Tensor, alphas_cumprod: Tensor, steps: int,
                        gamma: GammaEstimate, *, eta: float = 1.0, timestep_spacing: str = "linear",
                        data_range: tuple[float, float] | None = (-1.0, 1.0), clip_last_noise: float | None = 1.0,
                        generator: torch.Generator | None = None, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """Analytic-DPM (Bao et al., ICLR 2022): `steps` ancestral steps with the optimal reverse variance of Theorem 1
    (clipped by Theorem 2), from Γ estimated by fd.analytic_dpm.estimate_gamma; η = 1 is the paper's Analytic-DDPM,
    η = 0 Analytic-DDIM. eps_model(x, t[B]) with integer timesteps, x the unit-variance initial noise. The timesteps
    are the paper's even trajectory by default (see analytic_dpm_timesteps); timestep_spacing="optimal" is its optimal
    trajectory (fd.analytic_dpm.optimal_timesteps, from `gamma`, which must then cover every training timestep; the
    DDPM bound's trajectory for every η, as the authors' code); any other timesteps: fd.solvers.AnalyticDPM with
    fd.solvers.sample. `gamma` must cover the timesteps. For data outside [-1, 1] set data_range (None: unbounded,
    e.g. latents, with clip_last_noise=None). The callback dict has 'x', 'i', 'timestep' and 'denoised' (the x0
    estimate, clamped)."""
    solver = AnalyticDPM(alphas_cumprod, gamma, eta, "analytic", data_range, clip_last_noise)
    if timestep_spacing == "optimal":
        timesteps = optimal_timesteps(gamma, solver.alphas_cumprod, steps)
    elif timestep_spacing in TIMESTEP_SPACINGS:
        timesteps = analytic_dpm_timesteps(len(solver.alphas_cumprod), steps, timestep_spacing)
    else:
        raise ValueError(f"timestep_spacing must be one of {', '.join(map(repr, (*TIMESTEP_SPACINGS, 'optimal')))}, "
                         f"got {timestep_spacing!r}")
    return sample(solver, eps_model, x, timesteps, extra_args, callback, disable, generator=generator,
                  k_diffusion_rng=False)
