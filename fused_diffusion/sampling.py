"""k-diffusion-compatible sampling functions (same signatures and results as k-diffusion 0.1.1), plus DDIM
(diffusers' DDIMScheduler loop), AMED, iPNDM, shortcut and consistency sampling, all over the shared solver loop.

model(x, sigma[B], **extra_args) -> x0 estimate; x is the initial noise already scaled by sigmas[0].
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from . import solvers
from .schedules import get_flow_times
from .solvers.run import Callback, NoiseSampler

Model = Callable[..., Any]


def sample_euler(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Euler, with EDM's optional churn (k-diffusion's sample_euler)."""
    solver = solvers.Euler(s_churn, s_tmin, s_tmax, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable)


def sample_euler_ancestral(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                           callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Ancestral Euler (k-diffusion's sample_euler_ancestral)."""
    solver = solvers.EulerAncestral(eta, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler)


def sample_heun(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Heun's method, EDM Algorithm 2 (k-diffusion's sample_heun)."""
    solver = solvers.Heun(s_churn, s_tmin, s_tmax, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable)


def sample_dpm_2(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-2 with the geometric-mean midpoint (k-diffusion's sample_dpm_2)."""
    solver = solvers.DPM2(s_churn, s_tmin, s_tmax, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable)


def sample_dpmpp_2m(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """DPM-Solver++(2M) (k-diffusion's sample_dpmpp_2m)."""
    return solvers.sample(solvers.DPMpp2M(), model, x, sigmas, extra_args, callback, disable)


def sample_amed(model: Model, x: Tensor, sigmas: Tensor, predictor: solvers.amed.Predictor | None = None,
                afs: bool = True, scale_dir: float = 1.0, scale_time: float = 1.0, denoise_to_zero: bool = False,
                extra_args: dict | None = None, callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """AMED-Solver; predictor=None uses r = 1/2. See solvers/amed.py for the predictor protocol.

    As the AMED code, a schedule may end above 0 (at sigma_min): each interval is one AMED step (two model calls,
    one with AFS on the first); `denoise_to_zero=True` then adds one call returning D(x, sigma_min). A schedule
    ending in 0 already ends with that denoise."""
    if denoise_to_zero:
        if sigmas[-1] == 0:  # sync-ok: once, before the loop
            raise ValueError("denoise_to_zero=True needs sigmas ending above 0; these end at 0, whose last step "
                             "already returns the denoised estimate")
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    solver = solvers.AMED(predictor, afs, scale_dir, scale_time)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable)


def sample_ipndm(model: Model, x: Tensor, sigmas: Tensor, max_order: int = 4, afs: bool = False,
                 predictor: solvers.amed.Predictor | None = None, scale_dir: float = 1.0, scale_time: float = 1.0,
                 extra_args: dict | None = None, callback: Callback | None = None,
                 disable: bool | None = None) -> Tensor:
    """iPNDM, the improved PNDM of Zhang & Chen 2023 ("Fast Sampling of Diffusion Models with Exponential
    Integrator", DEIS): Adams-Bashforth of order up to `max_order` (1..4) on dx/dsigma, lower orders while the
    history fills; one model call per step (none on the first with `afs`, the analytic first step).

    With a `predictor` (solvers/amed.py's protocol) it is the AMED-Plugin on iPNDM (Zhou et al. 2024, "Fast
    ODE-based Sampling for Diffusion Models in Around 5 Steps"): a predicted intermediate sigma per step, two model
    calls per step, as `ipndm_sampler` in zju-pi/diff-sampler. A schedule may end at 0 (the last step is the plain
    multistep step to 0) or above 0. See solvers/ipndm.py."""
    solver = solvers.IPNDM(max_order, afs, predictor, scale_dir, scale_time)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable)


def sample_ddim(eps_model: Model, x: Tensor, alphas_cumprod: Tensor, steps: int, eta: float = 0.0,
                timestep_spacing: str = "leading", steps_offset: int = 0, set_alpha_to_one: bool = True,
                clip_sample: bool = False, clip_sample_range: float = 1.0, generator: torch.Generator | None = None,
                extra_args: dict | None = None, callback: Callback | None = None,
                disable: bool | None = None) -> Tensor:
    """The result of looping diffusers' DDIMScheduler configured with the same values; eps_model(x, t[B]) with
    integer timesteps, x the unit-variance initial noise. The callback dict has 'x', 'i', 'timestep' and
    'denoised' (the predicted x0)."""
    solver = solvers.DDIM(alphas_cumprod, eta, set_alpha_to_one, clip_sample, clip_sample_range)
    timesteps = solvers.ddim_timesteps(len(alphas_cumprod), steps, timestep_spacing, steps_offset)
    return solvers.sample(solver, eps_model, x, timesteps, extra_args, callback, disable, generator=generator)


def sample_shortcut(velocity_model: Model, x: Tensor, steps: int, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """Shortcut-model sampling, velocity_model(x, t[B], d[B]); steps a power of two from 1 to 128. The callback
    dict has 'x', 'i', 't' and 'denoised' (the data estimate x + (1 - t) v)."""
    if steps not in {2**k for k in range(8)}:
        raise ValueError(f"shortcut models are trained for steps = 1, 2, 4, ..., 128; got {steps}")
    times = get_flow_times(steps, device=x.device)
    return solvers.sample(solvers.Shortcut(), velocity_model, x, times, extra_args, callback, disable)


def sample_consistency(model: Model, x: Tensor, sigmas: Tensor, sigma_min: float = 0.002,
                       extra_args: dict | None = None, callback: Callback | None = None, disable: bool | None = None,
                       noise_sampler: NoiseSampler | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Multistep consistency sampling: denoise at each sigma, re-noise to the next."""
    solver = solvers.Consistency(sigma_min)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler, generator)
