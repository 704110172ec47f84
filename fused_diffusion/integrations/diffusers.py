"""diffusers schedulers, read exactly: `from_diffusers(scheduler, steps)` turns a scheduler's configuration into this
library's solver, schedule, initial-noise scale and timestep mapping, so that sampling an epsilon model with them
gives what looping that scheduler gives, with no setting left to guess.

Supported: DDIMScheduler (the "ddim" solver on its integer timesteps), EulerDiscreteScheduler ("euler"),
HeunDiscreteScheduler ("heun") and DPMSolverMultistepScheduler in its DPM-Solver++(2M) configuration ("dpmpp_2m"),
epsilon prediction. Anything else in the configuration that changes the result is refused by name.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..engine import Sampler
from .. import ops
from ..models import CFGDenoiser, EpsDenoiser, lincomb_rows
from ..schedules import check_bool, check_count, check_device, check_real, describe, img2img_schedule
from ..solvers import DDIM, Plan, check_input, get_solver, run

# settings every supported scheduler turns into the schedule that from_diffusers reads off it (set_timesteps)
SCHEDULE_SETTINGS = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                     "timestep_spacing", "steps_offset"}
SIGMA_SETTINGS = {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"}


@dataclass(frozen=True)
class Support:
    """What from_diffusers reproduces of one scheduler class: its solver, the settings it reproduces at any value
    (read off the scheduler's own schedule, or without effect under the required values) and the settings it needs
    at one value. Every other setting must keep the class's default, so a setting added by a later diffusers is
    refused by name instead of silently ignored."""

    solver: str
    reproduced: frozenset[str]
    required: dict[str, Any]


SUPPORTED: dict[str, Support] = {
    "DDIMScheduler": Support("ddim", frozenset(SCHEDULE_SETTINGS | {
        "clip_sample", "set_alpha_to_one", "clip_sample_range", "dynamic_thresholding_ratio", "sample_max_value"}),
        {"prediction_type": "epsilon", "thresholding": False, "rescale_betas_zero_snr": False}),
    "EulerDiscreteScheduler": Support("euler", frozenset(SCHEDULE_SETTINGS | SIGMA_SETTINGS | {
        "sigma_min", "sigma_max"}), {"prediction_type": "epsilon", "rescale_betas_zero_snr": False,
                                     "timestep_type": "discrete", "final_sigmas_type": "zero",
                                     "interpolation_type": "linear"}),
    "HeunDiscreteScheduler": Support("heun", frozenset(SCHEDULE_SETTINGS | SIGMA_SETTINGS | {"clip_sample_range"}),
                                     {"prediction_type": "epsilon", "clip_sample": False}),
    "DPMSolverMultistepScheduler": Support("dpmpp_2m", frozenset(SCHEDULE_SETTINGS | SIGMA_SETTINGS | {
        "lower_order_final", "lambda_min_clipped", "dynamic_thresholding_ratio", "sample_max_value", "flow_shift",
        "time_shift_type"}), {
        "prediction_type": "epsilon", "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
        "thresholding": False, "final_sigmas_type": "zero", "euler_at_final": False, "use_lu_lambdas": False,
        "variance_type": None, "rescale_betas_zero_snr": False, "use_flow_sigmas": False,
        "use_dynamic_shifting": False}),
}


def check_config(scheduler: Any, support: Support) -> None:
    """Refuses, by name, a setting of `scheduler` that from_diffusers would not reproduce."""
    name = type(scheduler).__name__
    defaults = {key: p.default for key, p in inspect.signature(type(scheduler).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for key, default in defaults.items():
        value = scheduler.config.get(key, default)
        if key in support.required:
            if value != support.required[key]:
                raise ValueError(f"{name} with {key}={value!r} is not supported; from_diffusers reproduces "
                                 f"{key}={support.required[key]!r}")
        elif key not in support.reproduced and not (value is default or value == default):
            raise ValueError(f"{name} with {key}={value!r} is not supported; from_diffusers reproduces {name} with "
                             f"{key} at its default, {default!r}")


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
        check_input(noise, "noise")
        strength = check_real("strength", strength)
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


def scheduler_like(scheduler: Any, name: str) -> Any:
    """The diffusers scheduler `name` for a pipeline whose scheduler is `scheduler`: a copy of it when it is that
    class already (keeping edits a pipeline made to its config, such as Stable Diffusion's steps_offset=1, which
    diffusers' from_config would drop as "default values"), else diffusers' own `from_config` of its config, as a
    user switching schedulers gets it."""
    import diffusers

    if type(scheduler).__name__ == name:
        return copy.deepcopy(scheduler)
    return getattr(diffusers, name).from_config(scheduler.config)


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
    solver = SUPPORTED[name].solver
    check_config(scheduler, SUPPORTED[name])
    config = scheduler.config
    allowed = {"eta"} if solver == "ddim" else set()
    if unknown := set(step_options) - allowed:
        raise TypeError(f"step options {sorted(unknown)} are not taken for {name}; it takes {sorted(allowed) or 'none'}")
    fresh = copy.deepcopy(scheduler)  # set_timesteps mutates: the caller's scheduler stays as it was
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


class FusedScheduler:
    """diffusers' scheduler API backed by this library's solvers, for frameworks that keep their own loop:
    `pipe.scheduler = FusedScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")` and the pipeline runs
    unchanged, equal to the matching diffusers scheduler ("ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler), configured from the same config.

    `step` makes the solver's update as one fused launch with coefficients read from device tables (plus one
    elementwise op turning epsilon into the solver's input, and DPM-Solver's change of space), and moves the step
    index on the host: no host sync per step. The run starts where the pipeline says (`set_begin_index`, as
    img2img pipelines call it) or, without that, at the first `timestep` given to `step` (looked up once per run);
    later steps follow `timesteps` in order, as every pipeline loop does. `step` returns `prev_sample` only
    (pipelines read nothing else). Two-call solvers (Heun) are not offered.
    """

    SOLVERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}
    order = 1

    def __init__(self, reference: Any, solver: str):
        if solver not in self.SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, self.SOLVERS))}, got {solver!r}")
        if type(reference).__name__ != self.SOLVERS[solver]:
            raise TypeError(f"reference must be a diffusers {self.SOLVERS[solver]} for solver={solver!r}, got "
                            f"{describe(reference)}")
        self.reference, self.solver = reference, solver
        from_diffusers(reference, 1)  # refuses, by name, a configuration the solver cannot reproduce
        self.timesteps: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._setup: DiffusersSchedule | None = None
        self._begin_index: int | None = None

    @classmethod
    def from_config(cls, config: Any, solver: str = "dpmpp_2m", **overrides: Any) -> "FusedScheduler":
        """From any diffusers scheduler's config (the training schedule and spacing carry over), as diffusers'
        `from_config`; `overrides` change config values."""
        import diffusers

        if solver not in cls.SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, cls.SOLVERS))}, got {solver!r}")
        return cls(getattr(diffusers, cls.SOLVERS[solver]).from_config(config, **overrides), solver)

    @property
    def config(self) -> Any:
        return self.reference.config

    def _require_timesteps(self, what: str) -> DiffusersSchedule:
        if self._setup is None:
            raise RuntimeError(f"call set_timesteps(num_inference_steps) before {what}")
        return self._setup

    @property
    def init_noise_sigma(self) -> float:
        """The factor pipelines multiply their unit noise by: the reference scheduler's (1 in DDIM's and
        DPM-Solver's variance-preserving space)."""
        self._require_timesteps("reading init_noise_sigma")
        return float(self.reference.init_noise_sigma)

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The run's first step is step `begin_index` of `timesteps` (img2img pipelines skip the first steps)."""
        self._begin_index = check_count("begin_index", begin_index, minimum=0)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The run's timesteps and the solver's coefficient tables, on `device`; the next step starts a run."""
        device = check_device(device) if device is not None else torch.device("cpu")  # checked before any change
        setup = from_diffusers(self.reference, num_inference_steps)
        self.reference.set_timesteps(num_inference_steps)  # for init_noise_sigma and add_noise
        self._setup, self.num_inference_steps = setup, num_inference_steps
        self.timesteps = self.reference.timesteps.to(device)
        self._host_timesteps = self.reference.timesteps.detach().to("cpu", torch.float64)
        self._schedule = setup.schedule.to(device)
        # the pipeline's space -> the solver's: x_solver = x * in_scale[i]; back with out_scale[i] (step i's end)
        if self.solver == "dpmpp_2m":
            scale = (setup.schedule.double() ** 2 + 1).sqrt().float().to(device)
            self._in_scale, self._out_scale = scale[:-1], 1 / scale[1:]
        self._input_scale = ((setup.schedule[:-1].double() ** 2 + 1).rsqrt().float().to(device)
                             if self.solver == "euler" else None)
        self._run: run.Run | None = None
        self._eta: float | None = None
        self._begin_index = None
        self._index = 0

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """Euler: the model sees x / sqrt(sigma^2 + 1) at the current step; the others: x itself."""
        self._require_timesteps("scale_model_input")
        if self._input_scale is None:
            return sample
        index = self._index if self._run is not None else self._start_index(timestep)
        if index >= len(self._input_scale):
            raise RuntimeError(f"scale_model_input after the last of {len(self.timesteps)} steps; call set_timesteps "
                               "again for a new run")
        return sample * self._input_scale[index].to(sample.dtype)

    def _start_index(self, timestep: Any) -> int:
        """The run's first step: set_begin_index's, else where `timestep` stands in `timesteps` (one host read)."""
        if self._begin_index is not None:
            return self._begin_index
        if timestep is None:
            return 0
        value = float(torch.as_tensor(timestep).reshape(-1)[0])  # sync-ok: once per run
        found = (self._host_timesteps == value).nonzero()
        if not len(found):
            raise ValueError(f"timestep {value:g} is not one of this run's timesteps "
                             f"{self._host_timesteps.long().tolist()}")
        return int(found[0])

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: Tensor | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, return_dict: bool = True):
        """One solver step from `sample` with the model's epsilon `model_output` for the current timestep. The
        keywords are the union of the diffusers schedulers' `step` options; those the solver does not reproduce
        (a churn, clipped model outputs, given variance noise, eta outside DDIM) are refused unless at their default."""
        self._require_timesteps("step")
        self._check_step_options(eta, use_clipped_model_output, variance_noise, s_churn, s_tmin, s_tmax, s_noise)
        check_input(sample, "sample")
        check_input(model_output, "model_output")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has shape "
                             f"{tuple(sample.shape)}; pass the model's prediction for this sample")
        if self._run is None:  # the run starts here, where the sample's shape, device and DDIM's eta are known
            self._index = self._start_index(timestep)
            if self._index >= len(self.timesteps):
                raise ValueError(f"begin_index {self._index} is past the last of {len(self.timesteps)} timesteps")
            options = dict(self._setup.solver_options)
            if self.solver == "ddim":  # a tail of the grid still strides by the whole run's T // n
                options.update(eta=eta, grid_steps=len(self._schedule))
            tail = self._schedule[self._index:]
            self._run = run.Run(Plan(get_solver(self.solver, **options), tail), self._from_model_output, sample,
                                generator=generator, check_finite=False)
            self._eta, self._run_start = eta, self._index
        else:
            self._check_same_run(sample, eta)
        i, self._index = self._index, self._index + 1
        self._model_output = model_output
        local = i - self._run_start  # the step in the run's own plan (its schedule is the tail from the start)
        if self.solver == "dpmpp_2m":
            prev = self._run.solver.step(self._run, local, sample * self._in_scale[i].to(sample.dtype))
            prev = prev * self._out_scale[i].to(prev.dtype)
        else:
            prev = self._run.solver.step(self._run, local, sample)
        self._model_output = None
        return SchedulerOutput(prev) if return_dict else (prev,)

    # step's option defaults: what pipelines pass, so the common case costs one tuple comparison per step
    STEP_DEFAULTS = (0.0, False, None, 0.0, 0.0, float("inf"), 1.0)

    def _check_step_options(self, eta: Any, use_clipped_model_output: Any, variance_noise: Any, s_churn: Any,
                            s_tmin: Any, s_tmax: Any, s_noise: Any) -> None:
        if (eta, use_clipped_model_output, variance_noise, s_churn, s_tmin, s_tmax, s_noise) == self.STEP_DEFAULTS:
            return
        scheduler = self.SOLVERS[self.solver]
        check_real("eta", eta, at_least=0)
        if eta != 0 and self.solver != "ddim":
            raise ValueError(f"eta={eta} is DDIMScheduler's; this scheduler reproduces {scheduler}")
        if use_clipped_model_output:
            raise ValueError("use_clipped_model_output=True is not supported by FusedScheduler")
        if variance_noise is not None:
            raise ValueError("variance_noise is not supported by FusedScheduler: pass a generator for the step noise")
        churn = {"s_churn": (s_churn, 0.0), "s_tmin": (s_tmin, 0.0), "s_tmax": (s_tmax, float("inf")),
                 "s_noise": (s_noise, 1.0)}
        for name, (value, default) in churn.items():
            if check_real(name, value, allow_inf=True) != default:
                raise ValueError(f"{name}={value} (EulerDiscreteScheduler's churn) is not supported by FusedScheduler; "
                                 f"it reproduces {name}={default}")

    def _check_same_run(self, sample: Tensor, eta: float) -> None:
        """A step after the first must continue its run: no steps past the end, the same eta, and the sample's shape,
        dtype and device (the solver's history is per run). Host-side metadata only, no sync."""
        if self._index >= len(self.timesteps):
            raise RuntimeError(f"step called {self._index + 1} times for {len(self.timesteps)} timesteps; call "
                               "set_timesteps again for a new run")
        if self.solver == "ddim" and eta != self._eta:
            raise ValueError(f"eta changed within a run ({self._eta} at the first step, {eta} now)")
        started = self._run
        if (sample.shape, sample.dtype, sample.device) != (started.shape, started.dtype, started.device):
            raise ValueError(
                f"sample at step {self._index} (timestep {int(self._host_timesteps[self._index])}) has shape "
                f"{tuple(sample.shape)}, {sample.dtype} on {sample.device}, but this run began with "
                f"{tuple(started.shape)}, {started.dtype} on {started.device}; the scheduler keeps the solver's "
                "history per run: call set_timesteps(...) to start a run for another batch")

    def _from_model_output(self, x: Tensor, level: Tensor) -> Tensor:
        """The solver's model: the epsilon the pipeline passed to `step` (DDIM), or the denoised x - sigma * eps
        at the step's sigma in the solver's space."""
        if self.solver == "ddim":
            return self._model_output
        return ops.lincomb([x, self._model_output], lincomb_rows(torch.ones_like(level), -level))  # EpsDenoiser's

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """As the reference scheduler (img2img pipelines noise their image with it)."""
        return self.reference.add_noise(original_samples, noise, timesteps)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


@dataclass
class SchedulerOutput:
    """diffusers' SchedulerOutput shape: `prev_sample`."""

    prev_sample: Tensor


# solver -> the diffusers scheduler whose loop accelerate() reproduces
PIPELINE_SOLVERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "heun": "HeunDiscreteScheduler",
                    "dpmpp_2m": "DPMSolverMultistepScheduler"}
# the unconditional U-Net pipelines accelerate() takes over, by class name
UNET_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SD_PIPELINES = ("StableDiffusionPipeline",)


@dataclass
class Acceleration:
    """What `accelerate` changed on a pipeline, for `undo`: its class, the U-Net hooks, the samplers it built."""

    pipe: Any
    original_class: type
    scheduler: Any  # the diffusers scheduler whose loop the pipeline now reproduces
    solver: str
    unet: Any  # the pipeline's U-Net and scheduler when accelerated: a replaced one is refused, not ignored
    pipeline_scheduler: Any
    cuda_graph: bool
    handles: list[Any]
    samplers: dict[tuple, Sampler] = field(default_factory=dict)

    models: dict[Any, Callable[..., Any]] = field(default_factory=dict)

    setups: dict[tuple, DiffusersSchedule] = field(default_factory=dict)

    def setup(self, steps: int, eta: float) -> DiffusersSchedule:
        """from_diffusers for this step count (and DDIM's eta), made once."""
        key = (steps, eta if self.solver == "ddim" else 0.0)
        if key not in self.setups:
            self.setups[key] = from_diffusers(self.scheduler, steps, **({"eta": eta} if self.solver == "ddim" else {}))
        return self.setups[key]

    def model(self, key: Any, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        """The solver's model for `key` (the step count, ...), built once (a captured graph is kept per model)."""
        if key not in self.models:
            self.models[key] = build()
        return self.models[key]

    def check_pipeline(self, pipe: Any) -> None:
        """The pipeline still holds the U-Net and scheduler it was accelerated with (the samplers and models built
        for it would run the old ones)."""
        for name, kept in (("unet", self.unet), ("scheduler", self.pipeline_scheduler)):
            if getattr(pipe, name) is not kept:
                raise ValueError(f"pipe.{name} was replaced after accelerate(pipe); call undo(pipe) and accelerate it "
                                 "again to sample with the new one")

    def run(self, setup: DiffusersSchedule, model: Callable[..., Any], noise: Tensor, eta: float, generator: Any,
            extra_args: dict | None = None, callback: run.Callback | None = None) -> Tensor:
        """`model` (the solver's: a denoiser, or DDIM's epsilon model) from the pipeline's unit noise: a cached
        fd.Sampler (one CUDA graph per step count and shape) where the run is deterministic on CUDA and has no
        callback, else eagerly with the pipeline's generator for DDIM's noise."""
        x = noise * setup.init_noise_sigma
        if self.cuda_graph and noise.device.type == "cuda" and eta == 0 and callback is None:
            key = (id(model), noise.device)  # models are cached per step count, so ids are stable
            if key not in self.samplers:
                self.samplers[key] = Sampler(model, setup.solver, setup.schedule.to(noise.device),
                                             **setup.solver_options)
            return self.samplers[key](x, extra_args=extra_args)
        solver = get_solver(setup.solver, **setup.solver_options)
        if solver.stochastic and isinstance(generator, (list, tuple)):
            raise ValueError(f"generator: a list of generators cannot seed {setup.solver}'s step noise (eta={eta}), "
                             "which this library draws from one generator; pass one torch.Generator")
        step_generator = generator if isinstance(generator, torch.Generator) else None
        return run.sample(solver, model, x, setup.schedule.to(noise.device), extra_args, callback, True,
                          generator=step_generator, k_diffusion_rng=False)


def _pipeline_call(implementation: Callable[..., Any]) -> Callable[..., Any]:
    """`implementation` as the accelerated pipeline's __call__, with the pipeline's own signature: the arguments are
    bound to it (positions, names and defaults as the pipeline's), the ones `implementation` takes are passed by
    name, and any other given a value other than its default is refused by name."""
    taken = set(inspect.signature(implementation).parameters)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        acceleration: Acceleration = self._fd_acceleration
        acceleration.check_pipeline(self)
        signature = inspect.signature(acceleration.original_class.__call__)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = {**bound.arguments.pop("kwargs", {}), **bound.arguments}
        arguments.pop("self")
        refused = sorted(name for name, value in arguments.items() if name not in taken and not _is_default(
            value, signature.parameters.get(name)))
        if refused:
            raise ValueError(f"an accelerated {acceleration.original_class.__name__} does not take {refused}; "
                             "undo(pipe) to use them")
        return implementation(self, **{name: arguments[name] for name in taken if name in arguments})

    return __call__


def _is_default(value: Any, parameter: inspect.Parameter | None) -> bool:
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return value is None
    return value is parameter.default or (type(value) is type(parameter.default) and value == parameter.default)


def _accelerated_call(self: Any, batch_size: int, generator: Any, num_inference_steps: int, output_type: str,
                      return_dict: bool, eta: float = 0.0) -> Any:
    """The pipeline's own call and output, with the loop replaced by fd's sampler for the solver that `accelerate`
    was given (the noise drawn as the pipeline draws it, the images post-processed as it does). DDPMPipeline takes
    no eta (0)."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    acceleration: Acceleration = self._fd_acceleration
    steps = check_count("num_inference_steps", num_inference_steps)
    eta = check_real("eta", eta, at_least=0)
    if eta != 0 and acceleration.solver != "ddim":
        raise ValueError(f"eta={eta} is DDIM's; this pipeline samples with solver={acceleration.solver!r}")
    size = self.unet.config.sample_size
    shape = (check_count("batch_size", batch_size), self.unet.config.in_channels,
             *((size, size) if isinstance(size, int) else size))
    noise = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
    setup = acceleration.setup(steps, eta)
    with torch.no_grad():
        image = acceleration.run(setup, acceleration.model(steps, lambda: setup.denoiser(self.unet)), noise, eta,
                                 generator)
    image = (image / 2 + 0.5).clamp(0, 1)
    if output_type != "pt":
        image = image.cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
    return ImagePipelineOutput(images=image) if return_dict else (image,)


def _accelerated_sd_call(self: Any, prompt: Any, height: int | None, width: int | None, num_inference_steps: int,
                         guidance_scale: float, negative_prompt: Any, num_images_per_prompt: int, eta: float,
                         generator: Any, latents: Tensor | None, prompt_embeds: Tensor | None,
                         negative_prompt_embeds: Tensor | None, output_type: str, return_dict: bool,
                         callback_on_step_end: Callable | None, callback_on_step_end_tensor_inputs: list[str] | None,
                         clip_skip: int | None) -> Any:
    """StableDiffusionPipeline's call with the loop replaced by fd's sampler: the prompt encoded, the latents drawn and
    the images decoded by the pipeline's own methods; classifier-free guidance as fd.CFGDenoiser (one batched U-Net
    call, as the pipeline). `callback_on_step_end` (eager) gets {"latents": ...} after each step and may not change
    them."""
    from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

    acceleration: Acceleration = self._fd_acceleration
    if self.unet.config.time_cond_proj_dim is not None:
        raise ValueError("guidance-embedding U-Nets (LCM) are not supported by an accelerated pipeline; undo(pipe) "
                         "to use them")
    eta = check_real("eta", eta, at_least=0)
    if eta != 0 and acceleration.solver != "ddim":
        raise ValueError(f"eta={eta} is DDIM's; this pipeline samples with solver={acceleration.solver!r}")
    if set(callback_on_step_end_tensor_inputs or ["latents"]) != {"latents"}:
        raise ValueError(f"callback_on_step_end_tensor_inputs can only be ['latents'], got "
                         f"{callback_on_step_end_tensor_inputs}")
    steps = check_count("num_inference_steps", num_inference_steps)
    size = self.unet.config.sample_size
    height = height or (size if isinstance(size, int) else size[0]) * self.vae_scale_factor
    width = width or (size if isinstance(size, int) else size[1]) * self.vae_scale_factor
    self.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds)
    guided = guidance_scale > 1
    device = self._execution_device
    prompt_embeds, negative_prompt_embeds = self.encode_prompt(
        prompt, device, num_images_per_prompt, guided, negative_prompt, prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds, clip_skip=clip_skip)
    batch = len(prompt_embeds)
    noise = self.prepare_latents(batch, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device,
                                 generator, None if latents is None else latents)
    noise = noise / self.scheduler.init_noise_sigma  # prepare_latents scaled by the pipeline's own scheduler
    setup = acceleration.setup(steps, eta)
    unet = self.unet

    def eps(x: Tensor, t: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        return unet(x, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    def build() -> Callable[..., Any]:
        if not guided:
            return setup.denoiser(eps)
        if setup.solver == "ddim":  # CFG on epsilon; DDIM's integer timesteps as the float the adapter takes
            cfg = CFGDenoiser(eps, guidance_scale, "encoder_hidden_states")
            return _FloatTimesteps(cfg)
        return CFGDenoiser(setup.denoiser(eps), guidance_scale, "encoder_hidden_states")

    model = acceleration.model((steps, guided), build)
    if guided:
        (model.inner if isinstance(model, _FloatTimesteps) else model).set_scale(guidance_scale)
        extra = {"cond": prompt_embeds, "uncond": negative_prompt_embeds}
    else:
        extra = {"encoder_hidden_states": prompt_embeds}
    callback = None
    if callback_on_step_end is not None:
        callback = _StepCallbacks(self, callback_on_step_end, setup)
    with torch.no_grad():
        latents = acceleration.run(setup, model, noise, eta, generator, extra, callback)
    if callback is not None:
        callback.finish(latents)
    if output_type == "latent":
        image = latents
    else:
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * len(image))
    self.maybe_free_model_hooks()
    return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=None) if return_dict else (image, None)


class _FloatTimesteps:
    """DDIM's model called with its integer timesteps as floats (what the denoiser adapters check for)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.inner(x, t.to(x.dtype), **kwargs)


class _StepCallbacks:
    """fd's per-step callback turned into diffusers' callback_on_step_end(pipe, i, t, {"latents": ...}) after each
    step, the latents in the pipeline's space (variance preserving for DDIM and DPM-Solver)."""

    def __init__(self, pipe: Any, callback: Callable, setup: DiffusersSchedule):
        self.pipe, self.callback, self.setup = pipe, callback, setup

    def __call__(self, info: dict[str, Any]) -> None:
        if info["i"] > 0:  # fd reports x at the start of step i: the end of step i - 1
            self.emit(info["i"] - 1, info["x"])

    def finish(self, latents: Tensor) -> None:
        self.emit(len(self.setup.schedule) - (1 if self.setup.solver != "ddim" else 0) - 1, latents)

    def emit(self, i: int, x: Tensor) -> None:
        if self.setup.solver == "dpmpp_2m":  # back to the scheduler's variance-preserving space
            x = x / (self.setup.schedule[i + 1].double() ** 2 + 1).sqrt().item()
        t = self.setup.timesteps[i * (2 if self.setup.solver == "heun" else 1)]  # Heun: two calls a step
        returned = self.callback(self.pipe, i, t, {"latents": x})
        if returned and returned.get("latents", x) is not x:
            raise ValueError("callback_on_step_end returned new latents; an accelerated pipeline cannot take them "
                             "(undo(pipe) to change latents between steps)")


def accelerate(pipe: Any, solver: str = "dpmpp_2m", cuda_graph: bool = True, deepcache: Any = None,
               skip_tuning: Any = None) -> Acceleration:
    """Makes a diffusers DDPMPipeline / DDIMPipeline / StableDiffusionPipeline sample through this library:
    `pipe(...)` keeps its signature and returns what the pipeline's own loop returns with the diffusers scheduler of
    `solver` ("ddim", "euler", "heun", "dpmpp_2m"; see scheduler_like), through a captured fd.Sampler on CUDA
    (`cuda_graph`; eager with a step callback or DDIM's eta > 0). `deepcache` /
    `skip_tuning`: an fd.unet.DeepCacheConfig / SkipTuningConfig put on the U-Net. `undo(pipe)` restores it all.

    >>> fd.integrations.diffusers.accelerate(pipe, solver="dpmpp_2m")
    >>> images = pipe(batch_size=16, num_inference_steps=20).images
    """
    from .. import unet as fd_unet

    if getattr(pipe, "_fd_acceleration", None) is not None:
        raise ValueError("pipe is already accelerated; undo(pipe) first to change the settings")
    if type(pipe).__name__ not in UNET_PIPELINES + SD_PIPELINES:
        raise TypeError(f"pipe must be a diffusers {', '.join(UNET_PIPELINES + SD_PIPELINES)}, got {describe(pipe)}")
    if solver not in PIPELINE_SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(map(repr, PIPELINE_SOLVERS))}, got {solver!r}")
    check_bool("cuda_graph", cuda_graph)
    if deepcache is not None and not isinstance(deepcache, fd_unet.DeepCacheConfig):
        raise TypeError(f"deepcache must be an fd.unet.DeepCacheConfig or None, got {describe(deepcache)}")
    if skip_tuning is not None and not isinstance(skip_tuning, fd_unet.SkipTuningConfig):
        raise TypeError(f"skip_tuning must be an fd.unet.SkipTuningConfig or None, got {describe(skip_tuning)}")
    scheduler = scheduler_like(pipe.scheduler, PIPELINE_SOLVERS[solver])
    from_diffusers(scheduler, 1)  # refuses, by name, a configuration the solver cannot reproduce
    handles = []
    try:  # all or nothing: a U-Net method that cannot go on takes off the ones already put on
        if deepcache is not None:
            handles.append(fd_unet.apply_deepcache(pipe.unet, deepcache))
        if skip_tuning is not None:
            handles.append(fd_unet.apply_skip_tuning(pipe.unet, skip_tuning))
    except BaseException:
        for handle in reversed(handles):
            handle.disable()
        raise
    acceleration = Acceleration(pipe, type(pipe), scheduler, solver, pipe.unet, pipe.scheduler, cuda_graph, handles)
    call = _accelerated_sd_call if type(pipe).__name__ in SD_PIPELINES else _accelerated_call
    pipe.__class__ = type(f"Accelerated{type(pipe).__name__}", (type(pipe),), {"__call__": _pipeline_call(call)})
    pipe._fd_acceleration = acceleration
    return acceleration


def undo(pipe: Any) -> None:
    """Restores a pipeline that `accelerate` changed: its class and call, and the U-Net without the hooks."""
    acceleration = getattr(pipe, "_fd_acceleration", None)
    if acceleration is None:
        raise ValueError(f"pipe was not accelerated by fd.integrations.diffusers.accelerate ({describe(pipe)})")
    for handle in reversed(acceleration.handles):
        handle.disable()
    pipe.__class__ = acceleration.original_class
    del pipe._fd_acceleration
