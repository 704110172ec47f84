"""Consistency distillation (CD) and consistency training (CT): Song, Dhariwal, Chen, Sutskever 2023, "Consistency
Models" (ICML), sec. 4 (CD, Algorithm 2), sec. 5 (CT, Algorithm 3, the estimator of Theorem 2), Appendix C (the
parametrisation); the pseudo-Huber distance of improved consistency training (Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models", sec. 3.3). Sigmas are EDM's (x_sigma = x_0 + sigma z), as
`openai/consistency_models` has them.

The consistency function (Appendix C) over any denoiser D(x, sigma):

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out(sigma)  = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2)

so f(x, sigma_min) = x (the boundary condition). F is the network output in EDM's parametrisation, which the paper
initialises from an EDM teacher; here it is read from the denoiser, F = (D - c_skip_edm x) / c_out_edm with EDM's
c_skip_edm = sigma_data^2 / (sigma^2 + sigma_data^2), c_out_edm = sigma sigma_data / sqrt(sigma^2 + sigma_data^2).
So a student that starts as a copy of its teacher's denoiser (a DDPM epsilon U-Net included: D = x - sigma eps)
starts where the paper's does: f = D for sigma >> sigma_min, f = x at sigma_min. Written out,
f = (c_skip - r c_skip_edm) x + r D with r = c_out / c_out_edm = (sigma - sigma_min) / sigma.

`loss` is the CD objective (teacher given) or the CT objective (teacher None) on the N-point Karras discretisation
sigma_min = t_1 < ... < t_N = sigma_max (rho = 7): n uniform in 1..N-1, x_{t_{n+1}} = x + t_{n+1} z, and
d(f_student(x_{t_{n+1}}, t_{n+1}), f_target(x_{t_n}, t_n)), where x_{t_n} is one Heun step of the teacher's
probability-flow ODE (CD) or x + t_n z with the same z (CT). The target is an EMA of the student (the caller keeps
it: theta^- <- mu theta^- + (1 - mu) theta, sec. 4); neither target nor teacher get gradients. The weighting
lambda(t_n) is 1, as the paper's CD and CT.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .checks import check_callable, check_count, check_real, describe

SIGMA_DATA = 0.5  # the paper's (and EDM's) data standard deviation
RHO = 7.0  # the Karras discretisation's exponent (paper sec. 4 and Appendix C)
DISTANCES = ("l2", "pseudo_huber")
HUBER_C = 0.00054  # improved CT: c = 0.00054 sqrt(d) for data of d dimensions


def boundary_scalings(sigma: Tensor, sigma_min: float, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor]:
    """c_skip, c_out of Appendix C: c_skip(sigma_min) = 1, c_out(sigma_min) = 0."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out


class ConsistencyFunction(nn.Module):
    """f(x, sigma) = c_skip x + c_out F over a denoiser D(x, sigma) (see the module docstring); a denoiser itself,
    so `fd.sample_consistency(f, x, sigmas, sigma_min=f.sigma_min)` samples it. Gradients reach the denoiser's
    parameters; sigma must be >= sigma_min."""

    def __init__(self, denoiser: Callable[..., Tensor], sigma_min: float, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.denoiser = check_callable("denoiser", denoiser, "denoiser(x, sigma) -> x0 estimate", 2)
        self.sigma_min = check_real("sigma_min", sigma_min, above=0)
        self.sigma_data = check_real("sigma_data", sigma_data, above=0)

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        sigma = sigma.to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        c_skip, c_out = boundary_scalings(sigma, self.sigma_min, self.sigma_data)
        c_skip_edm = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        ratio = (sigma - self.sigma_min) / sigma  # c_out / c_out_edm
        return (c_skip - ratio * c_skip_edm) * x + ratio * _predict(self.denoiser, x, sigma.view(-1), "denoiser",
                                                                    **kwargs)


def karras_sigmas(scales: int, sigma_min: float, sigma_max: float, rho: float = RHO) -> Tensor:
    """t_1 < ... < t_N of the paper (Karras et al. 2022 eq. 5), increasing, float64."""
    ramp = torch.linspace(0, 1, scales, dtype=torch.float64)
    return (sigma_min ** (1 / rho) + ramp * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho


def heun_step(denoiser: Callable[..., Tensor], x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One Heun step of dx/dsigma = (x - D(x, sigma)) / sigma from sigma to sigma_next > 0 (EDM Algorithm 1, the
    paper's CD solver); sigma and sigma_next are [B]."""
    view = (-1,) + (1,) * (x.dim() - 1)
    t, t_next = sigma.view(view), sigma_next.view(view)
    d = (x - _predict(denoiser, x, sigma, "teacher_denoiser")) / t
    x_euler = x + (t_next - t) * d
    d_next = (x_euler - _predict(denoiser, x_euler, sigma_next, "teacher_denoiser")) / t_next
    return x + (t_next - t) * (d + d_next) / 2


def consistency_distance(a: Tensor, b: Tensor, kind: str = "l2", huber_c: float | None = None) -> Tensor:
    """Per-sample distance [B]: "l2" the mean squared difference (the paper's l2, as its code's mean_flat);
    "pseudo_huber" sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(d) by default (improved CT)."""
    diff = (a - b).flatten(1)
    if kind == "l2":
        return diff.pow(2).mean(1)
    c = HUBER_C * math.sqrt(diff.shape[1]) if huber_c is None else huber_c
    return (diff.pow(2).sum(1) + c**2).sqrt() - c


def loss(student: Callable[..., Tensor], target: Callable[..., Tensor], teacher_denoiser: Callable[..., Tensor] | None,
         x_data: Tensor, *, sigma_min: float, sigma_max: float, scales: int = 18, rho: float = RHO,
         distance: str = "l2", huber_c: float | None = None, x_noise: Tensor | None = None,
         generator: torch.Generator | None = None) -> Tensor:
    """The consistency distillation loss (teacher_denoiser given; Algorithm 2) or consistency training loss
    (teacher_denoiser None; Algorithm 3), averaged over the batch.

    student and target are consistency functions f(x, sigma[B]) -> x0 (e.g. `ConsistencyFunction`s over the student
    network and its EMA copy); teacher_denoiser is a denoiser D(x, sigma[B]). Draws n (0-based index into the N =
    `scales` Karras sigmas, n in 0..N-2 counted from sigma_max down, as the paper's code) from `generator`, then
    z ~ N(0, I) unless `x_noise` is given. `distance` is "l2" or "pseudo_huber" (`huber_c`: its c)."""
    if not isinstance(x_data, Tensor) or not x_data.is_floating_point() or x_data.dim() < 1 or not len(x_data):
        raise TypeError(f"x_data must be a floating-point torch.Tensor with a non-empty batch, got {describe(x_data)}")
    check_callable("student", student, "student(x, sigma) -> consistency function value", 2)
    check_callable("target", target, "target(x, sigma) -> consistency function value (the EMA student)", 2)
    if teacher_denoiser is not None:
        check_callable("teacher_denoiser", teacher_denoiser, "teacher_denoiser(x, sigma) -> x0 estimate, or None "
                       "for consistency training", 2)
    sigma_min = check_real("sigma_min", sigma_min, above=0)
    sigma_max = check_real("sigma_max", sigma_max, above=sigma_min)
    scales = check_count("scales", scales, minimum=2)
    rho = check_real("rho", rho, above=0)
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if huber_c is not None:
        huber_c = check_real("huber_c", huber_c, above=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")

    sigmas = karras_sigmas(scales, sigma_min, sigma_max, rho).flip(0)  # sigma_max first, as the paper's code
    n = torch.randint(scales - 1, (len(x_data),), generator=generator)
    if x_noise is None:
        x_noise = torch.randn(x_data.shape, generator=generator, dtype=x_data.dtype).to(x_data.device)
    elif not isinstance(x_noise, Tensor) or x_noise.shape != x_data.shape or not x_noise.is_floating_point():
        raise ValueError(f"x_noise must be a floating-point tensor of x_data's shape {tuple(x_data.shape)}, got "
                         f"{describe(x_noise)}")
    sigma, sigma_next = (s.to(x_data.device, x_data.dtype) for s in (sigmas[n], sigmas[n + 1]))
    view = (-1,) + (1,) * (x_data.dim() - 1)
    x_t = x_data + sigma.view(view) * x_noise
    prediction = _predict(student, x_t, sigma, "student")
    with torch.no_grad():
        if teacher_denoiser is None:  # CT: the unbiased estimator of Theorem 2, the same z at both sigmas
            x_next = x_data + sigma_next.view(view) * x_noise
        else:
            x_next = heun_step(teacher_denoiser, x_t, sigma, sigma_next)
        goal = _predict(target, x_next, sigma_next, "target")
    return consistency_distance(prediction, goal, distance, huber_c).mean()


def _predict(model: Callable[..., Tensor], x: Tensor, sigma: Tensor, name: str, **kwargs: Any) -> Tensor:
    """model(x, sigma), which must be a floating-point tensor of x's shape (a [B, 1] output would broadcast)."""
    out = model(x, sigma, **kwargs)
    if not isinstance(out, Tensor) or out.shape != x.shape or not out.is_floating_point():
        raise ValueError(f"{name} returned {describe(out)} for x of shape {tuple(x.shape)}; it must return a "
                         "floating-point tensor of x's shape")
    return out.to(x.dtype)
