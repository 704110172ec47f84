"""The model calls of a sampling run, each made the current `fd.ModelCall` while it runs and its output checked: a
floating-point tensor like x, x not modified in place, not the memory of an output the solver still reads. Shared
by every run (`Run`) and by the adaptive sampler, whose attempts are its steps."""
from __future__ import annotations

from typing import Any, Callable, Container, Iterable

import torch
from torch import Tensor

from ..context import ModelCall, model_call, new_run_id
from ..models import unwrap_output
from .finite import FiniteWatch, Source


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


class ModelCalls:
    """`call(x, step, label, *inputs)` = model(x, *inputs, **extra_args), checked. describe(step, label) names a
    call in errors (formatted only for an error). n_steps: the run's steps, for the ModelCall made current during
    each call (None: no context, a run whose step count is not known ahead). still_read: the earlier outputs the
    solver still reads besides this step's (a live collection: the run's history). finite: where each output's finite
    check is queued (None: unchecked). grad_steps: the steps whose calls keep their autograd graph (None: all); the
    others run under no_grad, their denoised output differentiated as constant noise when `constant_noise` (fd.sdo)."""

    def __init__(self, model: Callable[..., Any], extra_args: dict, describe: Callable[[int, str], str], *,
                 n_steps: int | None = None, still_read: Iterable[Tensor] = (), finite: FiniteWatch | None = None,
                 grad_steps: Container[int] | None = None, constant_noise: bool = False):
        self.model, self.extra_args, self.describe = model, extra_args, describe
        self.n_steps, self.still_read, self.finite = n_steps, still_read, finite
        self.grad_steps, self.constant_noise = grad_steps, constant_noise
        self.run_id = new_run_id()
        self.made: list[tuple[int, str]] = []  # (step, label) per call
        self._in_step = 0
        self._step_outputs: list[Tensor] = []  # the current step's outputs so far

    def call(self, x: Tensor, i: int, label: str, *inputs: Tensor) -> Tensor:
        """One model call of step i on explicit inputs (the first, a [B] noise level, given to the context)."""
        made = self.made
        if made and made[-1][0] == i:
            self._in_step += 1
        else:
            self._in_step = 0
            self._step_outputs.clear()
        version = None if x.is_inference() else x._version  # inference tensors keep no version (reading it raises)
        keep_graph = self.grad_steps is None or i in self.grad_steps
        context = None if self.n_steps is None else model_call(
            ModelCall(self.run_id, len(made), i, self.n_steps, self._in_step, label, inputs[0] if inputs else None))
        if context is not None:
            context.__enter__()
        try:
            if keep_graph or not torch.is_grad_enabled():  # the common case: no grad mode to switch
                output = self.model(x, *inputs, **self.extra_args)
            else:
                with torch.no_grad():
                    output = self.model(x, *inputs, **self.extra_args)
        finally:
            if context is not None:
                context.__exit__()
        made.append((i, label))
        out = checked_output(output, x, lambda: self.describe(i, label))
        if not keep_graph and self.constant_noise and x.requires_grad:
            out = ConstantNoise.apply(out, x)
        if version is not None and x._version != version:
            raise ValueError(f"{self.describe(i, label)}: the model modified its input x in place; the solver still "
                             "reads x, so the result would be wrong: compute on a copy (x = x * c, not x.mul_(c))")
        memory = out.data_ptr()
        for earlier in (*self._step_outputs, *self.still_read):
            if earlier.data_ptr() == memory:
                raise ValueError(
                    f"{self.describe(i, label)}: the model returned the memory of an earlier output that the solver "
                    "still reads (it reuses one output buffer), which this call has overwritten; return a new tensor "
                    "from each call, e.g. wrap it: lambda x, sigma, **kw: model(x, sigma, **kw).clone()")
        self._step_outputs.append(out)
        if self.finite is not None:
            self.finite.watch(out, Source.MODEL, i, label)
        return out

    def replay_step(self, i: int) -> None:
        """Forgets step i's calls, so the step can run again from its start with the same outputs (a caller that
        feeds a multi-call step one call at a time, as diffusers' Heun scheduler is stepped)."""
        while self.made and self.made[-1][0] == i:
            self.made.pop()
        self._step_outputs.clear()


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
