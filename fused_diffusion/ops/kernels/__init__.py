"""The Triton kernels of the fused ops, one module per op: kernel, launcher `<op>_triton(*args, out)` (eager calls)
and the launcher as a torch custom op, `torch.ops.fused_diffusion_triton.<op>` (what torch.compile traces).

Importing this package imports triton and registers those ops; `ops.backends` does so lazily and reports why it
failed if it does.
"""
from . import blend, blend_concat, lincomb, skip_concat
from ._triton import is_interpreted as _is_interpreted


def is_interpreted() -> bool:
    """True when TRITON_INTERPRET was set as the kernels were defined: they then run on CPU tensors."""
    return _is_interpreted(lincomb._lincomb_kernel)


__all__ = ["blend", "blend_concat", "is_interpreted", "lincomb", "skip_concat"]
