"""blend: DeepCache's feature blend out = w * fresh + (1 - w) * cached (w = 0 reuses the cache untouched), w a
device scalar or one per sample. Kernels: ops/kernels/blend.py (Triton), csrc/concat.cpp and csrc/cuda/concat.cu."""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from . import dispatch, reference
from ._common import as_scalar, check_data, check_same, elementwise_operands, writeback
from .spec import OpCall, OpSpec


def _prepare(fresh: Tensor, cached: Tensor, w: Tensor | float, out: Optional[Tensor]) -> OpCall:
    check_data(fresh=fresh, cached=cached, out=out)
    data = [fresh, cached] + ([out] if out is not None else [])
    names = ["fresh", "cached", "out"]
    check_same(data, names, "shape")
    check_same(data, names, "device")
    w = as_scalar(w, fresh, "w")
    return OpCall((fresh, cached, w), data, (fresh, cached, w))


def _extension(module: ModuleType, fresh: Tensor, cached: Tensor, w: Tensor, out: Tensor) -> Tensor:
    (fresh, cached), dst = elementwise_operands([fresh, cached], out, batch_outer=True, any_layout=False)
    module.blend(fresh, cached, w, dst)
    return writeback(out, dst)


SPEC = OpSpec(
    name="blend",
    prepare=_prepare,
    reference=reference.blend,
    extension=_extension,
    new_out=lambda fresh, cached, w: torch.empty_like(fresh),
)


def blend(fresh: Tensor, cached: Tensor, w: Tensor | float, out: Optional[Tensor] = None) -> Tensor:
    """w * fresh + (1 - w) * cached; w a device scalar or per-sample [B] (a Python number is converted)."""
    return dispatch.call(SPEC, fresh, cached, w, out=out)
