"""skip_concat: Skip-Tuning's cat([h * b, skip * rho], dim=1), written straight into the concat buffer.

The kernel sees both layouts it supports as a concatenation of two row-major matrices along columns:
NCHW-contiguous has one row per sample (h row = C1*H*W elements); channels_last has one row per
pixel (h row = C1 channels). The same kernel, with BLEND, also serves blend_concat (there the h part
is w * fresh + (1 - w) * cached before the b scaling).
"""
from __future__ import annotations

from typing import Optional

import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .. import library
from .._common import concat_operands, kernel_param, writeback
from ._triton import BLOCK, NUM_WARPS, Kernel, launch_grid, load_scalar, needs_int64, program_offsets


@triton.jit
def _concat_kernel(
    out_ptr, h_ptr, cached_ptr, skip_ptr, w_ptr, b_ptr, rho_ptr,
    n_out, n1, n2, rows_per_sample, w_stride, b_stride, rho_stride,
    BLEND: tl.constexpr, HAS_B: tl.constexpr, PER_BATCH: tl.constexpr,
    IDX64: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = program_offsets(BLOCK, IDX64)
    mask = offs < n_out
    row = offs // (n1 + n2)
    col = offs - row * (n1 + n2)
    in_h = col < n1
    m_h = mask & in_h
    m_skip = mask & (col >= n1)
    batch = row // rows_per_sample if PER_BATCH else 0
    h_offs = row * n1 + col
    h = tl.load(h_ptr + h_offs, mask=m_h).to(tl.float32)
    if BLEND:
        w = load_scalar(w_ptr, batch * w_stride, m_h, PER_BATCH)
        h = w * h + (1.0 - w) * tl.load(cached_ptr + h_offs, mask=m_h).to(tl.float32)
    if HAS_B:
        h *= load_scalar(b_ptr, batch * b_stride, m_h, PER_BATCH)
    s = tl.load(skip_ptr + row * n2 + (col - n1), mask=m_skip).to(tl.float32)
    s *= load_scalar(rho_ptr, batch * rho_stride, m_skip, PER_BATCH)
    tl.store(out_ptr + offs, tl.where(in_h, h, s).to(out_ptr.dtype.element_ty), mask=mask)


def launch_concat(
    h: Tensor, cached: Optional[Tensor], w: Optional[Tensor], skip: Tensor, rho: Tensor, b: Optional[Tensor],
    out: Tensor, *, kernel: Optional[Kernel] = None, out_is_new: bool = False,
) -> Tensor:
    """cat([(blend(h, cached, w) if cached is given else h) * b, skip * rho], 1) into out, by `kernel`:
    _concat_kernel when None, as eager calls launch it, or the Triton ops' wrap_triton form of it (which
    torch.compile traces); out_is_new as concat_operands takes it.

    Arguments as validated by dispatch: data of one dtype and device, h/cached of one shape, skip
    matching h except in dim 1; scalars contiguous float32 with 1 or B elements.
    """
    parts, dst, channels_last = concat_operands([h, skip] if cached is None else [h, skip, cached], out,
                                                out_is_new=out_is_new)
    n = dst.numel()
    if n == 0:
        return out
    h, skip, *rest = parts
    batch = h.shape[0]
    rows = batch * (h.shape[2] * h.shape[3] if channels_last else 1)
    # Absent operands point at present ones; the constexpr flags keep the kernel from reading them.
    cached_arg = rest[0] if rest else h
    w_arg = rho if w is None else w
    b_arg = rho if b is None else b
    strides = [int(s.numel() > 1) for s in (w_arg, b_arg, rho)]
    (_concat_kernel if kernel is None else kernel)[launch_grid(n)](
        dst, h, cached_arg, skip, w_arg, b_arg, rho,
        n, h.numel() // rows, skip.numel() // rows, rows // batch, *strides,
        BLEND=cached is not None, HAS_B=b is not None, PER_BATCH=any(strides),
        IDX64=needs_int64(n), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    return writeback(out, dst)


def skip_concat_triton(h: Tensor, skip: Tensor, rho: Tensor, b: Optional[Tensor], out: Tensor) -> Tensor:
    """Launcher for skip_concat; see launch_concat for the argument contract."""
    return launch_concat(h, None, None, skip, rho, b, out)


@triton_op(f"{library.TRITON}::skip_concat", mutates_args=())
def skip_concat_triton_op(h: Tensor, skip: Tensor, rho: Tensor, b: Optional[Tensor]) -> Tensor:
    """torch.ops.fused_diffusion_triton.skip_concat: skip_concat_triton as a custom op that torch.compile traces into
    its kernel. Functional: the output in the layout the fake kernel says (channels_last when both parts are)."""
    out = library.allocate("skip_concat", h, skip, rho, b)
    return launch_concat(h, None, None, skip, kernel_param(rho), kernel_param(b), out,
                         kernel=wrap_triton(_concat_kernel), out_is_new=True)


library.register_functional(f"{library.TRITON}::skip_concat", "skip_concat")
