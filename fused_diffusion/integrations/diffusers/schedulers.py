"""diffusers schedulers, read exactly: one adapter per scheduler class says what its configuration means in this
library's terms — the settings it reproduces and refuses (by name), the schedule, the initial-noise scale, the space
the solver works in, what the model is given and how its output becomes the solver's input, the solver and its
options. `from_diffusers(scheduler, steps)` and `FusedScheduler` and `accelerate` all read the adapter; nothing
else in this package branches on a solver's or scheduler's name.

Spaces: a pipeline's latents are the scheduler's `sample`. The solver's state is that sample, except for the
variance-preserving multistep schedulers (DPM-Solver++, UniPC), whose solvers run in the EDM space
x = sample * sqrt(1 + sigma^2) (`Setup.latent_scale`).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from ... import ops
from ...engine import Sampler
from ...models import EpsDenoiser, VDenoiser, _inner_output, lincomb_rows
from ...schedules import img2img_schedule
from ...checks import check_count, check_device, check_real, describe
from ...solvers import DDIM, Plan, Solver, check_input, get_solver, run

# settings every scheduler turns into the schedule that an adapter reads off it after set_timesteps
SCHEDULE_SETTINGS = frozenset({"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                               "timestep_spacing", "steps_offset"})
SIGMA_SETTINGS = frozenset({"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min",
                            "sigma_max"})
IDENTITY_ROW = torch.tensor([[0.0, 1.0]], dtype=torch.float64)  # [x, model output] -> the model output itself
# settings without effect under the adapters' required values (thresholding off, no flow sigmas)
INERT_SETTINGS = frozenset({"dynamic_thresholding_ratio", "sample_max_value", "clip_sample_range"})


class SchedulerAdapter:
    """What this library reproduces of one diffusers scheduler class.

    reproduced: settings taken at any value (read off the scheduler's own schedule, or inert under `required`);
    required: settings needed at one value. Every other setting must keep the class's default, so one added by a
    later diffusers is refused by name instead of silently ignored. step_options: the keywords of the scheduler's
    `step` it reproduces, with their defaults; timestep_options: the keywords of its `set_timesteps`.
    """

    name: ClassVar[str]
    solver: ClassVar[str]
    reproduced: ClassVar[frozenset[str]] = SCHEDULE_SETTINGS
    required: ClassVar[dict[str, Any]] = {"prediction_type": "epsilon", "rescale_betas_zero_snr": False}
    step_options: ClassVar[dict[str, Any]] = {}
    timestep_options: ClassVar[tuple[str, ...]] = ()
    vp_latents: ClassVar[bool] = False  # the pipeline's sample is variance preserving, the solver's state EDM

    def check(self, scheduler: Any) -> None:
        """Refuses, by name, a setting of `scheduler` this adapter would not reproduce."""
        defaults = {key: p.default for key, p in inspect.signature(type(scheduler).__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        for key, default in defaults.items():
            value = scheduler.config.get(key, default)
            if key in self.required:
                if value != self.required[key]:
                    raise ValueError(f"{self.name} with {key}={value!r} is not supported; fused_diffusion reproduces "
                                     f"{key}={self.required[key]!r}")
            elif key not in self.reproduced and not (value is default or value == default):
                raise ValueError(f"{self.name} with {key}={value!r} is not supported; fused_diffusion reproduces "
                                 f"{self.name} with {key} at its default, {default!r}")

    # --- one run ------------------------------------------------------------------------------------------------

    def schedule(self, fresh: Any) -> Tensor:
        """The solver's schedule from a scheduler after set_timesteps (float32 sigmas ending at 0 by default)."""
        return fresh.sigmas.detach().to("cpu", torch.float32)

    def solver_options(self, fresh: Any, step_options: dict[str, Any]) -> dict[str, Any]:
        return {}

    def init_noise_sigma(self, fresh: Any, schedule: Tensor) -> float:
        """The factor for unit noise that gives the solver's starting point."""
        return float(fresh.init_noise_sigma)

    def model(self, setup: "Setup", network: Callable[..., Any]) -> Callable[..., Any]:
        """`network(x, timestep, **kwargs)` (the scheduler's model: epsilon or v prediction) as the solver's model."""
        denoiser = EpsDenoiser if setup.prediction_type == "epsilon" else VDenoiser
        return denoiser(network, setup.alphas_cumprod, timestep_table=(self.call_levels(setup), setup.timesteps))

    def noised(self, setup: "Setup", image: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        """The solver's state for `image` noised to schedule level `level`, as the scheduler's add_noise (in the
        solver's space)."""
        return image + noise * level

    def tail_solver(self, setup: "Setup") -> Solver:
        """The solver for a run over the schedule's last steps (img2img)."""
        return setup.solver

    def denoised(self, setup: "Setup", i: int, x: Tensor, output: Tensor) -> Tensor:
        """The solver's model output at step i as the data estimate (diffusers' `pred_original_sample`)."""
        return output

    # --- a scheduler's step API (FusedScheduler) ----------------------------------------------------------------

    def call_levels(self, setup: "Setup") -> Tensor:
        """The solver's level at each model call of a run, in the order of the scheduler's `timesteps`."""
        return setup.schedule[:-1]

    def input_scales(self, setup: "Setup") -> Tensor | None:
        """What `scale_model_input` multiplies the sample by at each call (None: it returns the sample)."""
        return None

    def network_scales(self, setup: "Setup") -> Tensor | None:
        """Per call, the factor from the solver's state to the network's input (None: 1): EpsDenoiser's c_in =
        1 / sqrt(sigma^2 + 1) for the sigma schedulers."""
        return (self.call_levels(setup).double() ** 2 + 1).rsqrt()

    def output_rows(self, setup: "Setup") -> Tensor:
        """Per call, the row over [x, model output] that makes the solver's model output (float64, [calls, 2]):
        EpsDenoiser's / VDenoiser's for the sigma schedulers, the output itself for the others."""
        level = self.call_levels(setup).double()
        if setup.prediction_type == "epsilon":
            return torch.stack([torch.ones_like(level), -level], dim=1)
        c_in = (level**2 + 1).rsqrt()
        return torch.stack([c_in**2, -level * c_in], dim=1)

    def from_output(self, setup: "Setup", x: Tensor, output: Tensor, level: Tensor) -> Tensor:
        """A model output given to `step` (epsilon or v at the solver's level) as the solver's model output D, in
        the solver's space, as EpsDenoiser / VDenoiser make it: one lincomb."""
        if setup.prediction_type == "epsilon":
            return ops.lincomb([x, output], lincomb_rows(torch.ones_like(level), -level))
        c_in = (level.float() ** 2 + 1).rsqrt()
        return ops.lincomb([x, output], lincomb_rows(c_in**2, -level.float() * c_in))


class DiscreteSigmas(SchedulerAdapter):
    """The k-diffusion-style schedulers (EulerDiscrete, EulerAncestralDiscrete, HeunDiscrete): the sample is EDM's x,
    the model sees x / sqrt(sigma^2 + 1) at the scheduler's timestep; epsilon or v prediction."""

    required = {"rescale_betas_zero_snr": False}
    reproduced = SCHEDULE_SETTINGS | SIGMA_SETTINGS | {"prediction_type"}  # epsilon or v: checked below

    def input_scales(self, setup: "Setup") -> Tensor | None:
        return (self.call_levels(setup).double() ** 2 + 1).rsqrt().float()
    def check(self, scheduler: Any) -> None:
        super().check(scheduler)
        if scheduler.config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
            raise ValueError(f"{self.name} with prediction_type={scheduler.config.prediction_type!r} is not "
                             "supported; fused_diffusion reproduces 'epsilon' and 'v_prediction'")


class Euler(DiscreteSigmas):
    name, solver = "EulerDiscreteScheduler", "euler"
    required = {**DiscreteSigmas.required, "timestep_type": "discrete", "final_sigmas_type": "zero",
                "interpolation_type": "linear"}


class EulerAncestral(DiscreteSigmas):
    name, solver = "EulerAncestralDiscreteScheduler", "euler_ancestral"


class Heun(DiscreteSigmas):
    name, solver = "HeunDiscreteScheduler", "heun"
    required = {**DiscreteSigmas.required, "clip_sample": False}
    reproduced = DiscreteSigmas.reproduced | {"clip_sample_range"}

    def schedule(self, fresh: Any) -> Tensor:
        sigmas = super().schedule(fresh)  # sigma_0, then each inner sigma twice, then 0
        return torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])

    def call_levels(self, setup: "Setup") -> Tensor:
        """Heun's model calls for n steps to 0: at sigma_0, then at each later nonzero sigma twice (the end of one
        step, the start of the next), as the scheduler lists its timesteps."""
        return torch.cat([setup.schedule[:1], setup.schedule[1:-1].repeat_interleave(2)])


class VPMultistep(SchedulerAdapter):
    """DPMSolverMultistep and UniPCMultistep: the sample is variance preserving, the solver runs in EDM space."""

    vp_latents = True
    reproduced = SCHEDULE_SETTINGS | SIGMA_SETTINGS | INERT_SETTINGS | {
        "lower_order_final", "lambda_min_clipped", "flow_shift", "time_shift_type", "shift_terminal"}

    def init_noise_sigma(self, fresh: Any, schedule: Tensor) -> float:
        return float((schedule[0].double() ** 2 + 1).sqrt())

    def noised(self, setup: "Setup", image: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        return image + noise * level  # add_noise's sqrt(a) image + sqrt(1 - a) noise, in EDM space


class DPMSolverMultistep(VPMultistep):
    name, solver = "DPMSolverMultistepScheduler", "dpmpp_2m"
    required = {"prediction_type": "epsilon", "algorithm_type": "dpmsolver++", "solver_order": 2,
                "solver_type": "midpoint", "thresholding": False, "final_sigmas_type": "zero", "euler_at_final": False,
                "use_lu_lambdas": False, "variance_type": None, "rescale_betas_zero_snr": False,
                "use_flow_sigmas": False, "use_dynamic_shifting": False}


class UniPCMultistep(VPMultistep):
    name, solver = "UniPCMultistepScheduler", "unipc"
    required = {"prediction_type": "epsilon", "predict_x0": True, "thresholding": False, "solver_p": None,
                "final_sigmas_type": "zero", "rescale_betas_zero_snr": False, "use_flow_sigmas": False,
                "use_dynamic_shifting": False}
    reproduced = VPMultistep.reproduced | {"solver_order", "solver_type", "disable_corrector"}

    def solver_options(self, fresh: Any, step_options: dict[str, Any]) -> dict[str, Any]:
        config = fresh.config
        return {"order": config.solver_order, "variant": config.solver_type,
                "disable_corrector": tuple(config.disable_corrector), "lower_order_final": config.lower_order_final}


class Timesteps(SchedulerAdapter):
    """Schedulers stepping between given integer timesteps of a DDPM (DDIM, LCM, TCD): the solver's state is the
    sample, the model gets the integer timestep and returns epsilon."""

    def schedule(self, fresh: Any) -> Tensor:
        return fresh.timesteps.detach().to("cpu").long()

    def init_noise_sigma(self, fresh: Any, schedule: Tensor) -> float:
        return 1.0

    def solver_options(self, fresh: Any, step_options: dict[str, Any]) -> dict[str, Any]:
        return {"alphas_cumprod": fresh.alphas_cumprod.detach().to("cpu", torch.float64)}

    def model(self, setup: "Setup", network: Callable[..., Any]) -> Callable[..., Any]:
        return TimestepModel(network)

    def noised(self, setup: "Setup", image: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        abar = setup.alphas_cumprod[int(level)]  # sync-ok: a host tensor, once per img2img run
        return image * abar.sqrt().item() + noise * (1 - abar).sqrt().item()  # sync-ok: host scalars

    def denoised(self, setup: "Setup", i: int, x: Tensor, output: Tensor) -> Tensor:
        abar = setup.alphas_cumprod[int(setup.schedule[i])].item()  # sync-ok: host tables, on request only
        return (x - (1 - abar) ** 0.5 * output) / abar**0.5

    def from_output(self, setup: "Setup", x: Tensor, output: Tensor, level: Tensor) -> Tensor:
        return output  # the solver takes epsilon

    def network_scales(self, setup: "Setup") -> Tensor | None:
        return None

    def output_rows(self, setup: "Setup") -> Tensor:
        return IDENTITY_ROW.expand(len(setup.timesteps), 2)


class DDIMAdapter(Timesteps):
    name, solver = "DDIMScheduler", "ddim"
    required = {"prediction_type": "epsilon", "thresholding": False, "rescale_betas_zero_snr": False}
    reproduced = SCHEDULE_SETTINGS | INERT_SETTINGS | {"clip_sample", "set_alpha_to_one", "clip_sample_range"}
    step_options = {"eta": 0.0}

    def solver_options(self, fresh: Any, step_options: dict[str, Any]) -> dict[str, Any]:
        config = fresh.config
        return {**super().solver_options(fresh, step_options), "eta": step_options["eta"],
                "set_alpha_to_one": config.set_alpha_to_one, "clip_sample": config.clip_sample,
                "clip_sample_range": config.clip_sample_range}

    def denoised(self, setup: "Setup", i: int, x: Tensor, output: Tensor) -> Tensor:
        x0 = super().denoised(setup, i, x, output)
        solver = setup.solver
        return x0.clamp(-solver.clip_sample_range, solver.clip_sample_range) if solver.clip_sample else x0

    def tail_solver(self, setup: "Setup") -> Solver:
        # the tail of a run still strides by the whole run's T // n
        options = {k: v for k, v in vars(setup.solver).items() if k != "grid_steps"}
        return DDIM(**options, grid_steps=len(setup.schedule))


class LCMAdapter(Timesteps):
    name, solver = "LCMScheduler", "lcm"
    required = {"prediction_type": "epsilon", "thresholding": False, "clip_sample": False,
                "rescale_betas_zero_snr": False}
    reproduced = SCHEDULE_SETTINGS | INERT_SETTINGS | {"original_inference_steps", "set_alpha_to_one",
                                                      "timestep_scaling"}
    timestep_options = ("original_inference_steps", "timesteps", "strength")

    def solver_options(self, fresh: Any, step_options: dict[str, Any]) -> dict[str, Any]:
        return {**super().solver_options(fresh, step_options), "timestep_scaling": fresh.config.timestep_scaling}


class TCDAdapter(LCMAdapter):
    name, solver = "TCDScheduler", "tcd"
    step_options = {"eta": 0.3}  # TCD's gamma, its step's `eta`

    def solver_options(self, fresh: Any, step_options: dict[str, Any]) -> dict[str, Any]:
        return {"alphas_cumprod": fresh.alphas_cumprod.detach().to("cpu", torch.float64), "gamma": step_options["eta"]}


class FlowMatchEuler(SchedulerAdapter):
    """FlowMatchEulerDiscrete (SD3, Flux): the sample is x_t = (1 - t) x0 + t noise, the model gets the timestep
    t * num_train_timesteps and returns the velocity; shift, dynamic shifting (`mu`) and the sigma options are read
    off the scheduler's own schedule."""

    name, solver = "FlowMatchEulerDiscreteScheduler", "flow_euler"
    required = {"stochastic_sampling": False, "invert_sigmas": False}
    reproduced = frozenset({"num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                            "base_image_seq_len", "max_image_seq_len", "shift_terminal", "time_shift_type"}) | (
        SIGMA_SETTINGS - {"sigma_min", "sigma_max"})
    timestep_options = ("sigmas", "timesteps", "mu")

    def init_noise_sigma(self, fresh: Any, schedule: Tensor) -> float:
        return 1.0

    def model(self, setup: "Setup", network: Callable[..., Any]) -> Callable[..., Any]:
        return FlowModel(network, setup.num_train_timesteps)

    def noised(self, setup: "Setup", image: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        return image * (1 - level) + noise * level  # the scheduler's scale_noise

    def denoised(self, setup: "Setup", i: int, x: Tensor, output: Tensor) -> Tensor:
        return x - output * setup.schedule[i].to(x.device, x.dtype)

    def from_output(self, setup: "Setup", x: Tensor, output: Tensor, level: Tensor) -> Tensor:
        return output  # the solver takes the velocity

    network_scales = Timesteps.network_scales
    output_rows = Timesteps.output_rows


class TimestepModel(nn.Module):
    """The solver's model for integer-timestep solvers: `network(x, t, **kwargs)` with the scheduler's timestep,
    its prediction (epsilon) checked against x."""

    def __init__(self, network: Callable[..., Any]):
        super().__init__()
        self.inner_model = network

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return _inner_output(self.inner_model(x, t, **kwargs), "eps", x.shape, x)


class FlowModel(nn.Module):
    """The solver's model for flow matching: `network(x, timestep, **kwargs)` with timestep = t * T computed as the
    scheduler computes its timesteps (float32), the velocity checked against x."""

    def __init__(self, network: Callable[..., Any], num_train_timesteps: int):
        super().__init__()
        self.inner_model, self.num_train_timesteps = network, num_train_timesteps

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        timestep = t.float() * self.num_train_timesteps
        return _inner_output(self.inner_model(x, timestep, **kwargs), "velocity", x.shape, x)


ADAPTERS: dict[str, SchedulerAdapter] = {adapter.name: adapter for adapter in (
    DDIMAdapter(), Euler(), EulerAncestral(), Heun(), DPMSolverMultistep(), UniPCMultistep(), LCMAdapter(),
    TCDAdapter(), FlowMatchEuler())}


def adapter_of(scheduler: Any) -> SchedulerAdapter:
    name = type(scheduler).__name__
    if name not in ADAPTERS or not hasattr(scheduler, "config"):
        raise TypeError(f"scheduler must be one of diffusers' {', '.join(ADAPTERS)}, got {describe(scheduler)}")
    return ADAPTERS[name]


@dataclass(frozen=True)
class Setup:
    """What a diffusers scheduler's configuration means for one run, in this library's terms (from_diffusers).

    solver: the fd solver (options applied) that makes the scheduler's updates; schedule: its schedule (sigmas ending
    at 0, integer timesteps, or flow sigmas); timesteps: what the scheduler gives the model at each call;
    init_noise_sigma: the factor for unit noise that gives the solver's starting point. `model(network)` wraps the
    scheduler's model for the solver; `sample` / `sampler` run it."""

    adapter: SchedulerAdapter
    solver: Solver
    schedule: Tensor
    timesteps: Tensor
    init_noise_sigma: float
    alphas_cumprod: Tensor | None
    num_train_timesteps: int
    prediction_type: str

    @property
    def scheduler(self) -> str:
        return self.adapter.name

    def model(self, network: Callable[..., Any]) -> Callable[..., Any]:
        """`network(x, timestep, **kwargs)` (the scheduler's model) as the solver's model."""
        return self.adapter.model(self, network)

    def latent_scale(self, i: int) -> float:
        """The factor from the pipeline's sample at schedule level i to the solver's state (1 but for the
        variance-preserving multistep schedulers: sqrt(1 + sigma_i^2))."""
        if not self.adapter.vp_latents:
            return 1.0
        return float((self.schedule[i].double() ** 2 + 1).sqrt())

    def start(self, noise: Tensor, image: Tensor | None = None, strength: float = 1.0) -> tuple[Tensor, Tensor, Solver]:
        """(solver state, schedule, solver) of a run from unit `noise`; with `image`, img2img as diffusers' img2img
        pipelines do it: of the n steps the last int(n * strength) run, from the image noised by the scheduler's
        add_noise to the first of them."""
        check_input(noise, "noise")
        strength = check_real("strength", strength)
        schedule = self.schedule.to(noise.device)
        if image is None:
            if strength != 1.0:
                raise ValueError(f"strength={strength} needs an image to start from (image=None)")
            return noise * self.init_noise_sigma, schedule, self.solver
        check_input(image, "image")
        if image.shape != noise.shape or image.device != noise.device:
            raise ValueError(f"image must be a tensor of the noise's shape {tuple(noise.shape)} on {noise.device}, got "
                             f"{describe(image)} on {image.device}")
        if not torch.isfinite(image).all():  # sync-ok: once per run, before the loop
            raise ValueError("image contains NaN or inf")
        schedule = img2img_schedule(schedule, strength)
        return self.adapter.noised(self, image, noise, schedule[0]), schedule, self.adapter.tail_solver(self)

    def sample(self, network: Callable[..., Any], noise: Tensor, *, image: Tensor | None = None,
               strength: float = 1.0, extra_args: dict | None = None, callback: run.Callback | None = None,
               generator: torch.Generator | None = None, disable: bool | None = None) -> Tensor:
        """Samples from unit Gaussian `noise` as the scheduler's own loop would (eagerly); the result is in the
        solver's space, which is the sample's at the end of a run."""
        x, schedule, solver = self.start(noise, image, strength)
        return run.sample(solver, self.model(network), x, schedule, extra_args, callback, disable, generator=generator,
                          k_diffusion_rng=False)

    def sampler(self, network: Callable[..., Any], device: str | torch.device = "cpu", **options: Any) -> Sampler:
        """An fd.Sampler (one CUDA graph on a GPU) for this schedule; call it with noise * init_noise_sigma."""
        return Sampler(self.model(network), self.solver, self.schedule.to(check_device(device)), **options)


def from_diffusers(scheduler: Any, steps: int, **options: Any) -> Setup:
    """`scheduler`'s configuration for `steps` inference steps as an fd solver, schedule, initial-noise scale and
    model mapping (the scheduler itself is not modified). `options`: what the scheduler's `step` would be given
    (DDIM's `eta`, TCD's `eta` = gamma) and what its `set_timesteps` takes besides the step count (flow matching's
    `mu` and `sigmas`, LCM's `original_inference_steps`, ...), each refused by name where the adapter has none.

    >>> setup = fd.from_diffusers(pipe.scheduler, 20)
    >>> images = setup.sample(pipe.unet, torch.randn(1, 4, 64, 64))   # = the pipeline's own loop
    """
    adapter = adapter_of(scheduler)
    steps = check_count("steps", steps)
    adapter.check(scheduler)
    taken = {*adapter.step_options, *adapter.timestep_options}
    if unknown := set(options) - taken:
        raise TypeError(f"options {sorted(unknown)} are not taken for {adapter.name}; it takes {sorted(taken) or 'none'}")
    step_options = {**adapter.step_options, **{k: v for k, v in options.items() if k in adapter.step_options}}
    fresh = copy.deepcopy(scheduler)  # set_timesteps mutates: the caller's scheduler stays as it was
    fresh.set_timesteps(steps, device="cpu", **{k: v for k, v in options.items() if k in adapter.timestep_options})
    schedule = adapter.schedule(fresh)
    solver = get_solver(adapter.solver, **adapter.solver_options(fresh, step_options))  # validates the options now
    Plan(solver, schedule)  # and the schedule
    alphas_cumprod = getattr(fresh, "alphas_cumprod", None)
    return Setup(adapter, solver, schedule, fresh.timesteps.detach().to("cpu"),
                 adapter.init_noise_sigma(fresh, schedule),
                 None if alphas_cumprod is None else alphas_cumprod.detach().to("cpu", torch.float64),
                 fresh.config.num_train_timesteps, fresh.config.get("prediction_type", "epsilon"))


def scheduler_like(scheduler: Any, name: str) -> Any:
    """The diffusers scheduler `name` for a pipeline whose scheduler is `scheduler`: a copy of it when it is that
    class already (keeping edits a pipeline made to its config, such as Stable Diffusion's steps_offset=1, which
    diffusers' from_config would drop as "default values"), else diffusers' own `from_config` of its config, as a
    user switching schedulers gets it."""
    import diffusers

    if type(scheduler).__name__ == name:
        return copy.deepcopy(scheduler)
    return getattr(diffusers, name).from_config(scheduler.config)
