"""Shortcut Diffusion Optimization (Dou et al. 2025, "You Only Look One Step: Accelerating Backpropagation in
Diffusion Sampling with Gradient Shortcuts"): optimise through a sampler while keeping the autograd graph of one
step only.

Every solver step of this library is a linear combination of x, model outputs and noise, with coefficients from
the schedule. `sample(..., grad_step=k)` runs the model calls of every step but k under `torch.no_grad()`; the
linear updates stay differentiable (they save nothing: their backward is a scaled copy), so the gradient of a loss
on the sample still reaches the initial noise through every step's x-coefficient, and reaches the model's inputs,
a conditioning tensor in `extra_args` or the model's parameters through step k's call. Memory is one model call's
activations instead of all of them, backward time one call's instead of all. `grad_step="all"` is plain full
backpropagation through the same loop, for comparison.

>>> noise = torch.randn(16, 1, 8, 8, requires_grad=True)
>>> x0 = fd.sdo.sample(denoiser, noise * sigmas[0], sigmas, "dpmpp_2m")          # a random step keeps its graph
>>> loss(x0).backward()                                                             # noise.grad: the SDO gradient
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .checks import check_count, describe
from .solvers import Plan, Run, Solver, check_input, get_solver, run_steps
from .solvers.run import Callback, NoiseSampler


def pick_grad_step(grad_step: int | str, n_steps: int, step_generator: torch.Generator | None = None) -> int | None:
    """The step index that keeps its graph: `grad_step` itself (negative counts from the end), one drawn uniformly
    with `step_generator` for "random", None (every step) for "all"."""
    if step_generator is not None and not isinstance(step_generator, torch.Generator):
        raise TypeError(f"step_generator must be a torch.Generator or None, got {describe(step_generator)}")
    if grad_step == "all":
        return None
    if grad_step == "random":
        return int(torch.randint(n_steps, (), generator=step_generator))
    if isinstance(grad_step, str):
        raise ValueError(f"grad_step must be a step index, 'random' or 'all', got {grad_step!r}")
    index = check_count("grad_step", grad_step, minimum=-n_steps)
    if index >= n_steps:
        raise ValueError(f"grad_step must be a step index in [-{n_steps}, {n_steps - 1}] (the schedule has "
                         f"{n_steps} steps), got {index}")
    return index % n_steps


def sample(model: Callable[..., Any], x: Tensor, schedule: Tensor, solver: str | Solver = "euler", *,
           grad_step: int | str = "random", step_generator: torch.Generator | None = None,
           extra_args: dict | None = None, callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
           generator: torch.Generator | None = None, disable: bool | None = True, **solver_options: Any) -> Tensor:
    """Samples `model` with `solver` (a name from fused_diffusion.solvers.SOLVERS with its options, or an instance)
    over `schedule` from `x`, keeping the autograd graph of one step's model calls (`grad_step`: an index, "random"
    drawn with `step_generator`, or "all" for full backpropagation). The result requires grad when x, a tensor in
    extra_args or the model's parameters do. Noise of stochastic solvers comes from `generator` / `noise_sampler`
    as in fd.Sampler. `disable`: no progress bar (the default) or a bar (False)."""
    check_input(x)
    plan = Plan(get_solver(solver, **solver_options), schedule)
    kept = pick_grad_step(grad_step, plan.n_steps, step_generator)
    run = Run(plan, model, x, extra_args=extra_args, callback=callback, noise_sampler=noise_sampler,
              generator=generator, grad_steps=None if kept is None else (kept,))
    x = run_steps(run, x, disable=disable)
    run.raise_if_not_finite(run.finite_flags())
    return x
