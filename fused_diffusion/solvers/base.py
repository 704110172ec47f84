"""Solvers and plans. A solver is a coefficient table (host float64, once per schedule) plus a short step function;
every update in a step is one `lincomb` launch reading one row of a device table. A Plan is a solver over one
schedule: its host tables and their device copies, made once and shared by every run over that schedule.

The same `Solver.step` runs eagerly and inside one captured CUDA graph (`engine/`): nothing in a step reads a tensor
value on the host or branches on one, so a graph replays any schedule of the same length after the plan rewrites
its device tables in place.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Hashable

import torch
from torch import Tensor, nn

from ..schedules import validate_sigmas
from ..checks import check_bool, check_count, check_real

if TYPE_CHECKING:
    from .run import Run


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
        # per-step views made once and reused by every run (indexing a tensor costs ~1 us a time on the host); they
        # alias the buffers, so `load` updates them and a captured graph reads them by address
        self._rows: dict[tuple[str, int], list[Tensor]] = {}
        self._values: dict[tuple[str, int], list[Tensor]] = {}
        self.load(host)

    def rows(self, name: str, width: int) -> list[Tensor]:
        """Step i's row of table `name`, its leading `width` columns, at index i."""
        rows = self._rows.get((name, width))
        if rows is None:
            rows = self._rows[name, width] = list(self.views[name][:, :width].unbind())
        return rows

    def values(self, name: str, batch: int) -> list[Tensor]:
        """Step i's value of the 1-D table `name` broadcast over a batch, a [batch] view, at index i."""
        values = self._values.get((name, batch))
        if values is None:
            values = self._values[name, batch] = [value.expand(batch) for value in self.views[name].unbind()]
        return values

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


# what a solver's schedule is, by its `schedule_kind`
SCHEDULE_KINDS = {
    "sigmas": "noise levels sigma, decreasing, maybe ending at 0",
    "timesteps": "a DDPM's integer timesteps, decreasing",
    "flow_sigmas": "flow noise levels in [0, 1], decreasing (1 = noise, 0 = data)",
    "flow_times": "flow times, 0 = noise up to 1 = data",
    "sigma_range": "the pair [sigma_max, sigma_min]",
}


class Solver:
    """A solver family. Subclasses set `name`, implement `tables` and `step`; the schedule is sigmas (n + 1 values
    ending in 0) unless a subclass says otherwise in `check_schedule`/`num_steps`. A solver with options that change
    what a step launches overrides `graph_key`; one that calls modules of its own lists them in `modules`."""

    name: str = "solver"
    # the solver's human name, as tables and plots print it, and the method's source (its docstring has the details)
    label: str = "solver"
    paper: str = ""
    # model calls of one step; the step to a final sigma = 0 makes one (it returns the denoised estimate)
    calls_per_step: int = 1
    # what the model returns: "denoised" (x0, the EDM/k-diffusion denoisers), "eps" or "velocity"; fd.sdo holds the
    # noise-like part constant in the steps it runs without a graph
    model_output: str = "denoised"
    # what the schedule is: one of SCHEDULE_KINDS
    schedule_kind: str = "sigmas"
    # the constructor option, kept under its own name, that sets how much noise a step draws (0: none); None where
    # no option does: the solver never draws noise, or always does (and says so in `stochastic`)
    noise_option: str | None = None

    @property
    def stochastic(self) -> bool:
        """Whether a step draws noise with these options (two runs from the same x then differ)."""
        return self.noise_option is not None and getattr(self, self.noise_option) > 0

    def calls(self, n_steps: int, to_zero: bool = True) -> int:
        """Model calls of a run of `n_steps` steps with these options. to_zero: the schedule ends at sigma = 0 (a
        solver over sigmas then makes one call in its last step); ignored by solvers that take no such step."""
        n_steps, to_zero = check_count("n_steps", n_steps), check_bool("to_zero", to_zero)
        return self.calls_per_step * n_steps - (self.calls_per_step - 1 if to_zero else 0)

    def steps_for(self, budget: int, to_zero: bool = True) -> int | None:
        """The most steps whose run makes at most `budget` model calls (and at least one), or None if no run does;
        that run makes exactly `budget` calls when `calls(steps) == budget`."""
        budget, to_zero = check_count("budget", budget), check_bool("to_zero", to_zero)
        # calls never decrease with the steps, and every step but an analytic first one makes a call
        low, high = 0, budget + 1
        while low < high:
            middle = (low + high + 1) // 2
            if self.calls(middle, to_zero) <= budget:
                low = middle
            else:
                high = middle - 1
        return low if low and self.calls(low, to_zero) >= 1 else None

    def check_schedule(self, schedule: Tensor) -> None:
        validate_sigmas(schedule)

    def num_steps(self, schedule: Tensor) -> int:
        return len(schedule) - 1

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return bool(schedule[-1] == 0)  # sync-ok: once per schedule

    def host_schedule(self, schedule: Tensor) -> Tensor:
        """The schedule `tables` receives: float64 on the CPU (a solver that must repeat k-diffusion's float32
        arithmetic keeps the dtype)."""
        return schedule.detach().to("cpu", torch.float64)  # sync-ok: once per schedule

    def noise_sigmas(self, schedule: Tensor) -> dict[str, Tensor]:
        """Named [n, 2] tables of the (sigma, sigma_next) pairs a step passes to a noise sampler, computed from the
        schedule in its own dtype and device as k-diffusion computes them (a Brownian tree's increments depend on
        the exact query times). The default pair, schedule[i] and schedule[i + 1], needs no entry."""
        return {}

    def structure(self, host: dict[str, Tensor]) -> Hashable:
        """What in this schedule's tables changes which launches a step makes (a branch taken on a table value): part
        of a graph's cache key, so a new schedule with another structure captures anew."""
        return None

    def tables(self, schedule: Tensor) -> dict[str, Tensor]:
        """Host tables for a float64 CPU schedule; one row per step."""
        raise NotImplementedError

    def step(self, run: "Run", i: int, x: Tensor) -> Tensor:
        """Step i of the loop, returning the new x."""
        raise NotImplementedError

    # how many earlier denoised outputs a step reads (run.history keeps that many, newest last)
    history: int = 0

    def graph_key(self) -> Hashable:
        """What fixes the step structure (not just table values): part of a graph's cache key."""
        return (type(self).__name__, tuple(sorted(vars(self).items())))

    def modules(self) -> list[nn.Module]:
        """Modules the solver itself calls during a run (e.g. a learned predictor): their weights are watched."""
        return []


class Plan:
    """A solver over one schedule: host tables (float64, built once per schedule; kept for messages) and their
    device copies per (device, float dtype, table layout). `set_schedule` swaps in a new schedule; device copies are
    rewritten in place when next asked for, so a captured graph that reads them replays the new schedule."""

    def __init__(self, solver: Solver, schedule: Tensor, stop: int | None = None):
        self.solver = solver
        self._device: dict[tuple, tuple[DeviceTables, int]] = {}
        self.version = 0
        self.stop_at = stop
        self.set_schedule(schedule)

    def set_schedule(self, schedule: Tensor) -> None:
        self.solver.check_schedule(schedule)
        host = self.solver.tables(self.solver.host_schedule(schedule))
        check_tables_finite(self.solver, host, schedule)
        self.host = host
        self.noise_sigmas = self.solver.noise_sigmas(schedule.detach())
        self.schedule = schedule
        self.n_steps = self.solver.num_steps(schedule)
        # a run may stop after its first steps (a hand-off mid-schedule, SDXL's denoising_end): every step keeps the
        # coefficients of the whole schedule's, the loop just ends early
        if self.stop_at is not None and not 1 <= check_count("stop", self.stop_at) <= self.n_steps:
            raise ValueError(f"stop must be in [1, {self.n_steps}] (the schedule's steps), got {self.stop_at}")
        self.steps = self.n_steps if self.stop_at is None else self.stop_at
        # a final 0 makes the last step a denoise (k-diffusion's rule); it changes the step structure, not just values
        self.ends_at_zero = self.solver.ends_at_zero(schedule)
        self.structure = (self.ends_at_zero, self.steps, self.solver.structure(host))
        self.version += 1

    def tables(self, device: torch.device, float_dtype: torch.dtype = torch.float32) -> DeviceTables:
        """This schedule's tables on `device` (float tables in `float_dtype`), up to date."""
        layout = tuple((name, tuple(t.shape), t.is_floating_point()) for name, t in self.host.items())
        key = (torch.device(device), float_dtype, layout)
        cached = self._device.get(key)
        if cached is None:
            tables = DeviceTables(self.host, device, float_dtype)
        else:
            tables, version = cached
            if version != self.version:
                tables.load(self.host)
        self._device[key] = (tables, self.version)
        return tables


def check_tables_finite(solver: Solver, host: dict[str, Tensor], schedule: Tensor) -> None:
    """A schedule whose coefficients are NaN or inf (a repeated sigma under a multistep solver, whose step-size ratio
    becomes 0 or inf; k-diffusion returns NaN there) is refused before the loop, naming the step."""
    for name, table in host.items():
        if not table.is_floating_point():
            continue
        bad = ~torch.isfinite(table.reshape(len(table), -1)).all(dim=1)
        if bad.any():
            i = int(bad.nonzero()[0])
            pair = ", ".join(f"{float(v):.6g}" for v in schedule[i : i + 2].tolist())  # sync-ok: error path
            coefficients = table[i].tolist()  # sync-ok: error path
            raise ValueError(
                f"{solver.name}: step {i} (schedule values {pair}) gives non-finite {name!r} coefficients "
                f"{coefficients}; a repeated sigma makes a multistep solver's step-size ratio 0 or infinite "
                "(k-diffusion returns NaN there): use a strictly decreasing schedule with this solver"
            )


def table_dtype(data_dtype: torch.dtype) -> torch.dtype:
    """Float tables are float32, float64 for float64 sampling."""
    return torch.float64 if data_dtype == torch.float64 else torch.float32
