"""blend_concat: DeepCache's blend fed straight into Skip-Tuning's concat, in one pass:
cat([(w * fresh + (1 - w) * cached) * b, skip * rho], dim=1). The kernel is skip_concat's, with BLEND on.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor
from torch.library import triton_op, wrap_triton

from .. import library
from .._common import kernel_param
from .skip_concat import _concat_kernel, launch_concat


def blend_concat_triton(
    fresh: Tensor, cached: Tensor, w: Tensor, skip: Tensor, rho: Tensor, b: Optional[Tensor], out: Tensor
) -> Tensor:
    """Launcher for blend_concat; see skip_concat.launch_concat for the argument contract."""
    return launch_concat(fresh, cached, w, skip, rho, b, out)


@triton_op(f"{library.TRITON}::blend_concat", mutates_args=())
def blend_concat_triton_op(
    fresh: Tensor, cached: Tensor, w: Tensor, skip: Tensor, rho: Tensor, b: Optional[Tensor]
) -> Tensor:
    """torch.ops.fused_diffusion_triton.blend_concat: blend_concat_triton as a custom op that torch.compile traces
    into its kernel. Functional: the output in the layout the fake kernel says (channels_last when both parts are)."""
    out = library.allocate("blend_concat", fresh, cached, w, skip, rho, b)
    return launch_concat(fresh, cached, kernel_param(w), skip, kernel_param(rho), kernel_param(b), out,
                         kernel=wrap_triton(_concat_kernel), out_is_new=True)


library.register_functional(f"{library.TRITON}::blend_concat", "blend_concat")
