"""fd.Sampler: the user-facing engine. It runs a solver over a schedule and, on CUDA, replays one captured graph of
the whole loop per configuration (graph cache: cache.py; capture and replay: capture.py; what invalidates a graph:
watch.py). What graph mode gives up: per-step Python (callbacks, progress bars); `keep_trajectory=True` records x
after every step inside the graph instead."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Hashable

import torch
from torch import Tensor

from ..solvers import Plan, Run, Solver, check_input, get_solver, run_steps
from ..solvers.run import Callback, check_run_arguments
from .cache import GraphCache, argument_signature
from .capture import OWN_GRAPHS_HINT, CapturedLoop, capture, new_trajectory, records_own_cuda_graphs
from .watch import LoopWatch


class Sampler:
    """Samples `model` with `solver` over `sigmas` (a schedule of the solver's kind: sigmas ending in 0 for the
    k-diffusion solvers, timesteps for DDIM, flow times for shortcut models).

    `sampler(noise)` returns a new tensor (or writes `out`). On CUDA with cuda_graph=True the first call for a
    configuration warms up on a side stream and captures; later calls copy the noise (and tensor extra_args) in and
    replay. CPU tensors, cuda_graph=False, callbacks or a generator on another device run the same solver code
    eagerly.

    Noise: stochastic solvers (churn, ancestral, the DPM++ SDE variants, consistency) draw independent standard
    normal noise per step from `generator` (default: the global generator), inside the graph - k-diffusion's
    default_noise_sampler, not the Brownian tree its `sample_dpmpp_*sde` functions default to (use those functions,
    eagerly, for Brownian-tree noise). Draws whose values a step never uses are skipped (the sample_* functions make
    them, to keep k-diffusion's random stream).

    A graph is cached per (shape, dtype, device, solver, number of steps, model, the structure of every module the
    loop calls, extra-argument signature): a patched forward, an added or removed hook, or a feature whose
    `graph_key()` changed captures anew; in-place weight edits or replaced weights recapture. A new schedule of the
    same length rewrites the device tables in place (no recapture).

    solver: a name from `fused_diffusion.solvers.SOLVERS` (options as keyword arguments, e.g. s_churn=, eta=) or a
        Solver instance. extra_args: keyword arguments for every model call (tensors are copied into the graph's
        static buffers on each call; their shapes are part of the cache key). max_graphs: LRU bound on cached
        graphs. generator: a torch.Generator on the noise's device for the solver's noise (default: the global RNG).
        check_finite: read one flag per model call after each run (one small device-to-host copy) and raise naming
        the step that returned NaN/inf. keep_trajectory: also return x after every step, [steps + 1, *x.shape].
        stop: run only the schedule's first `stop` steps, each with the whole schedule's coefficients (a hand-off
        mid-schedule, as SDXL's denoising_end).
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
        stop: int | None = None,
        **solver_options: Any,
    ):
        if sigmas is None:
            raise ValueError("sigmas (the schedule) is required, e.g. fd.get_sigmas_karras(18, 0.002, 80.0)")
        check_run_arguments(model, extra_args, None, None, generator)
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be an integer >= 1, got {max_graphs!r}")
        self.model = model
        self.solver = get_solver(solver, **solver_options)
        self.plan = Plan(self.solver, sigmas, stop)
        self.extra_args = dict(extra_args or {})
        self.cuda_graph = cuda_graph
        self.generator = generator
        self.check_finite = check_finite
        self.keep_trajectory = keep_trajectory
        self.graphs = GraphCache(max_graphs)
        self.captures = 0  # how many graphs were captured: tests and benchmarks read it
        self.fallback_reason: str | None = None
        self._pool = None
        self._watch: LoopWatch | None = None

    @property
    def schedule(self) -> Tensor:
        return self.plan.schedule

    def set_schedule(self, schedule: Tensor) -> None:
        """A new schedule. With the same number of steps and step structure (a final 0 or not, like the old one),
        cached graphs replay it after an in-place table rewrite."""
        self.plan.set_schedule(schedule)

    def invalidate(self) -> None:
        """Drops every captured graph (e.g. after editing weights through `.data`)."""
        self.graphs.clear()

    def cache_key(self, noise: Tensor, extra_args: dict | None = None) -> tuple[Hashable, Hashable]:
        """(cache key, weights) a call with this noise would use now: what the graph cache compares."""
        watch = self._loop_watch()
        structure, weights = watch.read()
        if weights[2] != watch.weights[2]:  # a submodule was swapped: take the module list anew
            self._watch = watch = LoopWatch(self.model, *self.solver.modules())
            structure, weights = watch.structure, watch.weights
        extra = {**self.extra_args, **(extra_args or {})}
        key = (tuple(noise.shape), noise.dtype, noise.device, self.solver.graph_key(), self.plan.n_steps,
               self.plan.structure,
               id(self.model), structure, argument_signature(extra), self.check_finite, self.keep_trajectory)
        return key, weights

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
        check_input(noise, "noise")
        if out is not None:
            check_out(out, noise)
        if extra_args is not None and not isinstance(extra_args, dict):
            raise TypeError(f"extra_args must be a dict of keyword arguments for the model, got {type(extra_args).__name__}")
        extra = {**self.extra_args, **(extra_args or {})}
        if not self._graphable(noise, callback):
            return self._eager(noise, extra, callback, disable, out)
        key, weights = self.cache_key(noise, extra_args)
        if key in self.graphs.eager_keys:
            return self._eager(noise, extra, callback, disable, out)
        entry = self.graphs.get(key, weights) or self._capture(noise, extra, key, weights)
        if entry is None:
            return self._eager(noise, extra, callback, disable, out)
        return entry.replay(noise, extra, out)

    def _loop_watch(self) -> LoopWatch:
        watch = self._watch
        if watch is None or watch.roots[0] is not self.model or list(watch.roots[1:]) != self.solver.modules():
            self._watch = watch = LoopWatch(self.model, *self.solver.modules())
        return watch

    def _eager(self, noise: Tensor, extra: dict, callback: Callback | None, disable: bool | None, out: Tensor | None):
        run = Run(self.plan, self.model, noise, extra_args=extra, callback=callback, generator=self.generator,
                  check_finite=self.check_finite)
        trajectory = new_trajectory(noise, run) if self.keep_trajectory else None
        x = run_steps(run, noise, disable, trajectory)
        run.raise_if_not_finite(run.finite_flags())
        if out is not None:
            x = out.copy_(x)
        return x if trajectory is None else (x, trajectory)

    def _graphable(self, noise: Tensor, callback: Callback | None) -> bool:
        if not self.cuda_graph or noise.device.type != "cuda":
            return False
        if callback is not None:
            return False  # callbacks run Python per step: eager by design (see the module docstring)
        if self.generator is not None and self.generator.device != noise.device:
            self._note_fallback("the generator is not on the noise's CUDA device; drawing noise eagerly")
            return False
        return True

    def _note_fallback(self, reason: str) -> None:
        if self.fallback_reason != reason:
            warnings.warn(f"fused_diffusion.Sampler runs eagerly: {reason}", RuntimeWarning, stacklevel=3)
        self.fallback_reason = reason

    def _capture(self, noise: Tensor, extra: dict, key: Hashable, weights: Hashable) -> CapturedLoop | None:
        """A new graph for `key`, or None after warning once (the key then runs eagerly)."""
        if records_own_cuda_graphs(self.model):
            self._note_fallback(OWN_GRAPHS_HINT)
            self.graphs.eager_keys.add(key)
            return None
        if self._pool is None:
            with torch.cuda.device(noise.device):
                self._pool = torch.cuda.graph_pool_handle()
        try:
            entry = capture(self.plan, self.model, noise, extra, pool=self._pool, generator=self.generator,
                            check_finite=self.check_finite, keep_trajectory=self.keep_trajectory, weights=weights,
                            keepalive=(self.model, self._watch.modules))
        except Exception as error:  # noqa: BLE001 - any capture failure (OOM, unsupported op) falls back correctly
            self._note_fallback(f"CUDA graph capture failed ({type(error).__name__}: {error})")
            self.graphs.eager_keys.add(key)
            return None
        self.captures += 1
        self.graphs.put(key, entry)
        return entry


def check_out(out: Tensor, noise: Tensor) -> None:
    """`out` receives the result as is: same shape (a broadcast copy would repeat one sample), floating point (an
    integer buffer would truncate), same device (no hidden transfer)."""
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != noise.shape:
        raise ValueError(f"out must have the result's shape {tuple(noise.shape)}, got {tuple(out.shape)}")
    if not out.is_floating_point():
        raise TypeError(f"out must be a floating-point tensor, got dtype {out.dtype}")
    if out.device != noise.device:
        raise ValueError(f"out must be on the noise's device {noise.device}, got {out.device}")
