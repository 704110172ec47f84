"""Noise schedules: n sampling steps -> n + 1 decreasing sigmas ending in 0 (EDM / k-diffusion convention).

Every function returns float32 sigmas on `device`, validated by `validate_sigmas`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def validate_sigmas(sigmas: Tensor) -> Tensor:
    """Checks a schedule: 1-D, at least two values, finite, decreasing, positive except that the last may be 0 (then
    the last step returns the denoised estimate; a schedule ending above 0 stops at that noise level, as k-diffusion's
    samplers do for a base -> refiner hand-off or AMED's schedules). A repeated sigma is a step of length 0, as in
    k-diffusion (the model is called, x does not move); multistep solvers refuse it where their coefficients would be
    NaN (solvers/base.py, check_tables_finite)."""
    if not isinstance(sigmas, Tensor) or sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values, got {getattr(sigmas, 'shape', sigmas)!r}")
    if not sigmas.is_floating_point():
        raise TypeError(f"sigmas must be floating point, got dtype {sigmas.dtype}")
    host = sigmas.detach().to("cpu", torch.float64)  # sync-ok: schedules are validated once, before a loop
    if not torch.isfinite(host).all():
        bad = int((~torch.isfinite(host)).nonzero()[0])
        raise ValueError(f"sigmas[{bad}] = {host[bad].item()} is not finite")
    if host[-1] < 0:
        raise ValueError(f"sigmas[{len(host) - 1}] = {host[-1].item()} must be >= 0")
    if (host[:-1] <= 0).any():
        bad = int((host[:-1] <= 0).nonzero()[0])
        raise ValueError(f"sigmas[{bad}] = {host[bad].item()} must be > 0 (only the last sigma may be 0)")
    steps = host[1:] - host[:-1]
    if (steps > 0).any():
        bad = int((steps > 0).nonzero()[0])
        raise ValueError(
            f"sigmas must be decreasing: sigmas[{bad}] = {host[bad].item()} < sigmas[{bad + 1}] = {host[bad + 1].item()}"
        )
    return sigmas


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def append_zero(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> Tensor:
    """Karras et al. (2022), eq. 5; identical to k-diffusion 0.1.1 (computed in float32 as it does)."""
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return validate_sigmas(append_zero(sigmas).to(device))


def get_sigmas_polynomial(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> Tensor:
    """AMED's 'polynomial' schedule: the Karras formula evaluated in float64, then stored as float32."""
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return validate_sigmas(append_zero(sigmas).float().to(device))


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device="cpu") -> Tensor:
    """Uniform in log sigma, i.e. uniform in log-SNR (AMED's 'logsnr'); as k-diffusion 0.1.1."""
    _check_range(n, sigma_min, sigma_max)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return validate_sigmas(append_zero(sigmas).to(device))


get_sigmas_logsnr = get_sigmas_exponential


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device="cpu") -> Tensor:
    """Polynomial in log sigma: log sigma_i = log sigma_min + (1 - i/(n-1))^rho (log sigma_max - log sigma_min); as
    k-diffusion 0.1.1 (rho = 1 is the exponential schedule)."""
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return validate_sigmas(append_zero(sigmas).to(device))


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device="cpu") -> Tensor:
    """Song et al. (2021) VP-SDE sigmas at uniform times t in [1, eps_s]; as k-diffusion 0.1.1."""
    if n < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    t = torch.linspace(1, eps_s, n)
    sigmas = torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    return validate_sigmas(append_zero(sigmas).to(device))


def get_sigmas_time_uniform(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, eps_s: float = 1e-3, device="cpu"
) -> Tensor:
    """AMED's 'time_uniform': a VP schedule fitted so sigma(1) = sigma_max and sigma(eps_s) = sigma_min,
    sampled at t_i = (1 + i/(n-1) (eps_s^(1/rho) - 1))^rho (uniform in t for rho = 1)."""
    _check_range(n, sigma_min, sigma_max)
    log_max, log_min = math.log(sigma_max**2 + 1), math.log(sigma_min**2 + 1)
    beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
    beta_min = log_max - 0.5 * beta_d
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    t = (1 + ramp * (eps_s ** (1 / rho) - 1)) ** rho
    sigmas = torch.sqrt(torch.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)
    return validate_sigmas(append_zero(sigmas).float().to(device))


def ddpm_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, beta_schedule: str = "linear"
) -> Tensor:
    """alphas_cumprod of a DDPM training schedule, as diffusers builds it ('linear' or 'scaled_linear')."""
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """The training sigmas of a DDPM, sigma_t = sqrt((1 - abar_t) / abar_t), in timestep order (increasing)."""
    ac = alphas_cumprod.to(torch.float64)
    if ac.dim() != 1 or not ((ac > 0) & (ac < 1)).all():
        raise ValueError("alphas_cumprod must be a 1-D tensor with values in (0, 1)")
    return ((1 - ac) / ac).sqrt()


def get_sigmas_discrete(n: int, alphas_cumprod: Tensor, device="cpu") -> Tensor:
    """n sigmas of a DDPM at timesteps uniform in [T-1, 0], log-sigma interpolated (k-diffusion's
    DiscreteSchedule.get_sigmas), then 0."""
    if n < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).log()
    t = torch.linspace(len(log_sigmas) - 1, 0, n, dtype=torch.float64)
    low = t.floor().long()
    high = t.ceil().long()
    w = t.frac()
    sigmas = ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
    return validate_sigmas(append_zero(sigmas).float().to(device))


def get_flow_times(n: int, device="cpu") -> Tensor:
    """The uniform flow grid t_0 = 0 (noise) < ... < t_n = 1 (data) used by rectified-flow and shortcut models."""
    if n < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    return torch.linspace(0, 1, n + 1, dtype=torch.float64).float().to(device)
