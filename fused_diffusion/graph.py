"""The engine: fd.Sampler runs a solver over a schedule and, on CUDA, captures the whole loop (every model call,
guidance combine and solver stage) into one CUDA graph, replayed on later calls.

A graph is cached per (shape, dtype, device, solver config, number of steps, model, extra-argument signature) in
an LRU of bounded size, all graphs sharing one memory pool. A new schedule of the same length rewrites the device
tables in place (no recapture); in-place weight edits (parameter version counters) or replaced weights (data
pointers) recapture. What graph mode gives up: per-step Python (callbacks, progress bars); `keep_trajectory=True`
records x after every step inside the graph instead.
"""
from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .solvers import DeviceTables, Run, Solver, check_input, get_solver, run_steps
from .solvers.base import Callback

OWN_GRAPHS_HINT = (
    "the model was compiled with torch.compile(mode='reduce-overhead' or 'max-autotune'), which records CUDA graphs "
    "of its own that cannot nest in the sampler's; compile with mode='default' or 'max-autotune-no-cudagraphs' to "
    "graph the whole loop"
)


def records_own_cuda_graphs(model: Any) -> bool:
    """True when the model, or a module inside it, was torch.compile'd with inductor's CUDA graphs on."""
    parts = model.modules() if isinstance(model, nn.Module) else [model]
    for part in parts:
        config = part.get_compiler_config() if callable(getattr(part, "get_compiler_config", None)) else None
        if config and config.get("triton.cudagraphs"):
            return True
    return False


class WeightsWatch:
    """Tells whether a model's weights changed since it was made: parameter or buffer edited in place (version
    counters), replaced (data pointers) or a submodule swapped (e.g. LoRA layers injected). It walks the module list
    taken at creation (cheap; `model.modules()` itself costs ~1 ms on an SD U-Net). Edits through `.data` bypass
    version counters: call `Sampler.invalidate()` after those. A plain function as the model has nothing to watch."""

    def __init__(self, model: Any):
        self.modules = list(model.modules()) if isinstance(model, nn.Module) else []
        self.version = self.read()

    def read(self) -> tuple[int, int, int]:
        versions, pointers, children = 0, [], []
        for module in self.modules:
            for t in (*module._parameters.values(), *module._buffers.values()):
                if t is not None:
                    versions += 0 if t.is_inference() else t._version  # inference tensors have no counter
                    pointers.append(t.data_ptr())
            children.extend(map(id, module._modules.values()))
        return versions, hash(tuple(pointers)), hash(tuple(children))

    def changed(self) -> bool:
        return self.read() != self.version


def _signature(value: Any) -> Any:
    """The cache-key part of an extra argument: tensors by shape/dtype/device (their values are copied in)."""
    if isinstance(value, Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    return ("value", repr(value))


@dataclass
class CapturedLoop:
    """One captured graph with its static input, extra arguments, tables and outputs."""

    graph: torch.cuda.CUDAGraph
    run: Run
    static_x: Tensor
    static_extra: dict[str, Tensor]
    output: Tensor
    trajectory: Tensor | None
    finite: Tensor | None
    weights: WeightsWatch
    schedule_version: int
    model: Any  # held so the id in the cache key cannot be reused by another object


class Sampler:
    """Samples `model` with `solver` over `sigmas` (a schedule of the solver's kind: sigmas ending in 0 for the
    k-diffusion solvers, timesteps for DDIM, flow times for shortcut models).

    `sampler(noise)` returns a new tensor (or writes `out`). On CUDA with cuda_graph=True the first call for a
    configuration warms up on a side stream and captures; later calls copy the noise (and tensor extra_args) in and
    replay. CPU tensors, cuda_graph=False, callbacks or a generator on another device run the same solver code
    eagerly.

    solver: a name from `fused_diffusion.solvers.SOLVERS` (options as keyword arguments, e.g. s_churn=, eta=) or a
        Solver instance. extra_args: keyword arguments for every model call (tensors are copied into the graph's
        static buffers on each call; their shapes are part of the cache key). max_graphs: LRU bound on cached
        graphs. generator: a torch.Generator on the noise's device for the solver's noise (default: the global RNG).
        check_finite: read one flag per model call after each run (one small device-to-host copy) and raise naming
        the step that returned NaN/inf. keep_trajectory: also return x after every step, [steps + 1, *x.shape].
    """

    def __init__(
        self,
        model: Callable[..., Any],
        solver: str | Solver = "heun",
        sigmas: Tensor | None = None,
        *,
        extra_args: dict | None = None,
        cuda_graph: bool = True,
        max_graphs: int = 4,
        generator: torch.Generator | None = None,
        check_finite: bool = True,
        keep_trajectory: bool = False,
        **solver_options: Any,
    ):
        if sigmas is None:
            raise ValueError("sigmas (the schedule) is required, e.g. fd.get_sigmas_karras(18, 0.002, 80.0)")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model = model
        self.solver = get_solver(solver, **solver_options)
        self.extra_args = dict(extra_args or {})
        self.cuda_graph = cuda_graph
        self.max_graphs = max_graphs
        self.generator = generator
        self.check_finite = check_finite
        self.keep_trajectory = keep_trajectory
        self.graphs: collections.OrderedDict[tuple, CapturedLoop] = collections.OrderedDict()
        self.captures = 0  # how many graphs were captured: tests and benchmarks read it
        self.fallback_reason: str | None = None
        self._eager_keys: set[tuple] = set()
        self._pool = None
        self._schedule_version = 0
        self.set_schedule(sigmas)

    def set_schedule(self, schedule: Tensor) -> None:
        """A new schedule. With the same number of steps, cached graphs replay it after an in-place table rewrite."""
        self.solver.check_schedule(schedule)
        self.schedule = schedule
        self.host_tables = self.solver.tables(schedule.detach().to("cpu", torch.float64))  # sync-ok: once
        self._schedule_version += 1

    def invalidate(self) -> None:
        """Drops every captured graph (e.g. after editing weights through `.data`)."""
        self.graphs.clear()
        self._eager_keys.clear()

    @torch.no_grad()
    def __call__(
        self,
        noise: Tensor,
        *,
        extra_args: dict | None = None,
        out: Tensor | None = None,
        callback: Callback | None = None,
        disable: bool | None = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_input(noise)
        extra = {**self.extra_args, **(extra_args or {})}
        key = self._key(noise, extra)
        if not self._graphable(noise, callback) or key in self._eager_keys:
            return self._finish(*self._eager(noise, extra, callback, disable), out)
        entry = self.graphs.get(key)
        if entry is not None and entry.weights.changed():
            del self.graphs[key]  # weights edited since capture: the graph would replay stale values
            entry = None
        if entry is None:
            entry = self._capture(noise, extra, key)
            if entry is None:
                return self._finish(*self._eager(noise, extra, callback, disable), out)
        self.graphs.move_to_end(key)
        return self._replay(entry, noise, extra, out)

    # ------------------------------------------------------------------ eager

    def _new_run(self, x: Tensor, extra: dict, tables: DeviceTables, callback: Callback | None) -> Run:
        return Run(self.solver, self.model, x, self.schedule, self.host_tables, tables, extra, callback, None,
                   self.generator, self.check_finite)

    def _tables(self, x: Tensor) -> DeviceTables:
        return DeviceTables(self.host_tables, x.device, torch.float64 if x.dtype == torch.float64 else torch.float32)

    def _trajectory(self, x: Tensor, run: Run) -> Tensor | None:
        if not self.keep_trajectory:
            return None
        trajectory = x.new_empty((run.n_steps + 1, *x.shape))
        trajectory[0].copy_(x)
        return trajectory

    def _eager(self, noise: Tensor, extra: dict, callback: Callback | None, disable: bool | None):
        run = self._new_run(noise, extra, self._tables(noise), callback)
        trajectory = self._trajectory(noise, run)
        x = run_steps(run, noise, disable, trajectory)
        run.raise_if_not_finite(run.finite_flags())
        return x, trajectory

    def _finish(self, x: Tensor, trajectory: Tensor | None, out: Tensor | None):
        if out is not None:
            x = out.copy_(x)
        return x if trajectory is None else (x, trajectory)

    # ------------------------------------------------------------------ graphs

    def _graphable(self, noise: Tensor, callback: Callback | None) -> bool:
        if not self.cuda_graph or noise.device.type != "cuda":
            return False
        if callback is not None:
            return False  # callbacks run Python per step: eager by design (see the module docstring)
        if self.generator is not None and self.generator.device != noise.device:
            self._note_fallback("the generator is not on the noise's CUDA device; drawing noise eagerly")
            return False
        return True

    def _key(self, noise: Tensor, extra: dict) -> tuple:
        return (
            tuple(noise.shape), noise.dtype, noise.device, self.solver.config(), len(self.schedule), id(self.model),
            tuple(sorted((k, _signature(v)) for k, v in extra.items())), self.check_finite, self.keep_trajectory,
        )

    def _note_fallback(self, reason: str) -> None:
        if self.fallback_reason != reason:
            warnings.warn(f"fused_diffusion.Sampler runs eagerly: {reason}", RuntimeWarning, stacklevel=3)
        self.fallback_reason = reason

    def _rng_state(self, device: torch.device):
        return self.generator.get_state() if self.generator is not None else torch.cuda.get_rng_state(device)

    def _set_rng_state(self, device: torch.device, state) -> None:
        if self.generator is not None:
            self.generator.set_state(state)
        else:
            torch.cuda.set_rng_state(state, device)

    def _capture(self, noise: Tensor, extra: dict, key: tuple) -> CapturedLoop | None:
        """Warm-up on a side stream (compiles Triton kernels and torch.compile'd models, without consuming the
        caller's random numbers), then capture the loop. On failure: warn once, remember the key, return None."""
        device = noise.device
        if records_own_cuda_graphs(self.model):
            self._note_fallback(OWN_GRAPHS_HINT)
            self._eager_keys.add(key)
            return None
        with torch.cuda.device(device):  # capture and pool on the noise's device, not merely the current one
            return self._capture_on_device(noise, extra, key)

    def _capture_on_device(self, noise: Tensor, extra: dict, key: tuple) -> CapturedLoop | None:
        device = noise.device
        caller_stream = torch.cuda.current_stream(device)
        static_x = noise.clone()
        static_extra = {k: v.clone() if isinstance(v, Tensor) else v for k, v in extra.items()}
        tables = self._tables(noise)
        try:
            rng = self._rng_state(device)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                run = self._new_run(static_x, static_extra, tables, None)
                run_steps(run, static_x, True, self._trajectory(static_x, run))
            torch.cuda.current_stream(device).wait_stream(side)
            self._set_rng_state(device, rng)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            if self.generator is not None:
                graph.register_generator_state(self.generator)
            run = self._new_run(static_x, static_extra, tables, None)
            with torch.cuda.graph(graph, pool=self._pool):
                trajectory = self._trajectory(static_x, run)
                output = run_steps(run, static_x, True, trajectory)
                finite = run.finite_flags()
        except Exception as error:  # noqa: BLE001 - any capture failure (OOM, unsupported op) falls back correctly
            torch.cuda.set_stream(caller_stream)  # a failed capture_end can leave the capture stream current
            torch.cuda.synchronize(device)  # sync-ok: error path, before the eager fallback
            self._note_fallback(f"CUDA graph capture failed ({type(error).__name__}: {error})")
            self._eager_keys.add(key)
            return None
        self.captures += 1
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        entry = CapturedLoop(graph, run, static_x, static_extra, output, trajectory, finite,
                             WeightsWatch(self.model), self._schedule_version, self.model)
        self.graphs[key] = entry
        return entry

    def _replay(self, entry: CapturedLoop, noise: Tensor, extra: dict, out: Tensor | None):
        entry.static_x.copy_(noise)
        for name, value in extra.items():
            if isinstance(value, Tensor):
                entry.static_extra[name].copy_(value)
        if entry.schedule_version != self._schedule_version:
            entry.run.tables.load(self.host_tables)
            entry.run.host_tables, entry.run.schedule = self.host_tables, self.schedule
            entry.schedule_version = self._schedule_version
        with torch.cuda.device(noise.device):
            entry.graph.replay()
        entry.run.raise_if_not_finite(entry.finite)
        x = entry.output.clone() if out is None else out.copy_(entry.output)
        return x if entry.trajectory is None else (x, entry.trajectory.clone())
