"""`accelerate(pipe)` / `undo(pipe)`: a diffusers pipeline samples through this library, keeping its own call.

Conditional pipelines (Stable Diffusion txt2img and img2img, SDXL base and refiner, SD3, Flux) run their own
`__call__`: prompt encoding, latents (img2img's noised image, SDXL's denoising_start / end, Flux's packing and
dynamic shift) and decoding are the pipeline's own code. Its scheduler is replaced by an `AcceleratedScheduler`,
and its network (U-Net or transformer) answers the loop's first call with zeros while recording the call's
conditioning: at the first `scheduler.step` the whole loop runs in this library (one fd.Sampler: one CUDA graph per
configuration on a GPU), classifier-free guidance as one batched network call and one fused combine, and the
pipeline's remaining iterations are skipped (`interrupt`). With `callback_on_step_end` the pipeline's own loop runs
instead, each step a FusedScheduler step. The unconditional DDPM / DDIM pipelines are sampled by a loop of their own
here (their loops scale neither the noise nor the model input for sigma schedulers).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ... import ops
from ...context import current_model_call
from ...engine import Sampler
from ...checks import check_bool, check_count, check_real, describe
from ...solvers import Plan, get_solver, run
from .fused_scheduler import FusedScheduler
from .schedulers import Setup, adapter_of, from_diffusers, scheduler_like


@dataclass(frozen=True)
class Family:
    """How a pipeline's loop calls its network. network: the pipeline attribute holding it; timestep_divisor: what
    the pipeline divides the scheduler's timestep by (Flux: 1000, in the latents' dtype); separate_cfg: the call
    argument of guidance made by two network calls, positive then negative (Flux's true CFG), else guidance is one
    batched call [uncond, cond] with the pipeline's `guidance_scale`; unsupported: call arguments that change the
    loop's arithmetic, refused unless at their default."""

    network: str = "unet"
    timestep_divisor: float | None = None
    separate_cfg: str | None = None
    unsupported: tuple[str, ...] = ()


FAMILIES = {
    "StableDiffusionPipeline": Family(unsupported=("guidance_rescale",)),
    "StableDiffusionImg2ImgPipeline": Family(),
    "StableDiffusionXLPipeline": Family(unsupported=("guidance_rescale",)),
    "StableDiffusionXLImg2ImgPipeline": Family(unsupported=("guidance_rescale",)),
    "StableDiffusion3Pipeline": Family("transformer", unsupported=("skip_guidance_layers",)),
    # IP-Adapter changes a shared attention-kwargs dict between Flux's two guided calls
    "FluxPipeline": Family("transformer", timestep_divisor=1000.0, separate_cfg="true_cfg_scale", unsupported=(
        "ip_adapter_image", "ip_adapter_image_embeds", "negative_ip_adapter_image", "negative_ip_adapter_image_embeds")),
}
UNCONDITIONAL = ("DDPMPipeline", "DDIMPipeline")
# arguments with which the pipeline's own loop runs step by step (each step through the FusedScheduler API)
STEPWISE_ARGUMENTS = ("callback_on_step_end", "callback")


def _flatten(kwargs: dict[str, Any], prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, the rest) of network keyword arguments, nested dicts flattened to 'outer.inner' names (tensors are
    copied into a captured graph per call; the rest is fixed per model)."""
    tensors, constants = {}, {}
    for name, value in kwargs.items():
        if isinstance(value, dict) and any(isinstance(v, Tensor) for v in value.values()):
            inner = _flatten(value, f"{prefix}{name}.")
            tensors.update(inner[0])
            constants.update(inner[1])
        elif isinstance(value, Tensor):
            tensors[prefix + name] = value
        else:
            constants[prefix + name] = value
    return tensors, constants


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *outer, inner = name.split(".")
        target = nested
        for part in outer:
            target = target.setdefault(part, {})
        target[inner] = value
    return nested


class PipelineDenoiser(nn.Module):
    """The solver's model for a pipeline's whole loop. Call k of a run (fd.current_model_call, plus `first_call` for a
    run that starts mid-schedule) reads row k of per-call tables its scheduler's adapter made: the factor from the
    solver's state to the network's input, the scheduler's timestep, and the row turning the network's output into
    the solver's input, with the guidance scale folded in. It makes the pipeline's network call(s) with the
    conditioning the loop's first iteration recorded (`calls`: one (sample name, constants, tensor prefix) per
    network call of a step; two for separate guidance, positive then negative) and one fused combine: per call
    the network and at most two launches, in eager runs and captured graphs alike."""

    def __init__(self, network: nn.Module, calls: list[tuple[str, dict[str, Any], str]], guidance: str,
                 timestep_divisor: float | None, setup: Setup, first_call: int, scale: float):
        super().__init__()
        self.network, self.calls, self.guidance = network, calls, guidance
        self.timestep_divisor, self.first_call = timestep_divisor, first_call
        scales = setup.adapter.network_scales(setup)
        self.scales = None if scales is None else scales.float()[:, None]
        self.timesteps = setup.timesteps
        self.rows = setup.adapter.output_rows(setup)  # [calls, 2] over [x, network output], float64
        self.reads_x = bool((self.rows[:, 0] != 0).any())  # the flow and timestep schedulers take the output itself
        self.combine = torch.empty(len(self.rows), 3 if guidance != "none" else 2)
        self.scale: float | None = None
        self.set_scale(scale)
        self._prepared: tuple | None = None
        # [ids of the conditioning tensors, each network call's kwargs]: a list changed in place, since setting a
        # Module attribute costs ~5 us
        self._kwargs_for: list[Any] = [None, None]

    def set_scale(self, scale: float) -> None:
        """The guidance scale, written into the combine table in place (a captured graph replays it)."""
        if scale == self.scale:
            return
        self.scale = scale
        x_row, out_row = self.rows[:, 0], self.rows[:, 1]
        table = self.rows if self.guidance == "none" else torch.stack([x_row, out_row * (1 - scale), out_row * scale], 1)
        self.combine.copy_(table)

    def _prepare(self, x: Tensor) -> None:
        """The per-call rows as views made once per device, dtype and batch (indexing a table costs ~1 us on the
        host, every call), and the kwargs of each network call once per set of conditioning tensors."""
        key = (x.device, x.dtype, len(x))
        if self._prepared == key:
            return
        self.combine, self.timesteps = self.combine.to(x.device), self.timesteps.to(x.device)
        timesteps = self.timesteps if self.timestep_divisor is None else (
            self.timesteps.to(x.dtype) / self.timestep_divisor)
        batch = 2 * len(x) if self.guidance == "batched" else len(x)
        self._timestep_rows = list(timesteps[:, None].expand(-1, batch).unbind())
        self._combine_rows, self._output_rows = list(self.combine.unbind()), list(self.combine[:, 1:].unbind())
        self._scale_rows = None if self.scales is None else list(self.scales.to(x.device).unbind())
        self._lincomb = ops.lincomb_on(x.device)
        self._prepared = key

    def _network_kwargs(self, tensors: dict[str, Tensor]) -> list[dict[str, Any]]:
        """Each network call's keyword arguments but the sample and timestep, nested as the network takes them; made
        again only for other conditioning tensors (compared by identity: the kept ones stay alive, so no id repeats)."""
        ids = tuple(map(id, tensors.values()))
        if ids != self._kwargs_for[0]:
            kwargs = []
            for _, constants, prefix in self.calls:
                own = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
                kwargs.append(_unflatten({**constants, **own}))
            self._kwargs_for[:] = ids, kwargs
        return self._kwargs_for[1]

    def forward(self, x: Tensor, level: Tensor, **tensors: Tensor) -> Tensor:
        self._prepare(x)
        k = current_model_call().index + self.first_call
        x_in = x if self._scale_rows is None else self._lincomb([x], self._scale_rows[k])
        sample = torch.cat([x_in, x_in]) if self.guidance == "batched" else x_in
        timestep, outputs = self._timestep_rows[k], []
        for (sample_name, _, _), kwargs in zip(self.calls, self._network_kwargs(tensors)):
            output = _first(self.network(**kwargs, **{sample_name: sample, "timestep": timestep}))
            outputs.append(output if output.dtype == x.dtype else output.to(x.dtype))
        if self.guidance == "batched":  # [uncond, cond]
            outputs = list(outputs[0].chunk(2))
        elif self.guidance == "separate":  # (positive, negative): as (uncond, cond) = (negative, positive)
            outputs = outputs[::-1]
        if not self.reads_x:
            return outputs[0] if len(outputs) == 1 else self._lincomb(outputs, self._output_rows[k])
        return self._lincomb([x, *outputs], self._combine_rows[k])


def _first(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


class _ZeroOutput(tuple):
    """What the probed network returns: indexable like return_dict=False's tuple and with `.sample`."""

    @property
    def sample(self) -> Tensor:
        return self[0]


class AcceleratedScheduler(FusedScheduler):
    """The scheduler of an accelerated pipeline: a FusedScheduler whose first `step` of a whole-run call runs the
    whole loop (see the module docstring)."""

    def __init__(self, reference: Any, acceleration: "Acceleration"):
        super().__init__(reference)
        self.acceleration = acceleration
        self._result: Tensor | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, sigmas: Any = None,
                      timesteps: Any = None, **options: Any) -> None:
        super().set_timesteps(num_inference_steps, device, sigmas, timesteps, **options)
        self._result = None

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, eta: float | None = None,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: Tensor | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, return_dict: bool = True):
        acceleration = self.acceleration
        if not acceleration.whole_run:
            return super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator,
                                variance_noise, s_churn, s_tmin, s_tmax, s_noise, return_dict)
        if self._result is None:
            options = self._step_options(eta, use_clipped_model_output, variance_noise, s_churn, s_tmin, s_tmax,
                                         s_noise)
            self._result = acceleration.run_loop(self, timestep, sample, options, generator)
            acceleration.pipe._interrupt = True  # the pipeline skips the iterations the loop has made
        return _Done(self._result)


class _Done(tuple):
    """step's result once the whole loop has run: the final latents, as prev_sample and [0]."""

    def __new__(cls, latents: Tensor):
        return super().__new__(cls, (latents,))

    @property
    def prev_sample(self) -> Tensor:
        return self[0]


@dataclass
class Acceleration:
    """What `accelerate` changed on a pipeline, for `undo` (its class, scheduler, network forward, U-Net hooks), and
    what it built (models and samplers, kept per configuration so a CUDA graph is captured once)."""

    pipe: Any
    original_class: type
    family: Family | None  # None: an unconditional U-Net pipeline (DDPM, DDIM)
    reference: Any  # the diffusers scheduler whose loop the pipeline reproduces
    original_scheduler: Any
    network: nn.Module
    cuda_graph: bool
    handles: list[Any]
    scheduler: FusedScheduler | None = None  # the pipeline's scheduler while accelerated (conditional pipelines)
    original_forward: Any = None  # the network's instance forward before accelerate (hooks), or None
    whole_run: bool = False  # this call's loop runs in this library (no step callback)
    probing: bool = False  # the network answers with zeros and records its calls
    probes: list[tuple[tuple, dict]] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)  # this call's arguments, bound to the pipeline's signature
    models: dict[Any, Any] = field(default_factory=dict)
    plans: dict[Any, Plan] = field(default_factory=dict)
    samplers: dict[Any, Sampler] = field(default_factory=dict)
    setups: dict[Any, Setup] = field(default_factory=dict)

    @property
    def solver(self) -> str:
        return adapter_of(self.reference).solver

    @functools.cached_property
    def forward_parameters(self) -> list[str]:
        """The network forward's parameter names after self, in order (the first is the sample)."""
        return list(inspect.signature(type(self.network).forward).parameters)[1:]

    @functools.cached_property
    def call_signature(self) -> inspect.Signature:
        return inspect.signature(self.original_class.__call__)

    @functools.cached_property
    def _call_parameters(self) -> dict[str, tuple[int | None, Any]]:
        """The pipeline call's parameters: name -> (position after self, None for keyword-only; default or None)."""
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        parameters = list(self.call_signature.parameters.values())[1:]
        return {p.name: (index if p.kind in positional else None, None if p.default is p.empty else p.default)
                for index, p in enumerate(parameters)}

    def call_arguments(self, args: tuple, kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
        """The values of `names` in a pipeline call, defaults applied, as its __call__ binds them: read off args and
        kwargs (binding the whole signature costs ~50 us a call); names the call neither has nor was given are left
        out."""
        parameters, found = self._call_parameters, {}
        for name in names:
            if name in kwargs:
                found[name] = kwargs[name]
            elif name in parameters:
                position, default = parameters[name]
                found[name] = args[position] if position is not None and position < len(args) else default
        return found

    def check_pipeline(self, pipe: Any) -> None:
        """The pipeline still holds the network and scheduler it was accelerated with (the models and samplers built
        for them would run the old ones)."""
        network = "unet" if self.family is None else self.family.network
        scheduler = self.original_scheduler if self.scheduler is None else self.scheduler
        for name, kept in ((network, self.network), ("scheduler", scheduler)):
            if getattr(pipe, name) is not kept:
                raise ValueError(f"pipe.{name} was replaced after accelerate(pipe); call undo(pipe) and accelerate it "
                                 "again to sample with the new one")

    # --- conditional pipelines: the network probed, the loop run at the first step ---------------------------------

    def probe(self, *args: Any, **kwargs: Any) -> Any:
        """The network's forward while accelerated: in a whole-run call, the calls the pipeline's loop makes are
        recorded and answered with zeros (the loop itself runs at the first step); otherwise the network runs."""
        if not self.probing:
            forward = self.original_forward or type(self.network).forward.__get__(self.network)
            return forward(*args, **kwargs)
        names = self.forward_parameters
        if len(args) > len(names):
            raise TypeError(f"{type(self.network).__name__}.forward takes {len(names)} arguments, got {len(args)}")
        # by name, as bound to the forward's signature (the sample first); dicts copied, the pipeline may change them
        arguments = {name: value for name, value in zip(names, args)}
        arguments.update(kwargs)
        arguments = {names[0]: arguments.pop(names[0]), **{k: (dict(v) if isinstance(v, dict) else v)
                                                             for k, v in arguments.items()}}
        self.probes.append(arguments)
        return _ZeroOutput((torch.zeros_like(arguments[names[0]]),))

    def network_model(self, setup: Setup, latents: Tensor, first_call: int) -> tuple[Any, dict[str, Tensor]]:
        """(the solver's model, its tensor arguments) from the calls the loop's first iteration made."""
        probes, self.probes = self.probes, []
        family = self.family
        if not probes or len(probes) > 2 or (len(probes) == 2 and family.separate_cfg is None):
            raise RuntimeError(f"the pipeline's loop called its {family.network} {len(probes)} times before its first "
                               f"step; an accelerated {self.original_class.__name__} reproduces one call per step, or "
                               "two for separate guidance")
        sample_name = next(iter(probes[0]))
        if probes[0][sample_name].shape[0] == 2 * latents.shape[0]:
            guidance, scale = "batched", check_real("guidance_scale", self.pipe.guidance_scale)
        elif len(probes) == 2:
            guidance, scale = "separate", check_real(family.separate_cfg, self.arguments[family.separate_cfg])
        else:
            guidance, scale = "none", 1.0
        calls, tensors, constants_key = [], {}, []
        for k, arguments in enumerate(probes):
            own, constants = _flatten({n: v for n, v in arguments.items() if n not in (sample_name, "timestep")})
            prefix = f"call{k}."
            tensors.update({prefix + n: v for n, v in own.items()})
            calls.append((sample_name, constants, prefix))
            constants_key.append(repr(sorted(constants.items())))
        key = (id(setup), first_call, tuple(constants_key), guidance)  # setups are cached: their ids are stable
        if key not in self.models:
            self.models[key] = PipelineDenoiser(self.network, calls, guidance, family.timestep_divisor, setup,
                                                first_call, scale)
        model = self.models[key]
        model.set_scale(scale)
        return model, tensors

    def run_loop(self, scheduler: AcceleratedScheduler, timestep: Any, latents: Tensor, step_options: dict[str, Any],
                 generator: Any) -> Tensor:
        """The pipeline's whole loop from its first step: from the pipeline's `latents` at its first timestep over
        the timesteps it would step through (`_num_timesteps` from there), returned as the pipeline's latents."""
        setup = scheduler._require_timesteps("step")
        start = scheduler._start_call(timestep)
        count = getattr(self.pipe, "_num_timesteps", None) or len(scheduler.timesteps) - start
        first, steps = start // scheduler.order, -(-count // scheduler.order)
        key = (id(setup), first, steps, tuple(sorted(step_options.items())), latents.device)
        if key not in self.plans:
            adapter = scheduler.adapter
            solver = get_solver(adapter.solver, **adapter.solver_options(scheduler.reference,
                                                                          {**adapter.step_options, **step_options}))
            if first:
                solver = adapter.tail_solver(Setup(**{**vars(setup), "solver": solver}))
            # the whole rest of the schedule, so each step keeps its coefficients; the run stops after `steps`
            self.plans[key] = Plan(solver, setup.schedule[first:].to(latents.device), steps)
        model, tensors = self.network_model(setup, latents, start)
        self.probing = False  # the loop's own network calls run the network
        try:
            into, out_of = setup.latent_scale(first), setup.latent_scale(first + steps)
            x = self.sample(self.plans[key], model, latents if into == 1 else latents * into, tensors, generator)
        finally:
            self.probing = True  # the pipeline's remaining iterations, if it has no interrupt, cost nothing
        return x if out_of == 1 else x / out_of

    def sample(self, plan: Plan, model: Any, x: Tensor, extra_args: dict[str, Any] | None, generator: Any,
               callback: run.Callback | None = None) -> Tensor:
        """One run of `plan`: a cached fd.Sampler (one CUDA graph per configuration) on CUDA when the run draws no
        noise or draws it from one CUDA generator and has no callback, else eagerly with the pipeline's generator."""
        solver = plan.solver
        if solver.stochastic and isinstance(generator, (list, tuple)):
            raise ValueError(f"generator: a list of generators cannot seed {solver.name}'s step noise, which this "
                             "library draws from one generator; pass one torch.Generator")
        step_generator = generator if isinstance(generator, torch.Generator) else None
        graphable = (self.cuda_graph and x.device.type == "cuda" and callback is None
                     and (not solver.stochastic or step_generator is None or step_generator.device == x.device))
        if graphable:
            key = (id(model), id(plan))
            sampler = self.samplers.get(key)
            if sampler is None:
                sampler = self.samplers[key] = Sampler(model, solver, plan.schedule, generator=step_generator,
                                                       stop=plan.stop_at)
            sampler.generator = step_generator
            return sampler(x, extra_args=extra_args)
        return run.sample(plan, model, x, None, extra_args, callback, True, generator=step_generator,
                          k_diffusion_rng=False)

    # --- unconditional pipelines ------------------------------------------------------------------------------------

    def setup(self, steps: int, eta: float) -> Setup:
        """from_diffusers for this step count (and DDIM's eta), made once."""
        options = {"eta": eta} if "eta" in adapter_of(self.reference).step_options else {}
        key = (steps, tuple(options.items()))
        if key not in self.setups:
            self.setups[key] = from_diffusers(self.reference, steps, **options)
        return self.setups[key]


def _bound_arguments(pipe: Any, args: tuple, kwargs: dict) -> tuple[dict[str, Any], inspect.Signature]:
    """The call's arguments by name, defaults applied, as the pipeline's own __call__ binds them."""
    signature = pipe._fd_acceleration.call_signature
    bound = signature.bind(pipe, *args, **kwargs)
    bound.apply_defaults()
    arguments = {**bound.arguments.pop("kwargs", {}), **bound.arguments}
    arguments.pop("self")
    return arguments, signature


def _is_default(value: Any, parameter: inspect.Parameter | None) -> bool:
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return value is None
    return value is parameter.default or (type(value) is type(parameter.default) and value == parameter.default)


def _conditional_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    """An accelerated conditional pipeline's __call__: the pipeline's own, its loop run by this library."""
    acceleration: Acceleration = self._fd_acceleration
    acceleration.check_pipeline(self)
    family, signature = acceleration.family, acceleration.call_signature
    names = (*family.unsupported, *STEPWISE_ARGUMENTS, "denoising_end", *filter(None, (family.separate_cfg,)))
    arguments = acceleration.call_arguments(args, kwargs, names)
    refused = sorted(name for name in family.unsupported
                     if name in arguments and not _is_default(arguments[name], signature.parameters.get(name)))
    if refused:
        raise ValueError(f"an accelerated {acceleration.original_class.__name__} does not take {refused} (they "
                         "change the loop's arithmetic); undo(pipe) to use them")
    stepwise = any(not _is_default(arguments[name], signature.parameters.get(name))
                   for name in STEPWISE_ARGUMENTS if name in arguments)
    # a hand-off of a two-call scheduler (Heun) may end between its two calls: the pipeline's own loop makes it
    stepwise |= acceleration.scheduler.order > 1 and arguments.get("denoising_end") is not None
    acceleration.arguments, acceleration.probes = arguments, []
    acceleration.whole_run = acceleration.probing = not stepwise
    try:
        with torch.no_grad():
            return acceleration.original_class.__call__(self, *args, **kwargs)
    finally:
        acceleration.whole_run = acceleration.probing = False
        acceleration.probes = []


def _unconditional_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    """An accelerated DDPMPipeline / DDIMPipeline's __call__, with the pipeline's signature and defaults: its noise
    drawn as it draws it, the loop of the reproduced scheduler (noise scaled by its init_noise_sigma, the model
    input by the adapter), the images post-processed as the pipeline does."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    acceleration: Acceleration = self._fd_acceleration
    acceleration.check_pipeline(self)
    arguments, signature = _bound_arguments(self, args, kwargs)
    taken = {"batch_size", "generator", "num_inference_steps", "output_type", "return_dict", "eta"}
    refused = sorted(name for name, value in arguments.items() if name not in taken and value  # False is None here
                     and not _is_default(value, signature.parameters.get(name)))
    if refused:
        raise ValueError(f"an accelerated {acceleration.original_class.__name__} does not take {refused}; undo(pipe) "
                         "to use them")
    steps = check_count("num_inference_steps", arguments["num_inference_steps"])
    eta = check_real("eta", arguments.get("eta", 0.0), at_least=0)
    if eta != 0 and "eta" not in adapter_of(acceleration.reference).step_options:
        raise ValueError(f"eta={eta} is DDIM's; this pipeline samples with solver={acceleration.solver!r}")
    size = self.unet.config.sample_size
    shape = (check_count("batch_size", arguments["batch_size"]), self.unet.config.in_channels,
             *((size, size) if isinstance(size, int) else size))
    generator = arguments["generator"]
    if isinstance(generator, list) and len(generator) != shape[0]:
        raise ValueError(f"generator: a list of {len(generator)} generators for batch_size={shape[0]}; give one per "
                         "image (or a single generator)")
    noise = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
    setup = acceleration.setup(steps, eta)
    key = (steps, eta)
    if key not in acceleration.models:  # the U-Net as the loop calls it, its timestep and scalings per call tabled
        acceleration.models[key] = PipelineDenoiser(self.unet, [("sample", {"return_dict": False}, "")], "none",
                                                    None, setup, 0, 1.0)
    with torch.no_grad():
        plan_key = (key, noise.device)
        if plan_key not in acceleration.plans:
            acceleration.plans[plan_key] = Plan(setup.solver, setup.schedule.to(noise.device))
        image = acceleration.sample(acceleration.plans[plan_key], acceleration.models[key],
                                    noise * setup.init_noise_sigma, None, generator)
    image = (image / 2 + 0.5).clamp(0, 1)
    output_type = arguments["output_type"]
    if output_type != "pt":
        image = image.cpu().permute(0, 2, 3, 1).numpy()  # sync-ok: the output, after the loop
        if output_type == "pil":
            image = self.numpy_to_pil(image)
    return ImagePipelineOutput(images=image) if arguments["return_dict"] else (image,)


def accelerate(pipe: Any, solver: str | None = None, cuda_graph: bool = True, deepcache: Any = None,
               skip_tuning: Any = None) -> Acceleration:
    """Makes a diffusers pipeline sample through this library: `pipe(...)` keeps its signature, defaults and
    output and returns what its own loop returns with the diffusers scheduler of `solver` (default: the pipeline's
    own scheduler; a solver name picks the scheduler it reproduces, `FusedScheduler.SOLVERS`, built from the
    pipeline's scheduler config), through a captured fd.Sampler on CUDA (`cuda_graph`). Pipelines:
    DDPMPipeline, DDIMPipeline, StableDiffusion(Img2Img)Pipeline, StableDiffusionXL(Img2Img)Pipeline,
    StableDiffusion3Pipeline, FluxPipeline. `deepcache` / `skip_tuning`: an fd.unet.DeepCacheConfig /
    SkipTuningConfig put on the U-Net. All or nothing: what cannot be done is refused by name before anything is
    changed. `undo(pipe)` restores it all.

    >>> fd.integrations.diffusers.accelerate(pipe)
    >>> images = pipe(prompt_embeds=..., num_inference_steps=20).images
    """
    from ... import unet as fd_unet

    if getattr(pipe, "_fd_acceleration", None) is not None:
        raise ValueError("pipe is already accelerated; undo(pipe) first to change the settings")
    name = type(pipe).__name__
    if name not in UNCONDITIONAL and name not in FAMILIES:
        raise TypeError(f"pipe must be a diffusers {', '.join((*UNCONDITIONAL, *FAMILIES))}, got {describe(pipe)}")
    family = FAMILIES.get(name)
    if solver is not None and solver not in FusedScheduler.SOLVERS:
        raise ValueError(f"solver must be None (the pipeline's scheduler) or one of "
                         f"{', '.join(map(repr, FusedScheduler.SOLVERS))}, got {solver!r}")
    check_bool("cuda_graph", cuda_graph)
    if deepcache is not None and not isinstance(deepcache, fd_unet.DeepCacheConfig):
        raise TypeError(f"deepcache must be an fd.unet.DeepCacheConfig or None, got {describe(deepcache)}")
    if skip_tuning is not None and not isinstance(skip_tuning, fd_unet.SkipTuningConfig):
        raise TypeError(f"skip_tuning must be an fd.unet.SkipTuningConfig or None, got {describe(skip_tuning)}")
    network_name = "unet" if family is None else family.network
    network = getattr(pipe, network_name)
    if (deepcache is not None or skip_tuning is not None) and network_name != "unet":
        raise TypeError(f"DeepCache and Skip-Tuning work on U-Nets; {name} denoises with a {type(network).__name__}")
    config = getattr(network, "config", {})
    if config.get("out_channels") not in (None, config.get("in_channels")):
        raise TypeError(f"{name}'s {network_name} predicts {config.get('out_channels')} channels for "
                        f"{config.get('in_channels')} (a learned variance or an inpainting model): not supported")
    reference = pipe.scheduler if solver is None else scheduler_like(pipe.scheduler, FusedScheduler.SOLVERS[solver])
    FusedScheduler(reference)  # refuses, by name, a scheduler or configuration that cannot be reproduced
    handles = []
    try:  # all or nothing: a U-Net method that cannot go on takes off the ones already put on
        if deepcache is not None:
            handles.append(fd_unet.apply_deepcache(network, deepcache))
        if skip_tuning is not None:
            handles.append(fd_unet.apply_skip_tuning(network, skip_tuning))
    except BaseException:
        for handle in reversed(handles):
            handle.disable()
        raise
    acceleration = Acceleration(pipe, type(pipe), family, reference, pipe.scheduler, network, cuda_graph, handles)
    if family is None:
        call = _unconditional_call
    else:
        acceleration.scheduler = AcceleratedScheduler(reference, acceleration)
        acceleration.original_forward = network.__dict__.get("forward")  # an instance forward (hooks), or None
        network.forward = acceleration.probe
        pipe.scheduler = acceleration.scheduler
        call = _conditional_call
    pipe.__class__ = type(f"Accelerated{name}", (type(pipe),), {"__call__": call})
    pipe._fd_acceleration = acceleration
    return acceleration


def undo(pipe: Any) -> None:
    """Restores a pipeline that `accelerate` changed: its class, call and scheduler, its network's forward and the
    U-Net without the hooks."""
    acceleration = getattr(pipe, "_fd_acceleration", None)
    if acceleration is None:
        raise ValueError(f"pipe was not accelerated by fd.integrations.diffusers.accelerate ({describe(pipe)})")
    network = acceleration.network
    if acceleration.family is not None:
        if network.__dict__.get("forward") == acceleration.probe:
            del network.__dict__["forward"]
            if acceleration.original_forward is not None:  # an instance forward (hooks) it wrapped
                network.forward = acceleration.original_forward
        pipe.scheduler = acceleration.original_scheduler
    for handle in reversed(acceleration.handles):
        handle.disable()
    pipe.__class__ = acceleration.original_class
    del pipe._fd_acceleration
