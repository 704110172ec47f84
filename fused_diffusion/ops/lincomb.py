"""lincomb: out = sum_k coeffs[..., k] * inputs[k] in one pass over memory; every solver stage is one call.

Coefficients come from a device row ([K], or [B, K] with one row per sample), so a launch replays inside a CUDA
graph with a new coefficient table. Kernels: ops/kernels/lincomb.py (Triton), csrc/lincomb.cpp and
csrc/cuda/lincomb.cu.
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import dispatch, reference
from ._common import FLOAT_DTYPES, MAX_INPUTS, check_data, check_same, elementwise_operands, writeback
from .spec import OpCall, OpSpec


def _check_coeffs(coeffs: Tensor, inputs: Sequence[Tensor]) -> None:
    if not isinstance(coeffs, Tensor) or not coeffs.is_floating_point() or coeffs.is_complex():
        raise ValueError(f"coeffs must be a floating-point tensor on the data's device, got {coeffs!r}")
    if coeffs.dim() not in (1, 2):
        raise ValueError(f"coeffs must be [K] or per-sample [B, K], got shape {tuple(coeffs.shape)}")
    if coeffs.shape[-1] != len(inputs):
        raise ValueError(f"coeffs has K={coeffs.shape[-1]} columns but {len(inputs)} inputs were given")
    if coeffs.dim() == 2 and (inputs[0].dim() == 0 or coeffs.shape[0] != inputs[0].shape[0]):
        batch = inputs[0].shape[0] if inputs[0].dim() else "none (0-d inputs)"
        raise ValueError(f"per-sample coeffs have {coeffs.shape[0]} rows but the batch size is {batch}")
    if coeffs.device != inputs[0].device:
        raise ValueError(f"coeffs is on {coeffs.device} but the inputs are on {inputs[0].device}; "
                         "keep the table on the data's device")


def _prepare(inputs: Sequence[Tensor], coeffs: Tensor, out: Optional[Tensor]) -> OpCall:
    if not isinstance(inputs, (list, tuple)):  # a tensor would be iterated over its rows
        raise TypeError(f"inputs must be a list or tuple of tensors, got {type(inputs).__name__}")
    inputs = list(inputs)
    check_data(**{f"inputs[{k}]": t for k, t in enumerate(inputs)}, out=out)
    if not 1 <= len(inputs) <= MAX_INPUTS:
        raise ValueError(f"lincomb takes 1 to {MAX_INPUTS} inputs, got {len(inputs)}")
    data = inputs + ([out] if out is not None else [])
    names = [f"inputs[{k}]" for k in range(len(inputs))] + ["out"]
    check_same(data, names, "shape")
    check_same(data, names, "device")
    _check_coeffs(coeffs, inputs)
    return OpCall((inputs, coeffs), data, (coeffs, *inputs))


def _extension(module: ModuleType, inputs: Sequence[Tensor], coeffs: Tensor, out: Tensor) -> Tensor:
    ins, dst = elementwise_operands(inputs, out, batch_outer=True, any_layout=False)
    module.lincomb(ins, coeffs.to(torch.float32).contiguous(), dst)
    return writeback(out, dst)


class LincombFunction(torch.autograd.Function):
    """Differentiable lincomb on any backend: `launch(inputs, coeffs, out)` does the arithmetic.

    d inputs[k] = coeffs[..., k] * grad (one lincomb launch each); d coeffs[..., k] = sum(grad * inputs[k]),
    per sample for [B, K] rows.
    """

    @staticmethod
    def forward(ctx, launch: Callable[..., Tensor], coeffs: Tensor, *inputs: Tensor) -> Tensor:
        ctx.launch = launch
        ctx.save_for_backward(coeffs, *(inputs if ctx.needs_input_grad[1] else ()))
        return launch(list(inputs), coeffs, torch.empty_like(inputs[0]))

    @staticmethod
    def backward(ctx, grad: Tensor):
        coeffs, *inputs = ctx.saved_tensors
        c32 = coeffs.to(torch.float32)
        grads_in = [
            ctx.launch([grad], c32[..., k : k + 1].contiguous(), torch.empty_like(grad)) if needed else None
            for k, needed in enumerate(ctx.needs_input_grad[2:])
        ]
        grad_c = None
        if ctx.needs_input_grad[1]:
            g = grad.float()
            if coeffs.dim() == 2:
                cols = [(g * t.float()).reshape(g.shape[0], -1).sum(1) for t in inputs]
            else:
                cols = [(g * t.float()).sum() for t in inputs]
            grad_c = torch.stack(cols, dim=-1).to(coeffs.dtype)
        return None, grad_c, *grads_in


SPEC = OpSpec(
    name="lincomb",
    prepare=_prepare,
    reference=reference.lincomb,
    extension=_extension,
    new_out=lambda inputs, coeffs: torch.empty_like(inputs[0]),
    autograd=lambda launch, inputs, coeffs: LincombFunction.apply(launch, coeffs, *inputs),
)


def lincomb(inputs: Sequence[Tensor], coeffs: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """out = sum_k coeffs[..., k] * inputs[k] in one launch; coeffs a device tensor [K] or per-sample [B, K].

    Computes in float32 and stores in out's dtype (inputs[0]'s when out is None). out may be an input. A loop that
    makes many calls on one device takes `lincomb_on(device)` once instead (the backend chosen once)."""
    return dispatch.call(SPEC, inputs, coeffs, out=out)


def lincomb_on(device: torch.device) -> Callable[[Sequence[Tensor], Tensor], Tensor]:
    """`lincomb(inputs, coeffs)` for tensors on `device`, with the backend chosen now: what a sampling run takes once.

    Where the C++/CUDA extension is the choice, the common call (float32 coefficients, supported data, no autograd,
    no launch counting) goes straight to it and the extension's own checks refuse what it cannot take: such a call,
    and every other, then takes the full path, whose checks name the argument (or fall back to the torch reference).
    Host cost of the common call: about 2 us (two [1, 4, 8, 8] inputs, this CPU; bench_samplers.py overhead)."""
    module = dispatch.direct_extension(device)
    if module is None:
        return _full
    extension_lincomb, empty_like, is_grad_enabled = module.lincomb, torch.empty_like, torch.is_grad_enabled

    def launch(inputs: Sequence[Tensor], coeffs: Tensor) -> Tensor:
        try:
            first = inputs[0]
            if (first.dtype in FLOAT_DTYPES and coeffs.dtype == torch.float32 and not dispatch.counting()
                    and not (is_grad_enabled() and any(t.requires_grad for t in inputs))):
                result = empty_like(first)
                extension_lincomb(inputs, coeffs, result)
                return result
        except (RuntimeError, TypeError, AttributeError, IndexError):
            pass  # what the extension cannot take: the full path takes it, or names the argument
        return dispatch.call(SPEC, inputs, coeffs)

    return launch


def _full(inputs: Sequence[Tensor], coeffs: Tensor) -> Tensor:
    return dispatch.call(SPEC, inputs, coeffs)
