"""diffusers schedulers, read exactly: `from_diffusers(scheduler, steps)` turns a scheduler's configuration into this
library's solver, schedule, initial-noise scale and timestep mapping, so that sampling an epsilon model with them
gives what looping that scheduler gives, with no setting left to guess.

Supported: DDIMScheduler (the "ddim" solver on its integer timesteps), EulerDiscreteScheduler ("euler"),
HeunDiscreteScheduler ("heun") and DPMSolverMultistepScheduler in its DPM-Solver++(2M) configuration ("dpmpp_2m"),
epsilon prediction. Anything else in the configuration that changes the result is refused by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..engine import Sampler
from ..models import EpsDenoiser
from ..schedules import check_count, check_real, describe
from ..solvers import DDIM, get_solver, run

# scheduler class name -> (fd solver, the configuration values fd's solver reproduces)
SUPPORTED: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIMScheduler": ("ddim", {"prediction_type": "epsilon", "thresholding": False, "rescale_betas_zero_snr": False}),
    "EulerDiscreteScheduler": ("euler", {"prediction_type": "epsilon", "rescale_betas_zero_snr": False,
                                         "timestep_type": "discrete", "final_sigmas_type": "zero"}),
    "HeunDiscreteScheduler": ("heun", {"prediction_type": "epsilon", "clip_sample": False}),
    "DPMSolverMultistepScheduler": ("dpmpp_2m", {
        "prediction_type": "epsilon", "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
        "thresholding": False, "final_sigmas_type": "zero", "euler_at_final": False, "use_lu_lambdas": False,
        "variance_type": None, "rescale_betas_zero_snr": False}),
}


@dataclass(frozen=True)
class DiffusersSchedule:
    """What a diffusers scheduler's configuration means for `steps` steps, in this library's terms.

    solver / solver_options: the fd solver that makes the scheduler's updates; schedule: its sigmas (ending at 0),
    or DDIM's integer timesteps; init_noise_sigma: the factor for unit Gaussian noise that gives the scheduler's
    starting point in the solver's space (√(1 + σ₀²) for DPM-Solver++, whose space is the scheduler's times
    √(1 + σ²)); timesteps: the timestep the scheduler gives the model at each call; alphas_cumprod: the training
    schedule. `denoiser(eps_model)` wraps a model with exactly that timestep mapping; `sample` / `sampler` run it.
    """

    solver: str
    solver_options: dict[str, Any]
    schedule: Tensor
    init_noise_sigma: float
    timesteps: Tensor
    alphas_cumprod: Tensor
    scheduler: str = field(default="")

    def denoiser(self, eps_model: Callable[..., Any]) -> Callable[..., Any]:
        """The model as the solver calls it: an EpsDenoiser whose schedule sigmas map to the scheduler's timesteps
        (DDIM: the epsilon model itself, called with integer timesteps)."""
        if self.solver == "ddim":
            return eps_model
        calls = len(self.timesteps)
        # the sigma the scheduler pairs with each model call: the schedule itself, Heun's repeated inside
        sigmas = self.schedule[:-1] if calls == len(self.schedule) - 1 else _heun_call_sigmas(self.schedule)
        return EpsDenoiser(eps_model, self.alphas_cumprod, timestep_table=(sigmas, self.timesteps))

    def sample(self, eps_model: Callable[..., Any], noise: Tensor, *, image: Tensor | None = None,
               strength: float = 1.0, extra_args: dict | None = None, callback: run.Callback | None = None,
               generator: torch.Generator | None = None, disable: bool | None = None) -> Tensor:
        """Samples from unit Gaussian `noise` as the scheduler's own loop would (eagerly). With `image`, img2img as
        diffusers' img2img pipelines do it: of the n steps the last int(n * strength) run, from the image noised by
        the scheduler's add_noise to the first of them."""
        schedule = self.schedule.to(noise.device)
        x = noise * self.init_noise_sigma
        solver = get_solver(self.solver, **self.solver_options)
        if image is not None:
            schedule = img2img_schedule(schedule, strength)
            if self.solver == "ddim":  # the tail's steps still stride by the whole run's T // n
                solver = DDIM(**self.solver_options, grid_steps=len(self.schedule))
            if not isinstance(image, Tensor) or image.shape != noise.shape:
                raise ValueError(f"image must be a tensor of the noise's shape {tuple(noise.shape)}, got "
                                 f"{describe(image)}")
            if self.solver == "ddim":  # variance preserving: sqrt(abar) image + sqrt(1 - abar) noise
                abar = self.alphas_cumprod[int(schedule[0])]
                x = image * abar.sqrt().item() + noise * (1 - abar).sqrt().item()
            else:
                x = image + noise * schedule[0]
        elif strength != 1.0:
            raise ValueError(f"strength={strength} needs an image to start from (image=None)")
        return run.sample(solver, self.denoiser(eps_model), x, schedule,
                          extra_args, callback, disable, generator=generator, k_diffusion_rng=False)

    def sampler(self, eps_model: Callable[..., Any], device: str | torch.device = "cpu", **options: Any) -> Sampler:
        """An fd.Sampler (one CUDA graph on a GPU) for this schedule; call it with noise * init_noise_sigma."""
        return Sampler(self.denoiser(eps_model), self.solver, self.schedule.to(device), **self.solver_options,
                       **options)


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


def _heun_call_sigmas(schedule: Tensor) -> Tensor:
    """Heun's 2n - 1 model calls for n steps to 0: sigma_0, then each later nonzero sigma twice (the end of one step,
    the start of the next)."""
    return torch.cat([schedule[:1], schedule[1:-1].repeat_interleave(2)])


def from_diffusers(scheduler: Any, steps: int, **step_options: Any) -> DiffusersSchedule:
    """`scheduler`'s configuration for `steps` inference steps as an fd solver, schedule, initial-noise scale and
    timestep mapping (the scheduler itself is not modified). `step_options`: what its `step` would be given, for
    DDIM `eta` (default 0, as DDIMScheduler.step).

    >>> setup = fd.from_diffusers(pipe.scheduler, 20)
    >>> images = setup.sample(pipe.unet, torch.randn(1, 4, 64, 64))   # = the pipeline's own loop
    """
    name = type(scheduler).__name__
    if name not in SUPPORTED or not hasattr(scheduler, "config"):
        raise TypeError(f"scheduler must be one of diffusers' {', '.join(SUPPORTED)}, got {describe(scheduler)}")
    steps = check_count("steps", steps)
    solver, required = SUPPORTED[name]
    config = scheduler.config
    for key, value in required.items():
        if key in config and config[key] != value:
            raise ValueError(f"{name} with {key}={config[key]!r} is not supported; from_diffusers reproduces "
                             f"{key}={value!r}")
    allowed = {"eta"} if solver == "ddim" else set()
    if unknown := set(step_options) - allowed:
        raise TypeError(f"step options {sorted(unknown)} are not taken for {name}; it takes {sorted(allowed) or 'none'}")
    fresh = type(scheduler).from_config(config)  # set_timesteps mutates: the caller's scheduler stays as it was
    fresh.set_timesteps(steps, device="cpu")
    alphas_cumprod = fresh.alphas_cumprod.detach().to("cpu", torch.float64)
    timesteps = fresh.timesteps.detach().to("cpu")
    if solver == "ddim":
        options = {"alphas_cumprod": alphas_cumprod, "eta": step_options.get("eta", 0.0),
                   "set_alpha_to_one": config.set_alpha_to_one, "clip_sample": config.clip_sample,
                   "clip_sample_range": config.clip_sample_range}
        DDIM(**options)  # validates eta and the rest now, not at the first call
        return DiffusersSchedule(solver, options, timesteps.long(), 1.0, timesteps.long(), alphas_cumprod, name)
    sigmas = fresh.sigmas.detach().to("cpu", torch.float32)
    schedule = sigmas if solver != "heun" else torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    # DPM-Solver++ works on x / sqrt(1 + sigma^2) with unit initial noise; Euler and Heun on x itself, scaled by the
    # scheduler's own init_noise_sigma
    noise_scale = float((schedule[0].double() ** 2 + 1).sqrt()) if solver == "dpmpp_2m" else float(fresh.init_noise_sigma)
    return DiffusersSchedule(solver, {}, schedule, noise_scale, timesteps.float(), alphas_cumprod, name)
