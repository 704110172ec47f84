"""One sampling run and the loop every sampler shares (eager `sample_*` functions and graph capture alike).

A Run is a plan (solver, schedule, tables) plus what belongs to this run only, each part doing one job: its model
calls (`ModelCalls`: context, output checks), its step noise (`NoiseSource`), its finite checks (`FiniteWatch`), the
callback, and the solver's memory of earlier steps (`history`). Solvers read it through the methods below.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Container, Hashable

import torch
from torch import Tensor
from tqdm.auto import trange

from .. import ops
from ..checks import check_bool
from .base import Plan, Solver, table_dtype
from .finite import FiniteWatch, Source
from .model_calls import ModelCalls
from .step_noise import NoiseSampler, NoiseSource

Callback = Callable[[dict[str, Any]], None]


class Run:
    """One run of `plan` on inputs shaped like `like`, calling `model(x, *table rows, **extra_args)`.

    check_finite: watch every model output, noise draw and input for NaN / inf (one device sum each, read once after
    the loop). k_diffusion_rng: also make the draws k-diffusion makes and discards, keeping its random stream.
    grad_steps: the steps whose model calls keep their autograd graph (None: all); the others run under no_grad and
    only the solver's linear update carries gradients through them (fd.sdo).

    Besides the methods below, a run has `call_with(x, i, label, *inputs)` (one model call of step i on explicit
    inputs: ModelCalls.call) and `noise(i, at=None)` / `unused_noise(i, at=None)` (NoiseSource.draw / skip), bound
    per run so a solver step makes them without lookups in between."""

    def __init__(
        self,
        plan: Plan,
        model: Callable[..., Any],
        like: Tensor,
        *,
        extra_args: dict | None = None,
        callback: Callback | None = None,
        noise_sampler: NoiseSampler | None = None,
        generator: torch.Generator | None = None,
        check_finite: bool = True,
        k_diffusion_rng: bool = False,
        grad_steps: Container[int] | None = None,
    ):
        check_run_arguments(model, extra_args, callback, noise_sampler, generator)
        check_bool("check_finite", check_finite)
        check_bool("k_diffusion_rng", k_diffusion_rng)
        self.plan, self.solver, self.model = plan, plan.solver, model
        self.tables = plan.tables(like.device, table_dtype(like.dtype))
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device
        self.extra_args = extra_args or {}
        self.callback, self.check_finite = callback, check_finite
        # the denoised outputs of earlier steps, newest last, as many as the solver reads
        self.history: collections.deque[Tensor] = collections.deque(maxlen=max(self.solver.history, 1))
        self.finite = FiniteWatch(self.where)
        watch = self.finite if check_finite else None
        self.model_calls = ModelCalls(model, self.extra_args, self.where, n_steps=plan.n_steps, still_read=self.history,
                                      finite=watch, grad_steps=grad_steps,
                                      constant_noise=self.solver.model_output == "denoised")
        self.noise_source = NoiseSource(plan, like.shape, like.dtype, like.device, noise_sampler=noise_sampler,
                                        generator=generator, k_diffusion_rng=k_diffusion_rng, finite=watch)
        self.call_with = self.model_calls.call
        self.noise, self.unused_noise = self.noise_source.draw, self.noise_source.skip
        self._lincomb = ops.lincomb_on(like.device)
        self._values = self.tables.values

    def update_tables(self) -> None:
        """Rewrites this run's device tables in place if the plan's schedule changed since (a captured graph reads
        them by address, so they must stay the same tensors)."""
        tables = self.plan.tables(self.device, table_dtype(self.dtype))
        assert tables is self.tables, "a plan keeps one set of device tables per device, dtype and layout"

    @property
    def schedule(self) -> Tensor:
        return self.plan.schedule

    @property
    def n_steps(self) -> int:
        return self.plan.n_steps

    @property
    def calls(self) -> list[tuple[int, str]]:
        """(step, label) of each model call made so far."""
        return self.model_calls.made

    def lands_on_zero(self, i: int) -> bool:
        """Step i goes to sigma = 0: it returns the denoised estimate instead of a solver update."""
        return i == self.plan.n_steps - 1 and self.plan.ends_at_zero

    def value(self, name: str, i: int) -> Tensor:
        """Row i of table `name` broadcast over the batch: a [B] device tensor (no host sync)."""
        return self._values(name, self.shape[0])[i]

    def where(self, i: int, name: str) -> str:
        """'step i (name=value)' for messages; a name that is no table (a predicted midpoint) is shown as is."""
        if name in self.plan.host:
            return f"step {i} ({name}={float(self.plan.host[name][i]):.6g})"
        return f"step {i} ({name})"

    def call(self, x: Tensor, i: int, *names: str) -> Tensor:
        """One model call, model(x, *(table[i] for table in names), **extra_args)."""
        values, batch = self._values, self.shape[0]
        if len(names) == 1:
            return self.call_with(x, i, names[0], values(names[0], batch)[i])
        return self.call_with(x, i, names[0], *(values(name, batch)[i] for name in names))

    def replay_step(self, i: int) -> None:
        """Forgets step i's model calls, so the step can run again from its start with the same outputs."""
        self.model_calls.replay_step(i)

    def watch_prediction(self, i: int, *values: Tensor | float) -> None:
        """Queues the finite check of a learned predictor's outputs for step i (so a NaN r is not the model's)."""
        if self.check_finite:
            for value in values:
                if isinstance(value, Tensor):
                    self.finite.watch(value, Source.PREDICTOR, i)

    def watch_inputs(self, x: Tensor) -> None:
        """Queues the finite checks of what the run starts from: x and the tensor extra_args."""
        if self.check_finite:
            self.finite.watch_inputs({"x (the initial noise)": x, **{
                f"extra_args[{name!r}]": value for name, value in self.extra_args.items()
                if isinstance(value, Tensor) and value.is_floating_point()}})

    def lincomb(self, name: str, i: int, *inputs: Tensor) -> Tensor:
        """One fused update: sum_k table[name][i, k] * inputs[k] (the row's leading len(inputs) columns)."""
        return self._lincomb(inputs, self.tables.rows(name, len(inputs))[i])

    def noisy_lincomb(self, name: str, i: int, *inputs: Tensor, noise: bool, at: str | None = None) -> Tensor:
        """One fused update whose last input is fresh noise (`noise(i, at)`); with `noise` False its coefficient is 0,
        so the update reads none and the draw k-diffusion makes anyway is made only for its random stream."""
        if noise:
            return self.lincomb(name, i, *inputs, self.noise(i, at))
        self.unused_noise(i, at)
        return self.lincomb(name, i, *inputs)

    def report(self, i: int, x: Tensor, denoised: Tensor, sigma_hat: str = "sigma", **extra: Tensor) -> None:
        """k-diffusion's per-step callback dict (`extra` adds or replaces entries)."""
        if self.callback is not None:
            self.callback({"x": x, "i": i, "sigma": self.schedule[i], "sigma_hat": self.tables[sigma_hat][i],
                           "denoised": denoised, **extra})

    def finite_flags(self) -> Tensor | None:
        """One device bool per watched tensor so far: did it hold only finite values."""
        return self.finite.flags()

    def raise_if_not_finite(self, flags: Tensor | None) -> None:
        """Names the first input, noise draw or model call that held NaN or inf (one host sync, after the loop)."""
        self.finite.raise_first(flags)


def check_run_arguments(model: Any, extra_args: Any, callback: Any, noise_sampler: Any, generator: Any = None) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable, model(x, sigma, **extra_args), got {type(model).__name__}")
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError(f"extra_args must be a dict of keyword arguments for the model, got {type(extra_args).__name__}")
    for name, value in (("callback", callback), ("noise_sampler", noise_sampler)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_input(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__module__}.{type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    if x.device.type == "meta":
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")


_plans: collections.OrderedDict[Hashable, Plan] = collections.OrderedDict()
PLANS_KEPT = 32


def cached_plan(solver: Solver, schedule: Tensor, stop: int | None = None) -> Plan:
    """Plan(solver, schedule, stop), kept for the next call with the same solver settings, schedule values and stop:
    a k-diffusion-style `sample_*` call makes a new plan each time, and its tables and checks (~200 us) cost more than
    a small run's steps. A solver holding more than plain settings (a learned predictor), or a schedule that needs
    gradients, gets a new plan each call. The last PLANS_KEPT plans are kept."""
    # every setting, not graph_key(): that one leaves out what changes only table values (eta, a scale, a gamma)
    settings = tuple(sorted(vars(solver).items())) if isinstance(solver, Solver) else None
    if not (isinstance(schedule, Tensor) and schedule.dim() == 1 and schedule.device.type in ("cpu", "cuda")
            and not schedule.requires_grad and _plain(settings)):  # else Plan takes it, or names what is wrong
        return Plan(solver, schedule, stop)
    # sync-ok: Plan reads the schedule on the host too
    key = (type(solver), settings, schedule.dtype, schedule.device, tuple(schedule.tolist()), stop)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = Plan(solver, schedule, stop)
        if len(_plans) > PLANS_KEPT:
            _plans.popitem(last=False)
    else:
        _plans.move_to_end(key)
    return plan


def _plain(value: Any) -> bool:
    """Numbers, strings, None and tuples of them: values whose equality is their content."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


@torch.no_grad()  # as k-diffusion's samplers: no autograd graph over the loop
def sample(
    solver: Solver | Plan,
    model: Callable[..., Any],
    x: Tensor,
    schedule: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    check_finite: bool = True,
    k_diffusion_rng: bool = True,
    stop: int | None = None,
) -> Tensor:
    """Runs `solver` eagerly over the schedule: the loop every sample_* function shares. k_diffusion_rng: also make
    the draws k-diffusion 0.1.1 makes and discards, so seeded multi-batch scripts reproduce it image for image.
    stop: run only the first `stop` steps (Plan). A Plan given as `solver` (made once, reused) brings its schedule
    and stop (`schedule` is then None)."""
    check_input(x)
    plan = solver if isinstance(solver, Plan) else cached_plan(solver, schedule, stop)
    run = Run(plan, model, x, extra_args=extra_args, callback=callback, noise_sampler=noise_sampler,
              generator=generator, check_finite=check_finite, k_diffusion_rng=k_diffusion_rng)
    x = run_steps(run, x, disable)
    run.raise_if_not_finite(run.finite_flags())
    return x


def run_steps(run: Run, x: Tensor, disable: bool | None = True, trajectory: Tensor | None = None) -> Tensor:
    """The loop itself, shared by eager sampling and graph capture; `trajectory[i + 1]` receives x after step i."""
    run.watch_inputs(x)
    for i in range(run.plan.steps) if disable else trange(run.plan.steps, disable=disable):  # tqdm costs 13 us
        x = run.solver.step(run, i, x)
        if trajectory is not None:
            trajectory[i + 1].copy_(x)
    return x
