"""skip_concat: Skip-Tuning's cat([h * b, skip * rho], dim=1), written straight into the concatenation's buffer;
rho / b device scalars or one per sample. Kernels: ops/kernels/skip_concat.py (Triton), csrc/concat.cpp and
csrc/cuda/concat.cu."""
from __future__ import annotations

from types import ModuleType
from typing import Optional

from torch import Tensor

from . import dispatch, reference
from ._common import as_scalar, check_concat, check_data, concat_operands, new_concat_out, writeback
from .spec import OpCall, OpSpec


def _prepare(h: Tensor, skip: Tensor, rho: Tensor | float, b: Tensor | float | None, out: Optional[Tensor]) -> OpCall:
    check_data(h=h, skip=skip, out=out)
    check_concat(h, "h", skip, out)
    rho = as_scalar(rho, h, "rho")
    b = None if b is None else as_scalar(b, h, "b")
    data = [h, skip] + ([out] if out is not None else [])
    return OpCall((h, skip, rho, b), data, (h, skip, rho, b))


def _extension(module: ModuleType, h: Tensor, skip: Tensor, rho: Tensor, b: Optional[Tensor], out: Tensor) -> Tensor:
    (h, skip), dst, _ = concat_operands([h, skip], out)
    module.skip_concat(h, skip, rho, b, dst)
    return writeback(out, dst)


SPEC = OpSpec(
    name="skip_concat",
    prepare=_prepare,
    reference=reference.skip_concat,
    extension=_extension,
    new_out=lambda h, skip, rho, b: new_concat_out(h, skip),
)


def skip_concat(
    h: Tensor, skip: Tensor, rho: Tensor | float, b: Tensor | float | None = None, out: Optional[Tensor] = None
) -> Tensor:
    """cat([h * b, skip * rho], dim=1) written straight into out; rho / b device scalars or per-sample [B]."""
    return dispatch.call(SPEC, h, skip, rho, b, out=out)
