"""One sampling run and the loop every sampler shares (eager `sample_*` functions and graph capture alike).

A Run is a plan (solver, schedule, tables) plus what belongs to this run only: the model and its arguments, the
noise source, the callback, the solver's memory of earlier steps (`history`) and the per-call diagnostics.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Container

import torch
from torch import Tensor
from tqdm.auto import trange

from .. import ops
from ..context import ModelCall, model_call, new_run_id
from ..models import unwrap_output
from ..schedules import check_bool
from .base import Plan, Solver, table_dtype

Callback = Callable[[dict[str, Any]], None]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


class ConstantNoise(torch.autograd.Function):
    """A denoised output D computed without a graph, differentiated as if its noise estimate (x - D) / sigma were
    the constant: dD/dx = I. The forward returns D unchanged. This is what a constant epsilon (DDIM) or velocity
    (flow) gives, so every parametrisation keeps the same linear gradient path through the steps fd.sdo skips."""

    @staticmethod
    def forward(ctx, denoised: Tensor, x: Tensor) -> Tensor:
        return denoised.view_as(denoised)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, grad


class Run:
    """One run of `plan` on inputs shaped like `like`, calling `model(x, *table rows, **extra_args)`."""

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
        self.callback, self.noise_sampler, self.generator = callback, noise_sampler, generator
        self.check_finite = check_finite
        # draw the random numbers k-diffusion draws but never uses, so seeded scripts keep its random stream
        self.k_diffusion_rng = k_diffusion_rng
        # the steps whose model calls keep their autograd graph (None: all); the others run under no_grad and only
        # the solver's linear update carries gradients through them (fd.sdo)
        self.grad_steps = grad_steps
        self.id = new_run_id()
        # the denoised outputs of earlier steps, newest last, as many as the solver reads
        self.history: collections.deque[Tensor] = collections.deque(maxlen=max(self.solver.history, 1))
        self.calls: list[tuple[int, str]] = []  # (step, label) per model call
        self._in_step = 0
        # one device sum per checked tensor, read once after the loop, and what it was: ("model", step, label),
        # ("input", -1, name) or ("noise", step, "") - so a NaN is blamed on what produced it
        self.finite_sums: list[Tensor] = []
        self.finite_sources: list[tuple[str, int, str]] = []
        self._step_outputs: list[tuple[int, Tensor]] = []  # this step's model outputs so far

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

    def lands_on_zero(self, i: int) -> bool:
        """Step i goes to sigma = 0: it returns the denoised estimate instead of a solver update."""
        return i == self.plan.n_steps - 1 and self.plan.ends_at_zero

    def value(self, name: str, i: int) -> Tensor:
        """Row i of table `name` broadcast over the batch: a [B] device tensor (no host sync)."""
        return self.tables.values(name, self.shape[0])[i]

    def where(self, i: int, name: str) -> str:
        """'step i (name=value)' for messages; a name that is no table (a predicted midpoint) is shown as is."""
        if name in self.plan.host:
            return f"step {i} ({name}={float(self.plan.host[name][i]):.6g})"
        return f"step {i} ({name})"

    def call(self, x: Tensor, i: int, *names: str) -> Tensor:
        """One model call, model(x, *(table[i] for table in names), **extra_args)."""
        return self.call_with(x, i, names[0], *(self.value(name, i) for name in names))

    def call_with(self, x: Tensor, i: int, label: str, *inputs: Tensor) -> Tensor:
        """One model call of step i on explicit inputs, made the current ModelCall and its output checked; `label`
        names the call in errors and in the context."""
        self._in_step = self._in_step + 1 if self.calls and self.calls[-1][0] == i else 0
        context = ModelCall(self.id, len(self.calls), i, self.n_steps, self._in_step, label, inputs[0] if inputs else None)
        self.calls.append((i, label))
        version = tensor_version(x)
        keep_graph = self.grad_steps is None or i in self.grad_steps
        with model_call(context):
            if keep_graph or not torch.is_grad_enabled():  # the common case: no grad mode to switch
                output = self.model(x, *inputs, **self.extra_args)
            else:
                with torch.no_grad():
                    output = self.model(x, *inputs, **self.extra_args)
            out = checked_output(output, x, lambda: self.where(i, label))
        if not keep_graph and self.solver.model_output == "denoised" and x.requires_grad:
            out = ConstantNoise.apply(out, x)
        if version is not None and tensor_version(x) != version:
            raise ValueError(f"{self.where(i, label)}: the model modified its input x in place; the solver still "
                             "reads x, so the result would be wrong: compute on a copy (x = x * c, not x.mul_(c))")
        self._check_not_reused(out, i, label)
        self._watch_finite(out, ("model", i, label))
        return out

    def replay_step(self, i: int) -> None:
        """Forgets step i's model calls, so the step can run again from its start with the same outputs (a caller
        that feeds a multi-call step one call at a time, as diffusers' Heun scheduler is stepped)."""
        while self.calls and self.calls[-1][0] == i:
            self.calls.pop()
        self._step_outputs.clear()

    def _check_not_reused(self, out: Tensor, i: int, label: str) -> None:
        """Refuses an output in the memory of an earlier one the solver may still read (the solver's history, or
        this step's earlier calls): a model that writes every result into one buffer has overwritten it during this
        call, and the result would be silently wrong (k-diffusion has this flaw). A pointer comparison, no sync."""
        if self._step_outputs and self._step_outputs[0][0] != i:
            self._step_outputs.clear()
        memory = out.data_ptr()
        if any(t.data_ptr() == memory for _, t in self._step_outputs) or any(t.data_ptr() == memory for t in self.history):
            raise ValueError(
                f"{self.where(i, label)}: the model returned the memory of an earlier output that the solver still "
                "reads (it reuses one output buffer), which this call has overwritten; return a new tensor from each "
                "call, e.g. wrap it: lambda x, sigma, **kw: model(x, sigma, **kw).clone()")
        self._step_outputs.append((i, out))

    def _watch_finite(self, value: Tensor, source: tuple[str, int, str]) -> None:
        if self.check_finite:
            # one device-side reduction, read once after the loop: no per-step sync
            self.finite_sums.append(value.sum(dtype=torch.float32))
            self.finite_sources.append(source)

    def watch_prediction(self, i: int, *values: Tensor | float) -> None:
        """Queues the finite check of a learned predictor's outputs for step i (so a NaN r is not the model's)."""
        for value in values:
            if isinstance(value, Tensor):
                self._watch_finite(value, ("predictor", i, ""))

    def watch_inputs(self, x: Tensor) -> None:
        """Queues the finite checks of what the run starts from: x and the tensor extra_args."""
        self._watch_finite(x, ("input", -1, "x (the initial noise)"))
        for name, value in self.extra_args.items():
            if isinstance(value, Tensor) and value.is_floating_point():
                self._watch_finite(value, ("input", -1, f"extra_args[{name!r}]"))

    def lincomb(self, name: str, i: int, *inputs: Tensor) -> Tensor:
        """One fused update: sum_k table[name][i, k] * inputs[k] (the row's leading len(inputs) columns)."""
        return ops.lincomb(inputs, self.tables.rows(name, len(inputs))[i])

    def noise(self, i: int, at: str | None = None) -> Tensor:
        """Fresh standard normal noise for step i: k-diffusion's noise_sampler(sigma, sigma_next) if given, with the
        pair `plan.noise_sigmas[at][i]` (default: schedule[i], schedule[i + 1])."""
        if self.noise_sampler is not None:
            pair = (self.schedule[i], self.schedule[i + 1]) if at is None else self.plan.noise_sigmas[at][i]
            z = checked_noise(self.noise_sampler(pair[0], pair[1]), self.shape, self.device, f"step {i}")
            self._watch_finite(z, ("noise", i, ""))
            return z.to(self.dtype)
        if self.generator is None:
            return torch.randn(self.shape, dtype=self.dtype, device=self.device)
        z = torch.randn(self.shape, dtype=self.dtype, device=self.generator.device, generator=self.generator)
        return z.to(self.device)

    def unused_noise(self, i: int, at: str | None = None) -> None:
        """A draw whose value k-diffusion discards (no churn, eta = 0): made only to keep its random stream."""
        if self.k_diffusion_rng:
            self.noise(i, at)

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
        """One device bool per model call so far: did it return only finite values."""
        return torch.isfinite(torch.stack(self.finite_sums)) if self.finite_sums else None

    def raise_if_not_finite(self, flags: Tensor | None) -> None:
        """Names the first input, noise draw or model call that held NaN or inf (one host sync, after the loop)."""
        if flags is None:
            return
        for ok, (kind, i, label) in zip(flags.tolist(), self.finite_sources):  # sync-ok: once, after the loop
            if ok:
                continue
            if kind == "input":
                raise ValueError(f"{label} contains NaN or inf")
            if kind == "noise":
                raise FloatingPointError(f"noise_sampler returned non-finite values at step {i}")
            if kind == "predictor":
                raise FloatingPointError(f"the AMED predictor returned non-finite values at step {i}")
            raise FloatingPointError(f"model returned non-finite values at {self.where(i, label)}")


def tensor_version(t: Tensor) -> int | None:
    """The tensor's in-place version counter (None for inference-mode tensors, which keep none: asked first, since
    reading their counter raises, which costs ~30 us a call)."""
    return None if t.is_inference() else t._version


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


def checked_noise(z: Any, shape: torch.Size, device: torch.device, where: str) -> Tensor:
    """A noise sampler's draw: a floating-point tensor of x's shape on x's device, or an error naming `where`."""
    if not isinstance(z, Tensor) or z.shape != shape:
        raise ValueError(f"{where}: noise_sampler returned {_describe(z)}, expected a tensor of shape {tuple(shape)}")
    if z.device != device:
        raise ValueError(f"{where}: noise_sampler returned a tensor on {z.device}, expected {device}")
    if not z.is_floating_point():
        raise TypeError(f"{where}: noise_sampler returned dtype {z.dtype}, expected standard normal floats")
    return z


def checked_output(output: Any, x: Tensor, where: str | Callable[[], str]) -> Tensor:
    """The model's output as a tensor like x (its dtype), or an error naming the call (`where`, or a function
    making it: formatted only for an error, not on every call)."""
    out = unwrap_output(output)
    if out.shape != x.shape or out.device != x.device or not out.is_floating_point():
        where = where if isinstance(where, str) else where()
        if out.shape != x.shape:
            raise ValueError(f"{where}: model returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
        if out.device != x.device:
            raise ValueError(f"{where}: model returned a tensor on {out.device}, expected {x.device}")
        raise TypeError(f"{where}: model returned dtype {out.dtype}, expected a floating-point tensor")
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def check_input(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__module__}.{type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    if x.device.type == "meta":
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")


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
    plan = solver if isinstance(solver, Plan) else Plan(solver, schedule, stop)
    run = Run(plan, model, x, extra_args=extra_args, callback=callback, noise_sampler=noise_sampler,
              generator=generator, check_finite=check_finite, k_diffusion_rng=k_diffusion_rng)
    x = run_steps(run, x, disable)
    run.raise_if_not_finite(run.finite_flags())
    return x


def run_steps(run: Run, x: Tensor, disable: bool | None = True, trajectory: Tensor | None = None) -> Tensor:
    """The loop itself, shared by eager sampling and graph capture; `trajectory[i + 1]` receives x after step i."""
    run.watch_inputs(x)
    for i in trange(run.plan.steps, disable=disable):
        x = run.solver.step(run, i, x)
        if trajectory is not None:
            trajectory[i + 1].copy_(x)
    return x
