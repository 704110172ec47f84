"""Euler on a rectified-flow / flow-matching model (Lipman et al. 2023, "Flow Matching for Generative Modeling";
Esser et al. 2024, "Scaling Rectified Flow Transformers", SD3 sec. 2), as diffusers' FlowMatchEulerDiscreteScheduler:
x_t = (1 - t) x0 + t noise with t from 1 (noise) down to 0 (data), the model predicting the velocity
v = dx/dt = noise - x0, and x_{t'} = x_t + (t' - t) v."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_has_data, describe
from .base import Solver
from .run import Run


def check_flow_sigmas(sigmas: Tensor) -> None:
    """Flow noise levels: 1-D, at least 2 values, in [0, 1], strictly decreasing (a repeated level is a step that
    does not move, which the scheduler never makes)."""
    if not isinstance(sigmas, Tensor) or not sigmas.is_floating_point():
        raise TypeError(f"flow sigmas must be a floating-point torch.Tensor, got {describe(sigmas)}")
    check_has_data("flow sigmas", sigmas)
    t = sigmas.detach().to("cpu", torch.float64)  # sync-ok: validated once, before the loop
    if t.dim() != 1 or len(t) < 2:
        raise ValueError(f"flow sigmas must be a 1-D tensor of at least 2 values, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any() or ((t[1:] - t[:-1]) >= 0).any():
        raise ValueError(f"flow sigmas must decrease strictly within [0, 1], got {t.tolist()}")  # sync-ok: error path


class FlowEuler(Solver):
    """One model call and one lincomb [1, t_{i+1} - t_i] on [x, v] per step; the model gets t_i (its 'sigma')."""

    name, label = "flow_euler", "Flow Euler"
    paper = "Lipman et al. 2023 (Flow Matching); Esser et al. 2024 (SD3)"
    model_output = "velocity"
    schedule_kind = "flow_sigmas"

    def check_schedule(self, sigmas: Tensor) -> None:
        check_flow_sigmas(sigmas)

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return False  # the last step is an Euler step like the others (the velocity at t carries x to 0)

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        dt = sigmas[1:] - sigmas[:-1]
        return {"sigma": sigmas[:-1], "update": torch.stack([torch.ones_like(dt), dt], dim=1),
                "data_estimate": torch.stack([torch.ones_like(dt), -sigmas[:-1]], dim=1)}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        velocity = run.call(x, i, "sigma")
        if run.callback is not None:
            run.callback({"x": x, "i": i, "sigma": run.value("sigma", i),
                          "denoised": run.lincomb("data_estimate", i, x, velocity)})
        return run.lincomb("update", i, x, velocity)
