"""DDIM (Song et al. 2021, eq. 12) on an epsilon model with integer timesteps, as diffusers' DDIMScheduler."""
from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from ..schedules import check_alphas_cumprod
from ..checks import check_count, check_eta, check_real, describe
from .base import Solver
from .run import Run

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def _check_steps(steps: object, num_train_timesteps: int) -> int:
    """An integer in [1, num_train_timesteps]: a float count would give a step size diffusers never uses."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"steps must be an integer in [1, {num_train_timesteps}], got {describe(steps)}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}] (the number of training timesteps), got {steps}")
    return int(steps)


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> Tensor:
    """DDIMScheduler.set_timesteps: the decreasing integer timesteps of an n-step DDIM run."""
    num_train_timesteps = check_count("num_train_timesteps", num_train_timesteps)
    steps = _check_steps(steps, num_train_timesteps)
    steps_offset = check_count("steps_offset", steps_offset, minimum=0)
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {', '.join(map(repr, TIMESTEP_SPACINGS))}, got {spacing!r}")
    if spacing == "leading":
        timesteps = (np.arange(0, steps) * (num_train_timesteps // steps)).round()[::-1].astype(np.int64) + steps_offset
        if timesteps[0] >= num_train_timesteps:  # diffusers would index past alphas_cumprod here
            raise ValueError(f"steps_offset={steps_offset} moves the first of {steps} 'leading' timesteps to "
                             f"{timesteps[0]}, past the last training timestep {num_train_timesteps - 1}")
    elif spacing == "trailing":
        timesteps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
        # float rounding in arange sometimes adds a step at timestep -1 (diffusers then reads alphas_cumprod[-1])
        timesteps = timesteps[:steps]
    else:  # linspace
        timesteps = np.linspace(0, num_train_timesteps - 1, steps).round()[::-1].astype(np.int64)
    return torch.from_numpy(timesteps.copy())


def is_scheduler_grid(timesteps: Tensor, num_train_timesteps: int, steps: int | None = None) -> bool:
    """Whether `timesteps` is what DDIMScheduler.set_timesteps makes for `steps` steps (default: their count), or its
    last len(timesteps) entries (img2img): a spacing's grid, 'leading' shifted by a constant steps_offset."""
    n = steps or len(timesteps)
    for spacing in TIMESTEP_SPACINGS:
        grid = ddim_timesteps(num_train_timesteps, n, spacing)[n - len(timesteps):]
        shift = timesteps - grid
        if (shift == shift[0]).all() and (shift[0] == 0 or spacing == "leading" and shift[0] > 0):
            return True
    return False


class DDIM(Solver):
    """x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t);
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std z, std = eta sqrt((1-a_prev)/(1-a_t) (1-a_t/a_prev)).
    The schedule is the timestep list; the previous timestep is t - T // steps (as diffusers), steps being
    `grid_steps` when the list is the tail of a longer run's grid (img2img), else its length. Without clipping one
    lincomb on [x, eps(, z)]; with clip_sample, x0 = lincomb[x, eps] is clamped, then one lincomb on [x0, eps(, z)]."""

    name, label, paper = "ddim", "DDIM", "Song et al. 2021 (DDIM), eq. 12"
    model_output = "eps"
    schedule_kind = "timesteps"
    noise_option = "eta"

    def __init__(self, alphas_cumprod: Tensor, eta: float = 0.0, set_alpha_to_one: bool = True,
                 clip_sample: bool = True, clip_sample_range: float = 1.0, grid_steps: int | None = None):
        self.grid_steps = None if grid_steps is None else check_count("grid_steps", grid_steps)
        self.alphas_cumprod = check_alphas_cumprod(alphas_cumprod).detach().to("cpu", torch.float64)
        self.eta, self.set_alpha_to_one = check_eta(eta, ddim=True), bool(set_alpha_to_one)
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = check_real("clip_sample_range", clip_sample_range, above=0)

    def graph_key(self) -> tuple:
        return (type(self).__name__, self.eta > 0, self.clip_sample, self.clip_sample_range)

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return False  # a grid of timesteps / flow times, not sigmas: no denoise step

    def check_schedule(self, timesteps: Tensor) -> None:
        if not isinstance(timesteps, Tensor):
            raise TypeError(f"timesteps must be a torch.Tensor, got {describe(timesteps)}")
        t = timesteps.detach().to("cpu", torch.float64)  # sync-ok: validated once, before the loop
        if t.dim() != 1 or len(t) == 0:
            raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
        last = len(self.alphas_cumprod) - 1
        bad = ~((t >= 0) & (t <= last) & (t == t.round()))  # NaN is bad too; tables() would truncate a fraction
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"timesteps[{i}] = {t[i].item()} must be an integer in [0, {last}]")  # sync-ok: error path
        rises = t[1:] >= t[:-1]  # each step goes from t to t - T // steps: the order must match
        if rises.any():
            i = int(rises.nonzero()[0])
            raise ValueError(f"timesteps must be strictly decreasing: timesteps[{i}] = {int(t[i])} <= "
                             f"timesteps[{i + 1}] = {int(t[i + 1])}")
        if self.grid_steps is not None and len(t) > self.grid_steps:
            raise ValueError(f"timesteps must be at most grid_steps={self.grid_steps} long (the tail of that grid), "
                             f"got {len(t)}")
        if not is_scheduler_grid(t.long(), len(self.alphas_cumprod), self.grid_steps):
            T, n = len(self.alphas_cumprod), self.grid_steps or len(t)
            raise ValueError(
                f"timesteps must be a DDIMScheduler grid for {T} training steps and {n} steps ('leading' plus a "
                f"steps_offset, 'trailing' or 'linspace'; fd.solvers.ddim_timesteps makes them): each step goes from "
                f"t to t - {T} // {n} as diffusers' does, so another list would call the model at one timestep and "
                f"update to another; got {t.long().tolist()}")  # sync-ok: error path

    def num_steps(self, timesteps: Tensor) -> int:
        return len(timesteps)

    def tables(self, timesteps: Tensor) -> dict[str, Tensor]:
        t = timesteps.long()
        ac = self.alphas_cumprod
        final = 1.0 if self.set_alpha_to_one else float(ac[0])
        prev = t - len(ac) // (self.grid_steps or len(t))
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
