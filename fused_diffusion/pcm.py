"""Phased Consistency Models (Wang et al. 2024, "Phased Consistency Model", NeurIPS): the phased consistency
distillation objective of sec. 3.2 (Algorithm 1 without the adversarial loss), as its code
(G-U-N/Phased-Consistency-Model, `train_pcm_lora_sd15.py`) computes it, for an epsilon-prediction DDPM teacher.

The trajectory is cut into M phases over N = 50 DDIM timesteps (solvers/pcm_sampler.py: `ddim_grid`,
`phase_starts`); in each phase the student is a consistency map to the phase's lower edge s in DDIM form,
f(x_t, t) = sqrt(a_s) x0(x_t, eps(x_t, t)) + sqrt(1 - a_s) eps(x_t, t). One training sample:

    i ~ U{0..N-1},  t = tau_i,  t' = tau_{i-1} (timestep 0 for i = 0),  x_t = sqrt(a_t) x + sqrt(1 - a_t) z
    x_{t'} = the teacher's DDIM step from t to t' (no guidance: the digits teacher is unconditional)
    loss   = d(f_student(x_t, t), f_target(x_{t'}, t'))   with f_target = x_{t'} when t' is the edge (boundary)

The target network is the student without gradient in the code (target_ema = 0); any other eps model may be
given. `distance` is "l2" (mean squared error) or "huber" (the code's elementwise sqrt(diff^2 + c^2) - c,
c = 0.001). The paper's adversarial consistency loss is not built (docs/few-step.md says what the plain objective
reaches on the digits model).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_callable, check_count, check_real, describe
from .models import unwrap_output
from .schedules import check_alphas_cumprod
from .solvers.pcm_sampler import DDIM_STEPS, check_phases, ddim_grid, phase_starts

DISTANCES = ("l2", "huber")
HUBER_C = 0.001  # the code's --huber_c


def ddim_form(x_t: Tensor, eps: Tensor, a_t: Tensor, a_s: Tensor) -> Tensor:
    """x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps with x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t): the DDIM step and
    the phased consistency map (paper eq. 6 with the DDIM-form parametrisation); a_t, a_s broadcast against x."""
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def phase_edges(index: Tensor, phases: int, ddim_steps: int = DDIM_STEPS) -> Tensor:
    """For DDIM indices i, the first index e of their phase (the edge is the timestep tau_{e-1}, 0 for e = 0)."""
    starts = phase_starts(phases, ddim_steps)
    return starts[torch.searchsorted(starts, index, right=True) - 1]


def loss(student: Callable[..., Any], target: Callable[..., Any], teacher: Callable[..., Any], x_data: Tensor,
         alphas_cumprod: Tensor, *, phases: int, ddim_steps: int = DDIM_STEPS, distance: str = "l2",
         huber_c: float = HUBER_C, x_noise: Tensor | None = None,
         generator: torch.Generator | None = None) -> Tensor:
    """The phased consistency distillation loss, averaged over the batch and dimensions. student, target and
    teacher are eps models eps(x, t[B]) (a diffusers UNet2DModel's `.sample` output is read) on the DDPM with
    `alphas_cumprod`; draws the DDIM index i from `generator`, then z ~ N(0, I) unless `x_noise` is given."""
    if not isinstance(x_data, Tensor) or not x_data.is_floating_point() or x_data.dim() < 1 or not len(x_data):
        raise TypeError(f"x_data must be a floating-point torch.Tensor with a non-empty batch, got {describe(x_data)}")
    check_callable("student", student, "student(x, t) -> eps", 2)
    check_callable("target", target, "target(x, t) -> eps (the student without gradient, or its EMA)", 2)
    check_callable("teacher", teacher, "teacher(x, t) -> eps", 2)
    alphas_cumprod = check_alphas_cumprod(alphas_cumprod).detach().to("cpu", torch.float64)
    ddim_steps = check_count("ddim_steps", ddim_steps)
    if ddim_steps > len(alphas_cumprod):
        raise ValueError(f"ddim_steps must be at most the {len(alphas_cumprod)} training timesteps, got {ddim_steps}")
    phases = check_phases(phases, ddim_steps)
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    huber_c = check_real("huber_c", huber_c, above=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")

    index = torch.randint(ddim_steps, (len(x_data),), generator=generator)
    if x_noise is None:
        x_noise = torch.randn(x_data.shape, generator=generator, dtype=x_data.dtype).to(x_data.device)
    elif not isinstance(x_noise, Tensor) or x_noise.shape != x_data.shape or not x_noise.is_floating_point():
        raise ValueError(f"x_noise must be a floating-point tensor of x_data's shape {tuple(x_data.shape)}, got "
                         f"{describe(x_noise)}")
    grid = ddim_grid(len(alphas_cumprod), ddim_steps)
    t = grid[index]
    t_prev = torch.where(index > 0, grid[(index - 1).clamp_min(0)], 0)
    edge = phase_edges(index, phases, ddim_steps)
    t_edge = torch.where(edge > 0, grid[(edge - 1).clamp_min(0)], 0)
    view = (-1,) + (1,) * (x_data.dim() - 1)
    a_t, a_prev, a_edge = (alphas_cumprod[s].to(x_data).view(view) for s in (t, t_prev, t_edge))
    t, t_prev = t.to(x_data.device), t_prev.to(x_data.device)

    x_t = a_t.sqrt() * x_data + (1 - a_t).sqrt() * x_noise
    prediction = ddim_form(x_t, _eps(student, x_t, t, "student"), a_t, a_edge)
    with torch.no_grad():
        x_prev = ddim_form(x_t, _eps(teacher, x_t, t, "teacher"), a_t, a_prev)
        goal = ddim_form(x_prev, _eps(target, x_prev, t_prev, "target"), a_prev, a_edge)
        goal = torch.where((index == edge).to(x_data.device).view(view), x_prev, goal)  # the code's c_skip = 1
    if distance == "l2":
        return F.mse_loss(prediction, goal)
    return ((prediction - goal).pow(2) + huber_c**2).sqrt().sub(huber_c).mean()


def _eps(model: Callable[..., Any], x: Tensor, t: Tensor, name: str) -> Tensor:
    out = unwrap_output(model(x, t))
    if not isinstance(out, Tensor) or out.shape != x.shape or not out.is_floating_point():
        raise ValueError(f"{name} returned {describe(out)} for x of shape {tuple(x.shape)}; it must return eps, a "
                         "floating-point tensor of x's shape")
    return out.to(x.dtype)
