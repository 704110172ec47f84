"""Triton kernel of lincomb: out = sum_k coeffs[..., k] * inputs[k] for up to 6 inputs, in one pass over memory.

Coefficients come from a device row ([K], or [B, K] with one row per sample), so the same launch can be replayed
inside a CUDA graph with a new coefficient table.
"""
from __future__ import annotations

from typing import Sequence

import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .. import library
from .._common import MAX_INPUTS, elementwise_operands, kernel_param, writeback
from ._triton import BLOCK, NUM_WARPS, Kernel, launch_grid, load_scalar, needs_int64, program_offsets


@triton.jit
def _term(x_ptr, c_ptr, k: tl.constexpr, row_offset, offs, mask, PER_ROW: tl.constexpr):
    c = load_scalar(c_ptr + k, row_offset, mask, PER_ROW)
    return c * tl.load(x_ptr + offs, mask=mask).to(tl.float32)


@triton.jit
def _lincomb_kernel(
    out_ptr, x0, x1, x2, x3, x4, x5, c_ptr,
    n_elements, row_numel,
    K: tl.constexpr, PER_ROW: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = program_offsets(BLOCK, IDX64)
    mask = offs < n_elements
    # Batch is the outermost dim in memory (checked by the launcher), so row = offset // row_numel.
    row_offset = (offs // row_numel) * K if PER_ROW else 0
    acc = _term(x0, c_ptr, 0, row_offset, offs, mask, PER_ROW)
    if K > 1:
        acc += _term(x1, c_ptr, 1, row_offset, offs, mask, PER_ROW)
    if K > 2:
        acc += _term(x2, c_ptr, 2, row_offset, offs, mask, PER_ROW)
    if K > 3:
        acc += _term(x3, c_ptr, 3, row_offset, offs, mask, PER_ROW)
    if K > 4:
        acc += _term(x4, c_ptr, 4, row_offset, offs, mask, PER_ROW)
    if K > 5:
        acc += _term(x5, c_ptr, 5, row_offset, offs, mask, PER_ROW)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(kernel: Kernel, ins: list[Tensor], coeffs: Tensor, dst: Tensor) -> None:
    """Runs `kernel` (_lincomb_kernel, or wrap_triton's traceable form of it) over dense operands of one layout,
    batch outermost when coeffs (float32, contiguous) has a row per sample."""
    n = dst.numel()
    if n == 0:
        return
    per_row = coeffs.dim() == 2
    pointers = ins + [ins[0]] * (MAX_INPUTS - len(ins))  # unused slots: never read (K is constexpr)
    kernel[launch_grid(n)](
        dst, *pointers, coeffs, n, n // coeffs.shape[0] if per_row else n,
        K=len(ins), PER_ROW=per_row, IDX64=needs_int64(n), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )


def lincomb_triton(inputs: Sequence[Tensor], coeffs: Tensor, out: Tensor) -> Tensor:
    """Launches the kernel. Arguments as validated by ops.lincomb: 1..6 inputs and out of one shape, dtype and
    device; coeffs [K] or [B, K] on that device."""
    coeffs = kernel_param(coeffs)
    ins, dst = elementwise_operands(inputs, out, batch_outer=coeffs.dim() == 2)
    _launch(_lincomb_kernel, ins, coeffs, dst)
    return writeback(out, dst)


@triton_op(f"{library.TRITON}::lincomb", mutates_args=())
def lincomb_triton_op(inputs: list[Tensor], coeffs: Tensor) -> Tensor:
    """torch.ops.fused_diffusion_triton.lincomb: lincomb_triton as a custom op that torch.compile traces into its
    kernel. Functional: the output is contiguous, as the fake kernel says, and so are the operands made."""
    out = library.allocate("lincomb", inputs, coeffs)
    _launch(wrap_triton(_lincomb_kernel), [t.contiguous() for t in inputs], kernel_param(coeffs), out)
    return out


library.register_functional(f"{library.TRITON}::lincomb", "lincomb")
