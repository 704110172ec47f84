"""k-diffusion-compatible sampling functions (same signatures and results as k-diffusion 0.1.1, all 13 of its
samplers), plus DDIM (diffusers' DDIMScheduler loop), AMED, iPNDM, shortcut, consistency and phased consistency
(PCM) sampling, all over the
shared solver loop.

model(x, sigma[B], **extra_args) -> x0 estimate; x is the initial noise already scaled by sigmas[0].

Random numbers: these functions draw from the global generator exactly where k-diffusion 0.1.1 does, including the
draws whose values it never uses (Euler, Heun and DPM-2 draw churn noise on every step, churn or not; the ancestral
and SDE samplers draw with eta = 0), so a seeded script sampling several batches reproduces k-diffusion image for
image. `k_diffusion_rng=False` skips the unused draws (as `fd.Sampler` always does). Schedules may repeat a sigma, as
in k-diffusion (a step of length 0); where k-diffusion's coefficients would be NaN (multistep solvers after a repeated
sigma, a Brownian increment over an empty interval) the call raises instead.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from . import solvers
from .noise import BrownianTreeNoiseSampler
from .schedules import get_flow_times, validate_sigmas
from .checks import check_count
from .shortcut import check_step_model
from .solvers.dpm_solver import sample_dpm_adaptive, sigma_range
from .solvers.run import Callback, NoiseSampler
from .solvers.unipc import UniPC

Model = Callable[..., Any]


def sample_euler(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 k_diffusion_rng: bool = True) -> Tensor:
    """Euler, with EDM's optional churn (k-diffusion's sample_euler)."""
    solver = solvers.Euler(s_churn, s_tmin, s_tmax, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, k_diffusion_rng=k_diffusion_rng)


def sample_euler_ancestral(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                           callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                           k_diffusion_rng: bool = True) -> Tensor:
    """Ancestral Euler (k-diffusion's sample_euler_ancestral)."""
    solver = solvers.EulerAncestral(eta, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler,
                          k_diffusion_rng=k_diffusion_rng)


def sample_heun(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                k_diffusion_rng: bool = True) -> Tensor:
    """Heun's method, EDM Algorithm 2 (k-diffusion's sample_heun)."""
    solver = solvers.Heun(s_churn, s_tmin, s_tmax, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, k_diffusion_rng=k_diffusion_rng)


def sample_dpm_2(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 k_diffusion_rng: bool = True) -> Tensor:
    """DPM-Solver-2 with the geometric-mean midpoint (k-diffusion's sample_dpm_2)."""
    solver = solvers.DPM2(s_churn, s_tmin, s_tmax, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, k_diffusion_rng=k_diffusion_rng)


def sample_dpm_2_ancestral(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                           callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                           k_diffusion_rng: bool = True) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 steps (k-diffusion's sample_dpm_2_ancestral)."""
    solver = solvers.DPM2Ancestral(eta, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler,
                          k_diffusion_rng=k_diffusion_rng)


def sample_lms(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
               callback: Callback | None = None, disable: bool | None = None, order: int = 4) -> Tensor:
    """Linear multistep of order up to `order` (1 to 5) on dx/dsigma (k-diffusion's sample_lms); the Lagrange weights
    are integrated on the host once per schedule."""
    return solvers.sample(solvers.LMS(order), model, x, sigmas, extra_args, callback, disable)


def sample_dpm_fast(model: Model, x: Tensor, sigma_min: float, sigma_max: float, n: int,
                    extra_args: dict | None = None, callback: Callback | None = None, disable: bool | None = None,
                    eta: float = 0.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                    k_diffusion_rng: bool = True) -> Tensor:
    """DPM-Solver-fast: `n` model calls on a grid uniform in log sigma from sigma_max to sigma_min (k-diffusion's
    sample_dpm_fast); the result is at sigma_min (no final denoise). Graph mode: fd.Sampler(model, "dpm_fast",
    torch.tensor([sigma_max, sigma_min]), nfe=n)."""
    solvers.check_input(x)
    solver = solvers.DPMFast(check_count("n", n), eta, s_noise)
    schedule = sigma_range(sigma_min, sigma_max).to(x.device)  # k-diffusion's float32
    return solvers.sample(solver, model, x, schedule, extra_args, callback, disable, noise_sampler,
                          k_diffusion_rng=k_diffusion_rng)


def sample_dpmpp_2s_ancestral(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                              callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                              s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                              k_diffusion_rng: bool = True) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps (k-diffusion's sample_dpmpp_2s_ancestral)."""
    solver = solvers.DPMpp2SAncestral(eta, s_noise)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler,
                          k_diffusion_rng=k_diffusion_rng)


def _brownian_default(x: Tensor, sigmas: Tensor, noise_sampler: NoiseSampler | None, needed: bool) -> NoiseSampler | None:
    """k-diffusion's default noise for its SDE samplers: a Brownian tree over the schedule's range (its seed is one
    draw from the global generator). `needed` False (eta = 0 with k_diffusion_rng off) skips building it, as does a
    schedule with no step between two distinct positive sigmas (only such a step adds noise; the tree needs a range)."""
    solvers.check_input(x)
    validate_sigmas(sigmas)
    noisy_steps = (sigmas[1:] > 0) & (sigmas[1:] < sigmas[:-1])
    if noise_sampler is not None or not needed or not noisy_steps.any():  # sync-ok: once, before the loop
        return noise_sampler
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max())


def sample_dpmpp_sde(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                     callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                     s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, r: float = 1 / 2,
                     k_diffusion_rng: bool = True) -> Tensor:
    """Stochastic DPM-Solver++ with an intermediate point at ratio r (k-diffusion's sample_dpmpp_sde); Brownian-tree
    noise by default (needs torchsde)."""
    solver = solvers.DPMppSDE(eta, s_noise, r)
    noise_sampler = _brownian_default(x, sigmas, noise_sampler, bool(eta) or k_diffusion_rng)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler,
                          k_diffusion_rng=k_diffusion_rng)


def sample_dpmpp_2m(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """DPM-Solver++(2M) (k-diffusion's sample_dpmpp_2m)."""
    return solvers.sample(solvers.DPMpp2M(), model, x, sigmas, extra_args, callback, disable)


def sample_dpmpp_2m_sde(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                        solver_type: str = "midpoint", k_diffusion_rng: bool = True) -> Tensor:
    """DPM-Solver++(2M) SDE, 'midpoint' or 'heun' correction (k-diffusion's sample_dpmpp_2m_sde); Brownian-tree
    noise by default (needs torchsde)."""
    solver = solvers.DPMpp2MSDE(eta, s_noise, solver_type)
    noise_sampler = _brownian_default(x, sigmas, noise_sampler, bool(eta) or k_diffusion_rng)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler,
                          k_diffusion_rng=k_diffusion_rng)


def sample_dpmpp_3m_sde(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                        k_diffusion_rng: bool = True) -> Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion's sample_dpmpp_3m_sde); Brownian-tree noise by default (needs torchsde)."""
    solver = solvers.DPMpp3MSDE(eta, s_noise)
    noise_sampler = _brownian_default(x, sigmas, noise_sampler, bool(eta) or k_diffusion_rng)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler,
                          k_diffusion_rng=k_diffusion_rng)


def sample_amed(model: Model, x: Tensor, sigmas: Tensor, predictor: solvers.amed_sampler.Predictor | None = None,
                afs: bool = True, scale_dir: float = 1.0, scale_time: float = 1.0, denoise_to_zero: bool = False,
                extra_args: dict | None = None, callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """AMED-Solver; predictor=None uses r = 1/2. See solvers/amed_sampler.py for the predictor protocol.

    As the AMED code, a schedule may end above 0 (at sigma_min): each interval is one AMED step (two model calls,
    one with AFS on the first); `denoise_to_zero=True` then adds one call returning D(x, sigma_min). A schedule
    ending in 0 already ends with that denoise."""
    if denoise_to_zero:
        validate_sigmas(sigmas)
        if sigmas[-1] == 0:  # sync-ok: once, before the loop
            raise ValueError("denoise_to_zero=True needs sigmas ending above 0; these end at 0, whose last step "
                             "already returns the denoised estimate")
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    solver = solvers.AMED(predictor, afs, scale_dir, scale_time)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable)


def sample_ipndm(model: Model, x: Tensor, sigmas: Tensor, max_order: int = 4, afs: bool = False,
                 predictor: solvers.amed_sampler.Predictor | None = None, scale_dir: float = 1.0, scale_time: float = 1.0,
                 extra_args: dict | None = None, callback: Callback | None = None,
                 disable: bool | None = None) -> Tensor:
    """iPNDM, the improved PNDM of Zhang & Chen 2023 ("Fast Sampling of Diffusion Models with Exponential
    Integrator", DEIS): Adams-Bashforth of order up to `max_order` (1..4) on dx/dsigma, lower orders while the
    history fills; one model call per step (none on the first with `afs`, the analytic first step).

    With a `predictor` (solvers/amed_sampler.py's protocol) it is the AMED-Plugin on iPNDM (Zhou et al. 2024, "Fast
    ODE-based Sampling for Diffusion Models in Around 5 Steps"): a predicted intermediate sigma per step, two model
    calls per step, as `ipndm_sampler` in zju-pi/diff-sampler. A schedule may end at 0 (the last step is the plain
    multistep step to 0) or above 0. See solvers/ipndm.py."""
    solver = solvers.IPNDM(max_order, afs, predictor, scale_dir, scale_time)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable)


def sample_unipc(model: Model, x: Tensor, sigmas: Tensor, order: int = 2, variant: str = "bh2", corrector: bool = True,
                 disable_corrector: tuple[int, ...] = (), lower_order_final: bool = True, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """UniPC (Zhao et al. 2023) with data prediction: the predictor UniP-`order` (1..3) and the corrector UniC,
    B(h) `variant` "bh1" or "bh2", as diffusers' UniPCMultistepScheduler (predict_x0=True) on the same sigmas; one
    model call per step. `disable_corrector` lists the steps whose predicted point is left uncorrected (diffusers'
    meaning), `corrector=False` all of them. A schedule ending at 0 returns the last denoised estimate. See
    solvers/unipc.py."""
    solver = UniPC(order, variant, corrector, disable_corrector, lower_order_final)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable)


def sample_ddim(eps_model: Model, x: Tensor, alphas_cumprod: Tensor, steps: int, eta: float = 0.0,
                timestep_spacing: str = "leading", steps_offset: int = 0, set_alpha_to_one: bool = True,
                clip_sample: bool = True, clip_sample_range: float = 1.0, generator: torch.Generator | None = None,
                extra_args: dict | None = None, callback: Callback | None = None,
                disable: bool | None = None) -> Tensor:
    """The result of looping diffusers' DDIMScheduler configured with the same values (the defaults are
    DDIMScheduler's, clip_sample=True included: pass clip_sample=False for latents or data outside
    [-clip_sample_range, clip_sample_range]); eps_model(x, t[B]) with integer timesteps, x the unit-variance initial
    noise. The callback dict has 'x', 'i', 'timestep' and
    'denoised' (the predicted x0)."""
    solver = solvers.DDIM(alphas_cumprod, eta, set_alpha_to_one, clip_sample, clip_sample_range)
    timesteps = solvers.ddim_timesteps(len(alphas_cumprod), steps, timestep_spacing, steps_offset)
    return solvers.sample(solver, eps_model, x, timesteps, extra_args, callback, disable, generator=generator)


def sample_shortcut(velocity_model: Model, x: Tensor, steps: int, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    """Shortcut-model sampling, velocity_model(x, t[B], d[B]); steps a power of two from 1 to 128. The callback
    dict has 'x', 'i', 't' and 'denoised' (the data estimate x + (1 - t) v)."""
    solvers.check_input(x)
    check_step_model(velocity_model, "velocity_model")
    if check_count("steps", steps) not in {2**k for k in range(8)}:
        raise ValueError(f"shortcut models are trained for steps = 1, 2, 4, ..., 128; got {steps}")
    times = get_flow_times(steps, device=x.device)
    return solvers.sample(solvers.Shortcut(), velocity_model, x, times, extra_args, callback, disable)


def sample_consistency(model: Model, x: Tensor, sigmas: Tensor, sigma_min: float = 0.002,
                       extra_args: dict | None = None, callback: Callback | None = None, disable: bool | None = None,
                       noise_sampler: NoiseSampler | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Multistep consistency sampling: denoise at each sigma, re-noise to the next."""
    solver = solvers.Consistency(sigma_min)
    return solvers.sample(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler, generator)


def sample_pcm(eps_model: Model, x: Tensor, alphas_cumprod: Tensor, phases: int, steps: int | None = None,
               extra_args: dict | None = None, callback: Callback | None = None,
               disable: bool | None = None) -> Tensor:
    """Deterministic phased sampling of a Phased Consistency Model with `phases` phases (Wang et al. 2024):
    eps_model(x, t[B]) on a DDPM with `alphas_cumprod`, x the unit-variance initial noise; `steps` (default one
    per phase) a multiple of phases (each phase cut into equal parts) or a divisor of it. The callback dict has 'x',
    'i', 'timestep' and 'denoised' (the predicted x0). See solvers/pcm_sampler.py."""
    solver = solvers.PCM(alphas_cumprod)
    timesteps = solvers.pcm_timesteps(phases, phases if steps is None else steps, len(solver.alphas_cumprod))
    return solvers.sample(solver, eps_model, x, timesteps, extra_args, callback, disable)
