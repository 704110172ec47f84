"""Fused ops: one module per op (its checks and spec; Triton kernels in kernels/, C++/CUDA in csrc/), all through
one dispatch path (dispatch.py) onto the backend availability.py chooses; torch definitions in reference.py."""
from .availability import backends, use_backend
from .blend import SPEC as _BLEND
from .blend import blend
from .blend_concat import SPEC as _BLEND_CONCAT
from .blend_concat import blend_concat
from .dispatch import OpLaunchCounter, count_op_launches
from .lincomb import SPEC as _LINCOMB
from .lincomb import lincomb, lincomb_on
from .skip_concat import SPEC as _SKIP_CONCAT
from .skip_concat import skip_concat
from .spec import OpSpec

SPECS: dict[str, OpSpec] = {spec.name: spec for spec in (_LINCOMB, _BLEND, _SKIP_CONCAT, _BLEND_CONCAT)}

__all__ = ["OpLaunchCounter", "OpSpec", "SPECS", "backends", "blend", "blend_concat", "count_op_launches", "lincomb", "lincomb_on",
           "skip_concat", "use_backend"]
