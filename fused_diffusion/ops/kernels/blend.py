"""blend: DeepCache's feature blend out = w * fresh + (1 - w) * cached, with w a device scalar or one per sample."""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .. import library
from .._common import elementwise_operands, kernel_param, writeback
from ._triton import BLOCK, NUM_WARPS, Kernel, launch_grid, load_scalar, needs_int64, program_offsets


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


def _launch(kernel: Kernel, fresh: Tensor, cached: Tensor, w: Tensor, dst: Tensor) -> None:
    """Runs `kernel` (_blend_kernel, or wrap_triton's traceable form of it) over dense operands of one layout, batch
    outermost when w (float32, contiguous) has a value per sample."""
    n = dst.numel()
    if n == 0:
        return
    per_batch = w.numel() > 1
    kernel[launch_grid(n)](
        dst, fresh, cached, w, n, n // w.numel(),
        PER_BATCH=per_batch, IDX64=needs_int64(n), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )


def blend_triton(fresh: Tensor, cached: Tensor, w: Tensor, out: Tensor) -> Tensor:
    """Launches the kernel. Arguments as validated by dispatch: fresh, cached and out of one shape, dtype
    and device; w contiguous float32 with 1 or B elements."""
    (fresh, cached), dst = elementwise_operands([fresh, cached], out, batch_outer=w.numel() > 1)
    _launch(_blend_kernel, fresh, cached, w, dst)
    return writeback(out, dst)


@triton_op(f"{library.TRITON}::blend", mutates_args=())
def blend_triton_op(fresh: Tensor, cached: Tensor, w: Tensor) -> Tensor:
    """torch.ops.fused_diffusion_triton.blend: blend_triton as a custom op that torch.compile traces into its kernel.
    Functional: the output is contiguous, as the fake kernel says, and so are the operands made."""
    out = library.allocate("blend", fresh, cached, w)
    _launch(wrap_triton(_blend_kernel), fresh.contiguous(), cached.contiguous(), kernel_param(w), out)
    return out


library.register_functional(f"{library.TRITON}::blend", "blend")
