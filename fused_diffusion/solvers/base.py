"""The shared sampling loop. A solver is a coefficient table (host float64, once per schedule) plus a short
step function; every update in a step is one `lincomb` launch reading one row of a device table.

The same `Solver.step` runs eagerly (here) and inside one captured CUDA graph (`graph.py`): nothing in a step
reads a tensor value on the host or branches on one, so the graph replays any schedule of the same length
after `DeviceTables.load` rewrites the tables in place.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import trange

from .. import ops
from ..models import unwrap_output
from ..schedules import validate_sigmas

Callback = Callable[[dict[str, Any]], None]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


class DeviceTables:
    """A solver's tables on one device: float tables packed into one float32 buffer (float64 for float64 sampling)
    and integer tables into one int64 buffer, so a new schedule of the same shape is one copy per buffer."""

    def __init__(self, host: dict[str, Tensor], device: torch.device, float_dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.layout = {name: (t.shape, t.is_floating_point()) for name, t in host.items()}
        sizes = {True: 0, False: 0}
        self.offsets = {}
        for name, (shape, is_float) in self.layout.items():
            self.offsets[name] = sizes[is_float]
            sizes[is_float] += shape.numel()
        self.buffers = {
            True: torch.zeros(sizes[True], dtype=float_dtype, device=device),
            False: torch.zeros(sizes[False], dtype=torch.int64, device=device),
        }
        self.views = {
            name: self.buffers[is_float][self.offsets[name] : self.offsets[name] + shape.numel()].view(shape)
            for name, (shape, is_float) in self.layout.items()
        }
        self.load(host)

    def load(self, host: dict[str, Tensor]) -> None:
        """Writes new table values in place (same names and shapes), one host-to-device copy per buffer."""
        layout = {name: (t.shape, t.is_floating_point()) for name, t in host.items()}
        if layout != self.layout:
            raise ValueError(f"table layout changed: {layout} vs {self.layout}; a new plan is needed")
        for is_float, buffer in self.buffers.items():
            parts = [host[name].reshape(-1) for name, (_, f) in self.layout.items() if f == is_float]
            if parts:
                buffer.copy_(torch.cat(parts).to(buffer.dtype), non_blocking=False)

    def __getitem__(self, name: str) -> Tensor:
        return self.views[name]


class Solver:
    """A solver family. Subclasses set `name`, implement `tables` and `step`; the schedule is sigmas (n + 1 values
    ending in 0) unless a subclass says otherwise in `check_schedule`/`num_steps`."""

    name: str = "solver"

    def check_schedule(self, schedule: Tensor) -> None:
        validate_sigmas(schedule)

    def num_steps(self, schedule: Tensor) -> int:
        return len(schedule) - 1

    def tables(self, schedule: Tensor) -> dict[str, Tensor]:
        """Host tables for a float64 CPU schedule; one row per step."""
        raise NotImplementedError

    def step(self, run: "Run", i: int, x: Tensor) -> Tensor:
        """Step i of the loop, returning the new x."""
        raise NotImplementedError

    def config(self) -> tuple:
        """What fixes the step structure (not just table values): part of a graph's cache key."""
        return (type(self).__name__, tuple(sorted(vars(self).items())))


class Run:
    """One sampling run's state: the model, device tables, noise source, callback and multistep memory."""

    def __init__(
        self,
        solver: Solver,
        model: Callable[..., Any],
        x: Tensor,
        schedule: Tensor,
        host_tables: dict[str, Tensor],
        tables: DeviceTables,
        extra_args: dict | None = None,
        callback: Callback | None = None,
        noise_sampler: NoiseSampler | None = None,
        generator: torch.Generator | None = None,
        check_finite: bool = True,
    ):
        self.solver = solver
        self.model = model
        self.schedule = schedule
        self.n_steps = solver.num_steps(schedule)
        self.host_tables = host_tables
        self.tables = tables
        self.extra_args = extra_args or {}
        self.callback = callback
        self.noise_sampler = noise_sampler
        self.generator = generator
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.state: dict[str, Any] = {}
        self.check_finite = check_finite
        self.calls: list[tuple[int, str]] = []  # (step, table) per model call, to name a non-finite one
        self.finite_sums: list[Tensor] = []

    def value(self, name: str, i: int) -> Tensor:
        """Row i of table `name` broadcast over the batch: a [B] device tensor (no host sync)."""
        return self.tables[name][i].expand(self.shape[0])

    def where(self, i: int, name: str) -> str:
        """'step i (name=value)' for messages; a name that is no table (a predicted midpoint) is shown as is."""
        if name in self.host_tables:
            return f"step {i} ({name}={float(self.host_tables[name][i]):.6g})"
        return f"step {i} ({name})"

    def call(self, x: Tensor, i: int, *names: str) -> Tensor:
        """One model call, model(x, *(table[i] for table in names), **extra_args)."""
        return self.call_with(x, i, names[0], *(self.value(name, i) for name in names))

    def call_with(self, x: Tensor, i: int, label: str, *inputs: Tensor) -> Tensor:
        """One model call of step i on explicit inputs, its output checked; `label` names the call in errors."""
        out = unwrap_output(self.model(x, *inputs, **self.extra_args))
        if out.shape != x.shape:
            raise ValueError(f"{self.where(i, label)}: model returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
        if out.device != x.device:
            raise ValueError(f"{self.where(i, label)}: model returned a tensor on {out.device}, expected {x.device}")
        if not out.is_floating_point():
            raise TypeError(f"{self.where(i, label)}: model returned dtype {out.dtype}, expected a floating-point tensor")
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if self.check_finite:
            # one device-side reduction per call, read once after the loop: no per-step sync
            self.calls.append((i, label))
            self.finite_sums.append(out.sum(dtype=torch.float32))
        return out

    def lincomb(self, name: str, i: int, *inputs: Tensor) -> Tensor:
        """One fused update: sum_k table[name][i, k] * inputs[k] (the row's leading len(inputs) columns)."""
        return ops.lincomb(inputs, self.tables[name][i, : len(inputs)])

    def noise(self, i: int) -> Tensor:
        """Fresh standard normal noise for step i (k-diffusion's noise_sampler(sigma, sigma_next) if given)."""
        if self.noise_sampler is not None:
            z = self.noise_sampler(self.schedule[i], self.schedule[i + 1])
            if z.shape != self.shape:
                raise ValueError(f"step {i}: noise_sampler returned shape {tuple(z.shape)}, expected {tuple(self.shape)}")
            return z.to(self.dtype)
        if self.generator is None:
            return torch.randn(self.shape, dtype=self.dtype, device=self.device)
        z = torch.randn(self.shape, dtype=self.dtype, device=self.generator.device, generator=self.generator)
        return z.to(self.device)

    def report(self, i: int, x: Tensor, denoised: Tensor, sigma_hat: str = "sigma") -> None:
        """k-diffusion's per-step callback dict."""
        if self.callback is not None:
            self.callback(
                {"x": x, "i": i, "sigma": self.schedule[i], "sigma_hat": self.tables[sigma_hat][i], "denoised": denoised}
            )

    def finite_flags(self) -> Tensor | None:
        """One device bool per model call so far: did it return only finite values."""
        return torch.isfinite(torch.stack(self.finite_sums)) if self.finite_sums else None

    def raise_if_not_finite(self, flags: Tensor | None) -> None:
        """Names the first model call that returned NaN or inf (one host sync, after the loop)."""
        if flags is None:
            return
        for ok, (i, label) in zip(flags.tolist(), self.calls):  # sync-ok: once, after the loop
            if not ok:
                raise FloatingPointError(f"model returned non-finite values at {self.where(i, label)}")


def check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch dimension, got shape {tuple(x.shape)}")


def prepare(solver: Solver, x: Tensor, schedule: Tensor) -> tuple[dict[str, Tensor], DeviceTables]:
    """Validates the input and schedule and builds the solver's host and device tables."""
    check_input(x)
    solver.check_schedule(schedule)
    host = solver.tables(schedule.detach().to("cpu", torch.float64))  # sync-ok: once per schedule
    float_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return host, DeviceTables(host, x.device, float_dtype)


@torch.no_grad()  # as k-diffusion's samplers: no autograd graph over the loop
def sample(
    solver: Solver,
    model: Callable[..., Any],
    x: Tensor,
    schedule: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Runs `solver` eagerly over the schedule: the loop every sample_* function shares."""
    host, tables = prepare(solver, x, schedule)
    run = Run(solver, model, x, schedule, host, tables, extra_args, callback, noise_sampler, generator, check_finite)
    x = run_steps(run, x, disable)
    run.raise_if_not_finite(run.finite_flags())
    return x


def run_steps(run: Run, x: Tensor, disable: bool | None = True, trajectory: Tensor | None = None) -> Tensor:
    """The loop itself, shared by eager sampling and graph capture; `trajectory[i + 1]` receives x after step i."""
    for i in trange(run.n_steps, disable=disable):
        x = run.solver.step(run, i, x)
        if trajectory is not None:
            trajectory[i + 1].copy_(x)
    return x
