"""Shortcut-model sampling (Frans et al. 2024, "One Step Diffusion via Shortcut Models", sec. 3):
a flow model conditioned on the step size, v(x_t, t, d), with x_{t+d} = x_t + d v, t from 0 (noise) to 1 (data)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_has_data, describe
from .base import Solver
from .run import Run


class Shortcut(Solver):
    """steps uniform steps of size d = 1/steps; one model call and one lincomb [1, d] on [x, v] per step.
    The callback gets the data estimate x + (1 - t) v as 'denoised' (one more lincomb, only with a callback)."""

    name, label, paper = "shortcut", "Shortcut", "Frans et al. 2024 (shortcut models)"
    model_output = "velocity"
    schedule_kind = "flow_times"

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return False  # a grid of timesteps / flow times, not sigmas: no denoise step

    def check_schedule(self, times: Tensor) -> None:
        if not isinstance(times, Tensor) or not times.is_floating_point():
            raise TypeError(f"flow times must be a floating-point torch.Tensor, got {describe(times)}")
        check_has_data("flow times", times)
        t = times.detach().to("cpu", torch.float64)  # sync-ok: validated once, before the loop
        if t.dim() != 1 or len(t) < 2:
            raise ValueError(f"flow times must be a 1-D tensor of at least 2 values, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all() or t[0] != 0 or t[-1] != 1 or ((t[1:] - t[:-1]) <= 0).any():
            raise ValueError(f"flow times must increase strictly from 0 to 1, got {t.tolist()}")  # sync-ok: error path

    def tables(self, times: Tensor) -> dict[str, Tensor]:
        d = times[1:] - times[:-1]
        ones = torch.ones_like(d)
        return {"t": times[:-1], "d": d, "update": torch.stack([ones, d], dim=1),
                "data_estimate": torch.stack([ones, 1 - times[:-1]], dim=1)}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        v = run.call(x, i, "t", "d")
        if run.callback is not None:
            denoised = run.lincomb("data_estimate", i, x, v)
            run.callback({"x": x, "i": i, "t": run.schedule[i], "denoised": denoised})
        return run.lincomb("update", i, x, v)
