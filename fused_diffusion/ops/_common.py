"""Host-side helpers shared by the op modules and their launchers: argument checks, scalar normalisation and
memory-layout handling. No Triton here, so everything but the Triton kernels works without importing it.

The fused kernels address tensors as flat memory. That is valid when every operand is dense (no gaps,
no overlap) and all operands share one layout; otherwise these helpers hand the kernels dense copies
and a destination that `writeback` copies into `out` afterwards.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

MAX_INPUTS = 6
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_data(**named: Tensor | None) -> None:
    """Every data argument (None: not given) a real floating-point tensor: integer data would come back truncated,
    complex data with its imaginary part dropped."""
    for name, value in named.items():
        if value is None:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__module__}.{type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {value.dtype}")


def as_scalar(value: Tensor | float, like: Tensor, name: str) -> Tensor:
    """A device scalar ([] / [1]) or per-sample [B] vector (or [B, 1, ...], broadcastable against the data)
    as contiguous float32 [1] or [B] on like's device.

    Python numbers are a convenience of the public wrappers: converted here, once per call.
    """
    if not isinstance(value, Tensor):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a tensor or a Python number, got {type(value).__name__}")
        return torch.full((1,), float(value), dtype=torch.float32, device=like.device)
    if not value.is_floating_point() and value.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but the data is on {like.device}; keep scalars on the data's device")
    batch = like.shape[0] if like.dim() else 1
    if value.numel() not in (1, batch) or (value.dim() > 0 and value.shape[0] != value.numel()):
        raise ValueError(f"{name} must have 1 element or one per batch element ({batch}), got shape {tuple(value.shape)}")
    if value.dim() == 1 and value.dtype == torch.float32 and value.is_contiguous():
        return value  # already the kernels' form: no reshape/convert launches on the hot path
    return value.reshape(-1).to(torch.float32).contiguous()


def check_same(tensors: Sequence[Tensor], names: Sequence[str], attr: str) -> None:
    """ValueError unless every tensor has the same `attr` ("shape" or "device") as the first."""
    first = getattr(tensors[0], attr)
    for t, name in zip(tensors[1:], names[1:]):
        if getattr(t, attr) != first:
            raise ValueError(f"{name} has {attr} {_fmt(getattr(t, attr))} but {names[0]} has {_fmt(first)}")


def _fmt(v: object) -> str:
    return str(tuple(v)) if isinstance(v, torch.Size) else str(v)


def uniform_float_dtype(tensors: Sequence[Tensor]) -> bool:
    """True when all data tensors share one dtype that the fused kernels support."""
    dtype = tensors[0].dtype
    return dtype in FLOAT_DTYPES and all(t.dtype == dtype for t in tensors)


def is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the elements fill exactly numel consecutive slots from data_ptr."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _strides(t: Tensor) -> tuple[int, ...]:
    # Strides of size-1 dims are arbitrary and never used to address memory.
    return tuple(st if s != 1 else 0 for s, st in zip(t.shape, t.stride()))


def _span(t: Tensor) -> tuple[int, int]:
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def overlaps_partially(out: Tensor, inputs: Sequence[Tensor]) -> bool:
    """True when out shares memory with an input without being exactly that input element for element.

    Exact aliasing is safe for elementwise kernels (each element is read before it is written by the
    same program); partial overlap is not, so such calls go through a temporary destination.
    """
    storage = out.untyped_storage().data_ptr()
    lo, hi = None, None
    for t in inputs:
        if t.numel() == 0 or t.untyped_storage().data_ptr() != storage:
            continue  # tensors in different storages cannot overlap
        if lo is None:
            lo, hi = _span(out)
        t_lo, t_hi = _span(t)
        if t_lo < hi and lo < t_hi and not (t_lo == lo and _strides(t) == _strides(out)):
            return True
    return False


def elementwise_operands(
    inputs: Sequence[Tensor], out: Tensor, *, batch_outer: bool, any_layout: bool = True
) -> tuple[list[Tensor], Tensor]:
    """Operands for a flat elementwise kernel: (inputs, destination), all dense with one shared layout.

    any_layout: any shared dense layout is accepted (e.g. channels_last); otherwise only contiguous.
    batch_outer: the kernel derives the batch index as flat_offset // (numel / B), so dim 0 must be
    outermost in memory. The destination is `out` itself when it qualifies, else a contiguous
    temporary for `writeback`; inputs that do not share its layout are copied into it.
    """
    def fits(t: Tensor, like: Tensor) -> bool:
        if not any_layout:
            return t.is_contiguous()
        ok = is_dense(t) and _strides(t) == _strides(like)
        if ok and batch_outer and t.dim() > 0 and t.shape[0] > 1:
            ok = t.stride(0) == t.numel() // t.shape[0]
        return ok

    dst = out
    if not fits(out, out) or overlaps_partially(out, inputs):
        dst = torch.empty_like(out, memory_format=torch.contiguous_format)
    # empty_like keeps the exact strides of a dense tensor, so the copy shares dst's layout.
    return [t if fits(t, dst) else torch.empty_like(dst).copy_(t) for t in inputs], dst


def concat_format(parts: Sequence[Tensor]) -> torch.memory_format:
    """channels_last when every 4-D part is stored that way (and not also plain contiguous), else contiguous."""
    channels_last = all(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last) for p in parts
    )
    return torch.channels_last if channels_last else torch.contiguous_format


def concat_operands(
    parts: Sequence[Tensor], out: Tensor, *, out_is_new: bool = False
) -> tuple[list[Tensor], Tensor, bool]:
    """Operands for the concat kernels: (parts, destination, channels_last).

    All operands end up NCHW-contiguous or all channels_last, following out's layout; the
    destination is a temporary for `writeback` when out has another layout or overlaps an input
    partially (e.g. h is a slice of out). out_is_new: the caller allocated out for this call, so it
    overlaps nothing (and, traced by torch.compile, has no data pointer to compare).
    """
    fmt = concat_format([out])
    dst = out
    if not out.is_contiguous(memory_format=fmt) or (not out_is_new and overlaps_partially(out, parts)):
        dst = torch.empty_like(out, memory_format=fmt)
    parts = [p if p.is_contiguous(memory_format=fmt) else p.contiguous(memory_format=fmt) for p in parts]
    return parts, dst, fmt is torch.channels_last


def kernel_param(t: Tensor | None) -> Tensor | None:
    """A coefficient table or scalar as the kernels read it: float32 and contiguous (None stays None)."""
    return None if t is None else t.to(torch.float32).contiguous()


def writeback(out: Tensor, dst: Tensor) -> Tensor:
    """Copies a temporary destination into out (a no-op when the kernel wrote out directly)."""
    if dst is not out:
        out.copy_(dst)
    return out


def check_concat(h: Tensor, h_name: str, skip: Tensor, out: Tensor | None) -> None:
    """ValueError unless h and skip are [B, C, ...] tensors that differ only in dim 1 and out (if given) has the
    concatenation's shape; all on one device."""
    if h.dim() < 2 or skip.dim() != h.dim() or h.shape[0] != skip.shape[0] or h.shape[2:] != skip.shape[2:]:
        raise ValueError(
            f"{h_name} {tuple(h.shape)} and skip {tuple(skip.shape)} must be [B, C, ...] tensors that differ only in dim 1"
        )
    check_same([h, skip] + ([out] if out is not None else []), [h_name, "skip", "out"], "device")
    expected = (h.shape[0], h.shape[1] + skip.shape[1], *h.shape[2:])
    if out is not None and tuple(out.shape) != expected:
        raise ValueError(f"out has shape {tuple(out.shape)} but the concatenation has shape {expected}")


def new_concat_out(h: Tensor, skip: Tensor) -> Tensor:
    """An empty destination for cat([h, skip], dim=1), channels_last when both parts are."""
    shape = (h.shape[0], h.shape[1] + skip.shape[1], *h.shape[2:])
    return torch.empty(shape, dtype=h.dtype, device=h.device, memory_format=concat_format([h, skip]))
