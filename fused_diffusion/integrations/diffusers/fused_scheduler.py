"""`FusedScheduler`: diffusers' scheduler API over this library's solvers, for frameworks that keep their own loop."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...checks import check_count, check_device, check_real, describe
from ...solvers import SOLVERS as SOLVER_CLASSES, Plan, check_input, get_solver, run
from .schedulers import ADAPTERS, Setup, adapter_of, from_diffusers


class _NeedsModel(Exception):
    """Raised inside a multi-call solver step when the model output for its next call is not in yet: `x` is that
    call's input, which diffusers' Heun returns from the step that asked for it."""

    def __init__(self, x: Tensor):
        super().__init__()
        self.x = x


def _options_key(options: dict[str, Any]) -> tuple:
    """set_timesteps options as a hashable key, lists and arrays by their values."""
    def value(v: Any) -> Any:
        if isinstance(v, (list, tuple, Tensor)) or hasattr(v, "__array__"):
            return tuple(torch.as_tensor(v).double().reshape(-1).tolist())  # sync-ok: set_timesteps' own host values
        return v

    return tuple(sorted((name, value(v)) for name, v in options.items()))


class StepOutput(tuple):
    """What `step` returns: (prev_sample, pred_original_sample) as a tuple and by name, diffusers' SchedulerOutput
    shape; the data estimate is computed only when read (pipelines read prev_sample alone)."""

    def __new__(cls, prev_sample: Tensor, pred_original: Any):
        result = super().__new__(cls, (prev_sample, None))
        result._pred_original, result._value = pred_original, None
        return result

    @property
    def prev_sample(self) -> Tensor:
        return tuple.__getitem__(self, 0)

    @property
    def pred_original_sample(self) -> Tensor:
        if self._value is None:
            self._value = self._pred_original()
        return self._value

    def __getitem__(self, index: Any) -> Any:
        return self.pred_original_sample if index in (1, -1) else tuple.__getitem__(self, index)

    def __iter__(self):
        yield self.prev_sample
        yield self.pred_original_sample


class FusedScheduler:
    """diffusers' scheduler API backed by this library's solvers:
    `pipe.scheduler = FusedScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")` and the pipeline runs
    unchanged, equal to the diffusers scheduler whose loop that solver reproduces (`SOLVERS`), configured from the
    same config. `FusedScheduler(scheduler)` wraps a configured diffusers scheduler directly.

    `step` makes the solver's update as one fused launch with coefficients read from device tables (plus one
    elementwise op turning the model output into the solver's input, and the multistep schedulers' change of
    space), and moves the step index on the host: no host sync per step. The run starts where the pipeline says
    (`set_begin_index`, as img2img pipelines call it) or, without that, at the first `timestep` given to `step`
    (looked up once per run); later steps follow `timesteps` in order, as every pipeline loop does. Heun is stepped
    twice per step as diffusers' is (its `order` is 2). The step's result has `prev_sample` and
    `pred_original_sample` (computed only when read).
    """

    # fd solver -> the diffusers scheduler whose loop it reproduces (read off the adapters, one home)
    SOLVERS = {adapter.solver: adapter.name for adapter in ADAPTERS.values()}

    def __init__(self, reference: Any, solver: str | None = None):
        self.adapter = adapter_of(reference)
        if solver is not None and solver != self.adapter.solver:
            raise ValueError(f"solver={solver!r} does not reproduce {self.adapter.name} ({self.adapter.solver!r} does)")
        self.reference, self.solver = reference, self.adapter.solver
        self.adapter.check(reference)  # refuses, by name, a configuration the solver cannot reproduce
        self.timesteps: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._setup: Setup | None = None
        self._tables: dict[Any, tuple] = {}
        self._begin_index: int | None = None

    @classmethod
    def from_config(cls, config: Any, solver: str = "dpmpp_2m", **overrides: Any) -> "FusedScheduler":
        """From any diffusers scheduler's config (the training schedule and spacing carry over), as diffusers'
        `from_config`; `overrides` change config values."""
        import diffusers

        if solver not in cls.SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, cls.SOLVERS))}, got {solver!r}")
        return cls(getattr(diffusers, cls.SOLVERS[solver]).from_config(config, **overrides))

    @property
    def config(self) -> Any:
        return self.reference.config

    @property
    def order(self) -> int:
        """Entries of `timesteps` per step: the solver's model calls per step (diffusers' Heun lists two)."""
        return SOLVER_CLASSES[self.solver].calls_per_step

    def _require_timesteps(self, what: str) -> Setup:
        if self._setup is None:
            raise RuntimeError(f"call set_timesteps(num_inference_steps) before {what}")
        return self._setup

    @property
    def sigmas(self) -> Tensor:
        """The reference scheduler's sigmas (some pipelines read them)."""
        return self.reference.sigmas

    @property
    def init_noise_sigma(self) -> float:
        """The factor pipelines multiply their unit noise by: the reference scheduler's."""
        self._require_timesteps("reading init_noise_sigma")
        return float(getattr(self.reference, "init_noise_sigma", 1.0))  # flow matching starts from the noise itself

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The run's first model call is call `begin_index` of `timesteps` (img2img pipelines skip the first steps)."""
        self._begin_index = check_count("begin_index", begin_index, minimum=0)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: Any = None, timesteps: Any = None, **options: Any) -> None:
        """The run's timesteps and the solver's coefficient tables, on `device`; the next step starts a run.
        `sigmas` / `timesteps` (custom lists, their length the step count) and `options` go to the reference's
        set_timesteps where its adapter takes them (flow matching's `mu`, ...)."""
        device = check_device(device) if device is not None else torch.device("cpu")  # checked before any change
        for name, given in (("sigmas", sigmas), ("timesteps", timesteps)):
            if given is not None:
                options[name] = given
                num_inference_steps = len(given) if num_inference_steps is None else num_inference_steps
        if num_inference_steps is None:
            raise TypeError("set_timesteps needs num_inference_steps (or custom sigmas / timesteps)")
        num_inference_steps = check_count("num_inference_steps", num_inference_steps)
        key = (num_inference_steps, _options_key(options), device)
        # made once per configuration and device (a pipeline sets its timesteps every call)
        tables = self._tables.get(key)
        # a new configuration's schedule is read (and refused, if it must be) before the reference changes
        setup = tables[0] if tables is not None else from_diffusers(self.reference, num_inference_steps, **options)
        self.reference.set_timesteps(num_inference_steps, **options)  # for init_noise_sigma and add_noise
        if tables is None:
            tables = self._tables[key] = self._make_tables(setup, device)
        self.num_inference_steps = num_inference_steps
        (self._setup, self.timesteps, self._host_timesteps, self._timestep_index, self._schedule, self._into_solver,
         self._out_of_solver, self._input_scales) = tables
        self._run: run.Run | None = None
        self._eta: Any = None
        self._begin_index = None
        self._call = 0  # the next model call, an index into timesteps
        self._outputs: list[Tensor] = []  # the model outputs of the step under way (a multi-call step)
        self._step_start: Tensor | None = None  # that step's x in the solver's space

    def _make_tables(self, setup: Setup, device: torch.device) -> tuple:
        """(setup, timesteps, timesteps on the host in float64, each timestep's first call, schedule, the factors
        into and out of the solver's space per step, the model input's per call or None) for the configuration the
        reference was just set to, on `device`."""
        timesteps = self.reference.timesteps
        steps = setup.solver.num_steps(setup.schedule)
        scales = torch.tensor([setup.latent_scale(i) for i in range(steps + 1)])
        input_scales = self.adapter.input_scales(setup)
        host = timesteps.detach().to("cpu", torch.float64)
        first_calls = {}
        for call, value in enumerate(host.tolist()):  # sync-ok: a host copy, once per configuration
            first_calls.setdefault(value, call)
        return (setup, timesteps.to(device), host, first_calls, setup.schedule.to(device),
                scales[:-1].to(device), (1 / scales[1:]).to(device),
                None if input_scales is None else input_scales.to(device))

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The Euler family: the model sees x / sqrt(sigma^2 + 1) at the current call; the others: x itself."""
        self._require_timesteps("scale_model_input")
        if self._input_scales is None:
            return sample
        call = self._call if self._run is not None else self._start_call(timestep)
        if call >= len(self._input_scales):
            raise RuntimeError(f"scale_model_input after the last of {len(self.timesteps)} model calls; call "
                               "set_timesteps again for a new run")
        return sample * self._input_scales[call].to(sample.dtype)

    def _start_call(self, timestep: Any) -> int:
        """The run's first call: set_begin_index's, else where `timestep` stands in `timesteps` (one host read)."""
        if self._begin_index is not None:
            return self._begin_index
        if timestep is None:
            return 0
        if isinstance(timestep, Tensor) and timestep.dim() == 0:  # what pipelines pass: one host read
            value = timestep.item()  # sync-ok: once per run
        else:
            value = float(torch.as_tensor(timestep).reshape(-1)[0])  # sync-ok: once per run
        found = self._timestep_index.get(value)
        if found is None:
            listed = ", ".join(f"{t:g}" for t in self._host_timesteps.tolist())  # sync-ok: a host tensor, raising
            raise ValueError(f"timestep {value:g} is not one of this run's timesteps [{listed}]")
        return found

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, eta: float | None = None,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: Tensor | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, return_dict: bool = True) -> StepOutput:
        """One model call's worth of the solver from `sample` with the model's prediction `model_output` for the
        current timestep. The keywords are the union of the diffusers schedulers' `step` options; those the solver
        does not reproduce (a churn, clipped model outputs, given variance noise, eta where the scheduler has none)
        are refused unless at their default. Returns (prev_sample, pred_original_sample), also by name."""
        setup = self._require_timesteps("step")
        step_options = self._step_options(eta, use_clipped_model_output, variance_noise, s_churn, s_tmin, s_tmax,
                                          s_noise)
        check_input(sample, "sample")
        check_input(model_output, "model_output")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has shape "
                             f"{tuple(sample.shape)}; pass the model's prediction for this sample")
        if self._run is None:  # the run starts here, where the sample's shape, device and step options are known
            start = self._start_call(timestep)
            if start >= len(self.timesteps):
                raise ValueError(f"begin_index {start} is past the last of {len(self.timesteps)} timesteps")
            options = self.adapter.solver_options(self.reference, {**self.adapter.step_options, **step_options})
            solver = get_solver(self.adapter.solver, **options)
            first_step = start // self.order
            tail = self._schedule[first_step:]
            if first_step:
                solver = self.adapter.tail_solver(Setup(**{**vars(setup), "solver": solver}))
            self._run = run.Run(Plan(solver, tail), self._model, sample, generator=generator, check_finite=False)
            self._eta, self._call, self._first_step = step_options.get("eta"), start, first_step
        else:
            self._check_same_run(sample, step_options.get("eta"))
        i = self._call // self.order  # the step of the schedule
        local = i - self._first_step  # ... of the run's own plan (its schedule is the tail from the start)
        if not self._outputs:
            self._step_start = sample * self._into_solver[i].to(sample.dtype)
        self._outputs.append(model_output)
        self._call += 1
        self._run.replay_step(local)  # a multi-call step runs again from its start with the outputs so far
        self._made = 0
        try:
            x = self._run.solver.step(self._run, local, self._step_start)
        except _NeedsModel as pending:  # the step's next call: diffusers returns that call's input
            x_in, output = self._last_call
            return StepOutput(pending.x, lambda: self.adapter.denoised(setup, i, x_in, output))
        self._outputs = []
        x_in, output = self._last_call
        return StepOutput(x * self._out_of_solver[i].to(x.dtype), lambda: self.adapter.denoised(setup, i, x_in, output))

    # step's option defaults besides eta: what pipelines pass, so the common case costs one tuple comparison per step
    STEP_DEFAULTS = (False, None, 0.0, 0.0, float("inf"), 1.0)

    def _step_options(self, eta: Any, use_clipped_model_output: Any, variance_noise: Any, s_churn: Any,
                      s_tmin: Any, s_tmax: Any, s_noise: Any) -> dict[str, Any]:
        """The step options the adapter takes (eta where the scheduler has one); the others refused unless at their
        default."""
        taken = {} if eta is None else {"eta": eta}
        if eta is not None and "eta" not in self.adapter.step_options:
            if eta != 0:
                raise ValueError(f"eta={eta} is a step option of DDIMScheduler and TCDScheduler; this scheduler "
                                 f"reproduces {self.adapter.name}")
            taken = {}
        if "eta" in taken:
            check_real("eta", eta, at_least=0)
        if (use_clipped_model_output, variance_noise, s_churn, s_tmin, s_tmax, s_noise) == self.STEP_DEFAULTS:
            return taken
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
        return taken

    def _check_same_run(self, sample: Tensor, eta: Any) -> None:
        """A call after the first must continue its run: no calls past the end, the same eta, and the sample's
        shape, dtype and device (the solver's history is per run). Host-side metadata only, no sync."""
        if self._call >= len(self.timesteps):
            raise RuntimeError(f"step called {self._call + 1} times for {len(self.timesteps)} timesteps; call "
                               "set_timesteps again for a new run")
        if eta != self._eta:
            raise ValueError(f"eta changed within a run ({self._eta} at the first step, {eta} now)")
        started = self._run
        if (sample.shape, sample.dtype, sample.device) != (started.shape, started.dtype, started.device):
            raise ValueError(
                f"sample at step {self._call} (timestep {self._host_timesteps[self._call]:g}) has shape "
                f"{tuple(sample.shape)}, {sample.dtype} on {sample.device}, but this run began with "
                f"{tuple(started.shape)}, {started.dtype} on {started.device}; the scheduler keeps the solver's "
                "history per run: call set_timesteps(...) to start a run for another batch")

    def _model(self, x: Tensor, level: Tensor) -> Tensor:
        """The solver's model inside `step`: the outputs given so far for this step, in order, as the solver's input;
        a call past them suspends the step (_NeedsModel; multi-call steps, Heun's, run in the sample's own space)."""
        if self._made >= len(self._outputs):
            raise _NeedsModel(x)
        converted = self.adapter.from_output(self._setup, x, self._outputs[self._made], level)
        self._made += 1
        self._last_call = (x, converted)
        return converted

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """As the reference scheduler (img2img pipelines noise their image with it)."""
        return self.reference.add_noise(original_samples, noise, timesteps)

    def scale_noise(self, sample: Tensor, timestep: Tensor, noise: Tensor) -> Tensor:
        """As the reference flow-matching scheduler (its img2img pipelines noise their image with it)."""
        if not hasattr(self.reference, "scale_noise"):
            raise AttributeError(f"{self.adapter.name} has no scale_noise (it is flow matching's add_noise)")
        return self.reference.scale_noise(sample, timestep, noise)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"FusedScheduler({describe(self.reference)}, solver={self.solver!r})"
