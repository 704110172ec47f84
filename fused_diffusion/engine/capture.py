"""Capturing a whole sampling loop (every model call, guidance combine and solver stage) into one CUDA graph, and
replaying it. Capture runs the same `run_steps` as eager sampling, once on a side stream to warm up (compiling
Triton kernels and torch.compile'd models without consuming the caller's random numbers), then under capture."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

import torch
from torch import Tensor, nn

from ..solvers import Plan, Run, run_steps

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


@dataclass
class CapturedLoop:
    """One captured graph with its static input and extra arguments, its run (tables, diagnostics) and outputs."""

    graph: torch.cuda.CUDAGraph
    run: Run
    static_x: Tensor
    static_extra: dict[str, Any]
    output: Tensor
    trajectory: Tensor | None
    finite: Tensor | None
    weights: Hashable  # of every module the loop calls, at capture (the cache drops the entry when they change)
    keepalive: Any  # the model and the modules in the key, so their ids cannot be reused by other objects

    def replay(self, noise: Tensor, extra: dict, out: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
        self.static_x.copy_(noise)
        for name, value in extra.items():
            if isinstance(value, Tensor):
                self.static_extra[name].copy_(value)
        self.run.update_tables()
        with torch.cuda.device(noise.device):
            self.graph.replay()
        self.run.raise_if_not_finite(self.finite)
        x = self.output.clone() if out is None else out.copy_(self.output)
        return x if self.trajectory is None else (x, self.trajectory.clone())


def new_trajectory(x: Tensor, run: Run) -> Tensor:
    """[steps + 1, *x.shape], row 0 the input."""
    trajectory = x.new_empty((run.plan.steps + 1, *x.shape))
    trajectory[0].copy_(x)
    return trajectory


def capture(
    plan: Plan,
    model: Callable[..., Any],
    noise: Tensor,
    extra: dict,
    *,
    pool: Any,
    generator: torch.Generator | None,
    check_finite: bool,
    keep_trajectory: bool,
    weights: Hashable,
    keepalive: Any,
) -> CapturedLoop:
    """Warms up and captures the loop on the noise's device; raises whatever capture raised (the caller falls back).

    Random numbers: the warm-up's draws are undone (RNG state restored), the graph draws from the global CUDA
    generator or `generator` (registered with the graph), so a replay consumes what an eager run would."""
    device = noise.device
    caller_stream = torch.cuda.current_stream(device)
    static_x = noise.clone()
    static_extra = {k: v.clone() if isinstance(v, Tensor) else v for k, v in extra.items()}

    def new_run() -> Run:
        return Run(plan, model, static_x, extra_args=static_extra, generator=generator, check_finite=check_finite)

    try:
        with torch.cuda.device(device):  # capture and pool on the noise's device, not merely the current one
            rng = generator.get_state() if generator is not None else torch.cuda.get_rng_state(device)
            side = torch.cuda.Stream(device)
            side.wait_stream(caller_stream)
            with torch.cuda.stream(side):
                warm = new_run()
                run_steps(warm, static_x, True, new_trajectory(static_x, warm) if keep_trajectory else None)
            caller_stream.wait_stream(side)
            if generator is not None:
                generator.set_state(rng)
            else:
                torch.cuda.set_rng_state(rng, device)
            graph = torch.cuda.CUDAGraph()
            if generator is not None:
                graph.register_generator_state(generator)
            run = new_run()
            with torch.cuda.graph(graph, pool=pool):
                trajectory = new_trajectory(static_x, run) if keep_trajectory else None
                output = run_steps(run, static_x, True, trajectory)
                finite = run.finite_flags()
    except Exception:
        torch.cuda.set_stream(caller_stream)  # a failed capture_end can leave the capture stream current
        torch.cuda.synchronize(device)  # sync-ok: error path, before the caller's eager fallback
        raise
    return CapturedLoop(graph, run, static_x, static_extra, output, trajectory, finite, weights, keepalive)
