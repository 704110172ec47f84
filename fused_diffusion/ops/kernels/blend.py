"""blend: DeepCache's feature blend out = w * fresh + (1 - w) * cached, with w a device scalar or one per sample."""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .._common import elementwise_operands, writeback
from ._triton import BLOCK, NUM_WARPS, launch_grid, load_scalar, needs_int64, program_offsets


@triton.jit
def _blend_kernel(
    out_ptr, fresh_ptr, cached_ptr, w_ptr, n_elements, row_numel,
    PER_BATCH: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = program_offsets(BLOCK, IDX64)
    mask = offs < n_elements
    # Batch is the outermost dim in memory (checked by the launcher), so sample = offset // row_numel.
    w = load_scalar(w_ptr, offs // row_numel if PER_BATCH else 0, mask, PER_BATCH)
    fresh = tl.load(fresh_ptr + offs, mask=mask).to(tl.float32)
    cached = tl.load(cached_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, (w * fresh + (1.0 - w) * cached).to(out_ptr.dtype.element_ty), mask=mask)


def blend_triton(fresh: Tensor, cached: Tensor, w: Tensor, out: Tensor) -> Tensor:
    """Launches the kernel. Arguments as validated by dispatch: fresh, cached and out of one shape, dtype
    and device; w contiguous float32 with 1 or B elements."""
    per_batch = w.numel() > 1
    (fresh, cached), dst = elementwise_operands([fresh, cached], out, batch_outer=per_batch)
    n = dst.numel()
    if n == 0:
        return out
    _blend_kernel[launch_grid(n)](
        dst, fresh, cached, w, n, n // w.numel(),
        PER_BATCH=per_batch, IDX64=needs_int64(n), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    return writeback(out, dst)
