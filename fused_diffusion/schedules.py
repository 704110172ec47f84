"""Noise schedules: n sampling steps -> n + 1 decreasing sigmas ending in 0 (EDM / k-diffusion convention).

Every function returns float32 sigmas on `device`, validated by `validate_sigmas`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import check_count, check_device, check_has_data, check_real, describe


def check_alphas_cumprod(alphas_cumprod: object, name: str = "alphas_cumprod") -> Tensor:
    """A DDPM training schedule: a 1-D floating tensor of at least 2 values in (0, 1), non-increasing. Checked on
    the host once (the adapters and DDIM read it at construction, never per call)."""
    if not isinstance(alphas_cumprod, Tensor):
        raise TypeError(f"{name} must be a 1-D floating-point torch.Tensor, got {describe(alphas_cumprod)}")
    if not alphas_cumprod.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {alphas_cumprod.dtype}")
    if alphas_cumprod.dim() != 1 or len(alphas_cumprod) < 2:
        raise ValueError(f"{name} must be a 1-D tensor of at least 2 values, got shape {tuple(alphas_cumprod.shape)}")
    check_has_data(name, alphas_cumprod)
    host = alphas_cumprod.detach().to("cpu", torch.float64)  # sync-ok: validated once, at construction
    outside = ~((host > 0) & (host < 1))  # NaN is outside too
    if outside.any():
        bad = int(outside.nonzero()[0])
        raise ValueError(f"{name}[{bad}] = {host[bad].item()} must be in (0, 1)")
    rises = host[1:] > host[:-1]
    if rises.any():
        bad = int(rises.nonzero()[0])
        raise ValueError(f"{name} must be non-increasing: {name}[{bad}] = {host[bad].item()} < "
                         f"{name}[{bad + 1}] = {host[bad + 1].item()}")
    return alphas_cumprod


def validate_sigmas(sigmas: Tensor) -> Tensor:
    """Checks a schedule: 1-D, at least two values, finite, decreasing, positive except that the last may be 0 (then
    the last step returns the denoised estimate; a schedule ending above 0 stops at that noise level, as k-diffusion's
    samplers do for a base -> refiner hand-off or AMED's schedules). A repeated sigma is a step of length 0, as in
    k-diffusion (the model is called, x does not move); multistep solvers refuse it where their coefficients would be
    NaN (solvers/base.py, check_tables_finite)."""
    if not isinstance(sigmas, Tensor):
        raise TypeError(f"sigmas must be a torch.Tensor, got {describe(sigmas)}")
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values, got shape {tuple(sigmas.shape)}")
    if not sigmas.is_floating_point():
        raise TypeError(f"sigmas must be floating point, got dtype {sigmas.dtype}")
    check_has_data("sigmas", sigmas)
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


FLOAT32_MAX = torch.finfo(torch.float32).max


def _check_range(n: object, sigma_min: object, sigma_max: object) -> tuple[int, float, float]:
    """(n, sigma_min, sigma_max) checked and as Python numbers (so a 0-dim tensor gives the float result)."""
    n = check_count("n", n)
    sigma_min, sigma_max = check_real("sigma_min", sigma_min), check_real("sigma_max", sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if sigma_max > FLOAT32_MAX:
        raise ValueError(f"sigma_max={sigma_max} overflows float32, the dtype schedules are made in")
    return n, sigma_min, sigma_max


def _check_eps_s(eps_s: object) -> float:
    """The VP schedules' smallest time: t runs from 1 down to eps_s."""
    return check_real("eps_s", eps_s, above=0, below=1)


def append_zero(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> Tensor:
    """Karras et al. (2022), eq. 5; identical to k-diffusion 0.1.1 (computed in float32 as it does)."""
    device = check_device(device)
    n, sigma_min, sigma_max = _check_range(n, sigma_min, sigma_max)
    rho = check_real("rho", rho, above=0)
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return validate_sigmas(append_zero(sigmas).to(device))


def get_sigmas_polynomial(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> Tensor:
    """AMED's 'polynomial' schedule: the Karras formula evaluated in float64, then stored as float32."""
    device = check_device(device)
    n, sigma_min, sigma_max = _check_range(n, sigma_min, sigma_max)
    rho = check_real("rho", rho, above=0)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return validate_sigmas(append_zero(sigmas).float().to(device))


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device="cpu") -> Tensor:
    """Uniform in log sigma, i.e. uniform in log-SNR (AMED's 'logsnr'); as k-diffusion 0.1.1."""
    device = check_device(device)
    n, sigma_min, sigma_max = _check_range(n, sigma_min, sigma_max)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return validate_sigmas(append_zero(sigmas).to(device))


get_sigmas_logsnr = get_sigmas_exponential


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device="cpu") -> Tensor:
    """Polynomial in log sigma: log sigma_i = log sigma_min + (1 - i/(n-1))^rho (log sigma_max - log sigma_min); as
    k-diffusion 0.1.1 (rho = 1 is the exponential schedule)."""
    device = check_device(device)
    n, sigma_min, sigma_max = _check_range(n, sigma_min, sigma_max)
    rho = check_real("rho", rho, above=0)  # rho <= 0 turns 0 ** rho into inf or a constant schedule
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return validate_sigmas(append_zero(sigmas).to(device))


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device="cpu") -> Tensor:
    """Song et al. (2021) VP-SDE sigmas at uniform times t in [1, eps_s]; as k-diffusion 0.1.1."""
    device = check_device(device)
    n, eps_s = check_count("n", n), _check_eps_s(eps_s)
    # beta(t) = beta_min + beta_d t >= 0, and not 0 throughout (then every sigma would be 0)
    beta_d, beta_min = check_real("beta_d", beta_d, at_least=0), check_real("beta_min", beta_min, at_least=0)
    if beta_d == beta_min == 0:
        raise ValueError("beta_d and beta_min must not both be 0 (every sigma would be 0)")
    t = torch.linspace(1, eps_s, n)
    sigmas = torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    if not torch.isfinite(sigmas[0]):
        raise ValueError(f"beta_d={beta_d}, beta_min={beta_min} give sigma(1) = sqrt(exp(beta_d / 2 + beta_min) - 1), "
                         "which overflows float32, the dtype schedules are made in")
    return validate_sigmas(append_zero(sigmas).to(device))


def get_sigmas_time_uniform(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, eps_s: float = 1e-3, device="cpu"
) -> Tensor:
    """AMED's 'time_uniform': a VP schedule fitted so sigma(1) = sigma_max and sigma(eps_s) = sigma_min,
    sampled at t_i = (1 + i/(n-1) (eps_s^(1/rho) - 1))^rho (uniform in t for rho = 1)."""
    device = check_device(device)
    n, sigma_min, sigma_max = _check_range(n, sigma_min, sigma_max)
    rho, eps_s = check_real("rho", rho, above=0), _check_eps_s(eps_s)
    log_max, log_min = math.log(sigma_max**2 + 1), math.log(sigma_min**2 + 1)
    beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
    beta_min = log_max - 0.5 * beta_d
    if min(beta_min + beta_d * eps_s, beta_min + beta_d) <= 0:  # beta(t) <= 0 somewhere: sigma(t) not increasing
        raise ValueError(f"no VP schedule rises from sigma_min={sigma_min} at t=eps_s={eps_s} to sigma_max={sigma_max} "
                         "at t=1 with beta(t) > 0; use a smaller sigma_min or a larger eps_s")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    t = (1 + ramp * (eps_s ** (1 / rho) - 1)) ** rho
    sigmas = torch.sqrt(torch.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)
    return validate_sigmas(append_zero(sigmas).float().to(device))


def ddpm_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, beta_schedule: str = "linear"
) -> Tensor:
    """alphas_cumprod of a DDPM training schedule, as diffusers builds it ('linear' or 'scaled_linear')."""
    num_train_timesteps = check_count("num_train_timesteps", num_train_timesteps, minimum=2)
    beta_start = check_real("beta_start", beta_start, above=0, below=1)
    beta_end = check_real("beta_end", beta_end, above=0, below=1)
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {beta_schedule!r}")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if alphas_cumprod[-1] <= 0:  # sync-ok: a CPU tensor, built once
        bad = int((alphas_cumprod <= 0).nonzero()[0])
        raise ValueError(f"num_train_timesteps={num_train_timesteps}, beta_start={beta_start} and beta_end={beta_end} "
                         f"make alphas_cumprod underflow to 0 in float32 at timestep {bad}")
    return alphas_cumprod


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """The training sigmas of a DDPM, sigma_t = sqrt((1 - abar_t) / abar_t), in timestep order (increasing)."""
    ac = check_alphas_cumprod(alphas_cumprod).to(torch.float64)
    return ((1 - ac) / ac).sqrt()


def get_sigmas_discrete(n: int, alphas_cumprod: Tensor, device="cpu") -> Tensor:
    """n sigmas of a DDPM at timesteps uniform in [T-1, 0], log-sigma interpolated (k-diffusion's
    DiscreteSchedule.get_sigmas), then 0."""
    device = check_device(device)
    n = check_count("n", n)
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).log()
    t = torch.linspace(len(log_sigmas) - 1, 0, n, dtype=torch.float64)
    low = t.floor().long()
    high = t.ceil().long()
    w = t.frac()
    sigmas = ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
    return validate_sigmas(append_zero(sigmas).float().to(device))


def get_flow_times(n: int, device="cpu") -> Tensor:
    """The uniform flow grid t_0 = 0 (noise) < ... < t_n = 1 (data) used by rectified-flow and shortcut models."""
    device = check_device(device)
    n = check_count("n", n)
    return torch.linspace(0, 1, n + 1, dtype=torch.float64).float().to(device)


def img2img_schedule(schedule: Tensor, strength: float) -> Tensor:
    """The part of an n-step schedule (sigmas ending at 0, or DDIM's n timesteps) that img2img with `strength`
    runs: its last int(n * strength) steps, diffusers' img2img rule (get_timesteps). strength 1 is the whole
    schedule; a strength that leaves no step is refused."""
    strength = check_real("strength", strength)
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    is_timesteps = not schedule.is_floating_point()
    steps = len(schedule) if is_timesteps else len(schedule) - 1
    kept = min(int(steps * strength), steps)
    if kept == 0:
        raise ValueError(f"strength={strength} of {steps} steps runs int({steps} * {strength}) = 0 steps; use a "
                         f"strength of at least {1 / steps:.4g}")
    return schedule[steps - kept:]


def img2img(image: Tensor, noise: Tensor, sigmas: Tensor, strength: float) -> tuple[Tensor, Tensor]:
    """The start of an img2img run for any sampler: (x, sigmas[k:]) with the last int(n * strength) of the n steps
    (diffusers' img2img rule) and x = image + noise * sigmas[k], the image noised to where they begin.

    >>> x, tail = fd.img2img(image, torch.randn_like(image), sigmas, strength=0.6)
    >>> edited = fd.sample_dpmpp_2m(denoiser, x, tail)
    """
    tail = img2img_schedule(validate_sigmas(sigmas), strength)
    for name, value in (("image", image), ("noise", noise)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {describe(value)}")
    if image.shape != noise.shape:
        raise ValueError(f"image and noise must have one shape, got {tuple(image.shape)} and {tuple(noise.shape)}")
    if image.device != noise.device:
        raise ValueError(f"image and noise must be on one device, got {image.device} and {noise.device}")
    for name, value in (("image", image), ("noise", noise)):
        check_has_data(name, value)
        if not torch.isfinite(value).all():  # sync-ok: once, before sampling
            raise ValueError(f"{name} contains NaN or inf")
    return image + noise * tail[0].to(image.device, image.dtype), tail
