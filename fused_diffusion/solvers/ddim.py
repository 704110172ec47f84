"""DDIM (Song et al. 2021, eq. 12) on an epsilon model with integer timesteps, as diffusers' DDIMScheduler."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Solver, check_eta
from .run import Run


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> Tensor:
    """DDIMScheduler.set_timesteps: the decreasing integer timesteps of an n-step DDIM run."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    if spacing == "leading":
        timesteps = (np.arange(0, steps) * (num_train_timesteps // steps)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        timesteps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        timesteps = np.linspace(0, num_train_timesteps - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"timestep_spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    return torch.from_numpy(timesteps.copy())


class DDIM(Solver):
    """x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t);
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std z, std = eta sqrt((1-a_prev)/(1-a_t) (1-a_t/a_prev)).
    The schedule is the timestep list; the previous timestep is t - T // steps (as diffusers). Without clipping one
    lincomb on [x, eps(, z)]; with clip_sample, x0 = lincomb[x, eps] is clamped, then one lincomb on [x0, eps(, z)]."""

    name = "ddim"

    def __init__(self, alphas_cumprod: Tensor, eta: float = 0.0, set_alpha_to_one: bool = True,
                 clip_sample: bool = False, clip_sample_range: float = 1.0):
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.eta, self.set_alpha_to_one = check_eta(eta), bool(set_alpha_to_one)
        self.clip_sample, self.clip_sample_range = bool(clip_sample), float(clip_sample_range)

    def graph_key(self) -> tuple:
        return (type(self).__name__, self.eta > 0, self.clip_sample, self.clip_sample_range)

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return False  # a grid of timesteps / flow times, not sigmas: no denoise step

    def check_schedule(self, timesteps: Tensor) -> None:
        t = timesteps.detach().cpu()  # sync-ok: validated once, before the loop
        if t.dim() != 1 or len(t) == 0:
            raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
        if (t < 0).any() or (t >= len(self.alphas_cumprod)).any():
            raise ValueError(f"timesteps must lie in [0, {len(self.alphas_cumprod) - 1}], got {t.tolist()}")  # sync-ok: error path

    def num_steps(self, timesteps: Tensor) -> int:
        return len(timesteps)

    def tables(self, timesteps: Tensor) -> dict[str, Tensor]:
        t = timesteps.long()
        ac = self.alphas_cumprod
        final = 1.0 if self.set_alpha_to_one else float(ac[0])
        prev = t - len(ac) // len(t)
        a_t = ac[t]
        a_prev = torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.full_like(a_t, final))
        std = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        direction = (1 - a_prev - std**2).clamp_min(0).sqrt()
        x0_row = torch.stack([a_t.rsqrt(), -(1 - a_t).sqrt() / a_t.sqrt()], dim=1)
        tables = {"timestep": t, "x0": x0_row}
        if self.clip_sample:
            tables["ddim"] = torch.stack([a_prev.sqrt(), direction, std], dim=1)
        else:
            tables["ddim"] = torch.stack([a_prev.sqrt() * x0_row[:, 0], direction + a_prev.sqrt() * x0_row[:, 1], std], 1)
        return tables

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        eps = run.call(x, i, "timestep")
        base = x
        if self.clip_sample or run.callback is not None:
            x0 = run.lincomb("x0", i, x, eps)
            if self.clip_sample:
                base = x0 = x0.clamp_(-self.clip_sample_range, self.clip_sample_range)
            if run.callback is not None:
                run.callback({"x": x, "i": i, "timestep": run.schedule[i], "denoised": x0})
        if self.eta > 0:
            return run.lincomb("ddim", i, base, eps, run.noise(i))
        return run.lincomb("ddim", i, base, eps)
