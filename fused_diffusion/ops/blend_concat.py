"""blend_concat: DeepCache's blend fed straight into Skip-Tuning's concat, in one pass:
cat([(w * fresh + (1 - w) * cached) * b, skip * rho], dim=1). Kernels: ops/kernels/blend_concat.py (Triton, the
skip_concat kernel with its blend on), csrc/concat.cpp and csrc/cuda/concat.cu."""
from __future__ import annotations

from types import ModuleType
from typing import Optional

from torch import Tensor

from . import dispatch, reference
from ._common import as_scalar, check_concat, check_data, check_same, concat_operands, new_concat_out, writeback
from .spec import OpCall, OpSpec


def _prepare(fresh: Tensor, cached: Tensor, w: Tensor | float, skip: Tensor, rho: Tensor | float,
             b: Tensor | float | None, out: Optional[Tensor]) -> OpCall:
    check_data(fresh=fresh, cached=cached, skip=skip, out=out)
    check_same([fresh, cached], ["fresh", "cached"], "shape")
    check_same([fresh, cached], ["fresh", "cached"], "device")
    check_concat(fresh, "fresh", skip, out)
    w = as_scalar(w, fresh, "w")
    rho = as_scalar(rho, fresh, "rho")
    b = None if b is None else as_scalar(b, fresh, "b")
    data = [fresh, cached, skip] + ([out] if out is not None else [])
    return OpCall((fresh, cached, w, skip, rho, b), data, (fresh, cached, skip, w, rho, b))


def _extension(module: ModuleType, fresh: Tensor, cached: Tensor, w: Tensor, skip: Tensor, rho: Tensor,
               b: Optional[Tensor], out: Tensor) -> Tensor:
    (fresh, cached, skip), dst, _ = concat_operands([fresh, cached, skip], out)
    module.blend_concat(fresh, cached, w, skip, rho, b, dst)
    return writeback(out, dst)


SPEC = OpSpec(
    name="blend_concat",
    prepare=_prepare,
    reference=reference.blend_concat,
    extension=_extension,
    new_out=lambda fresh, cached, w, skip, rho, b: new_concat_out(fresh, skip),
)


def blend_concat(
    fresh: Tensor,
    cached: Tensor,
    w: Tensor | float,
    skip: Tensor,
    rho: Tensor | float,
    b: Tensor | float | None = None,
    out: Optional[Tensor] = None,
) -> Tensor:
    """skip_concat(blend(fresh, cached, w), skip, rho, b, out) in one pass."""
    return dispatch.call(SPEC, fresh, cached, w, skip, rho, b, out=out)
