"""Chooses the backend of every fused-op call, validates arguments once for all backends, and counts launches.

Order per call: CUDA tensors -> triton (when it imports), else the CUDA extension, else torch;
CPU tensors -> the C++ extension, else torch. FUSED_DIFFUSION_BACKEND=torch|cpp|triton|cuda or
`with use_backend(name):` forces one (the context manager wins over the variable); triton on CPU
tensors works when TRITON_INTERPRET=1 was set before the kernels were imported. Calls the kernels
cannot take (mixed dtypes, dtypes other than fp32/fp16/bf16, concat ops that need autograd) run the
torch reference instead, so a call is never silently wrong. Differentiable lincomb calls go through
LincombFunction, whose forward and backward use the chosen backend.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from types import SimpleNamespace
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from . import reference
from ._common import (
    MAX_INPUTS,
    as_scalar,
    check_same,
    concat_format,
    concat_operands,
    elementwise_operands,
    uniform_float_dtype,
    writeback,
)

BACKENDS = ("triton", "cuda", "cpp", "torch")
_AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}
_ENV = "FUSED_DIFFUSION_BACKEND"
_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("fused_diffusion_backend", default=None)
_launches = [0]


class LaunchCounter:
    """Fused-op launches since the block began: read `.count` during or after the block."""

    def __init__(self) -> None:
        self._start = _launches[0]
        self._end: Optional[int] = None

    @property
    def count(self) -> int:
        return (_launches[0] if self._end is None else self._end) - self._start

    def __repr__(self) -> str:
        return f"LaunchCounter(count={self.count})"


@contextlib.contextmanager
def count_launches() -> Iterator[LaunchCounter]:
    """Counts fused-op launches (forward and backward, every backend) made inside the block."""
    counter = LaunchCounter()
    try:
        yield counter
    finally:
        counter._end = _launches[0]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Forces backend `name` for every fused op called inside the block (this thread / task only)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    why = _unavailable_everywhere(name)
    if why:
        raise RuntimeError(f"backend {name!r} is unavailable: {why}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


# ---------------------------------------------------------------- backend availability and choice


@functools.cache
def _extension() -> tuple[object, str]:
    """(compiled module, how) or (None, why not); loading may JIT-build csrc/ once."""
    try:
        from fused_diffusion import _ext
    except ImportError as e:
        return None, f"fused_diffusion._ext is missing ({e})"
    return _ext.load()


@functools.cache
def _triton_impls() -> tuple[Optional[SimpleNamespace], str]:
    try:
        from ._triton import is_interpreted
        from .blend import blend_triton
        from .blend_concat import blend_concat_triton
        from .lincomb import _lincomb_kernel, lincomb_triton
        from .skip_concat import skip_concat_triton
    except Exception as e:  # not installed, or installed but broken (no usable backend, ...)
        return None, f"triton does not import ({type(e).__name__}: {e})"
    impls = SimpleNamespace(
        lincomb=lincomb_triton, skip_concat=skip_concat_triton, blend=blend_triton, blend_concat=blend_concat_triton
    )
    return impls, "interpreted" if is_interpreted(_lincomb_kernel) else "compiled"


@functools.cache
def _unavailable(name: str, device: str) -> Optional[str]:
    """Why backend `name` cannot run ops on `device` ("cuda" / "cpu" / other) tensors; None when it can."""
    if name == "torch":
        return None
    if device not in ("cuda", "cpu"):
        return f"{name} has no kernels for {device} tensors"
    if name == "triton":
        impls, mode = _triton_impls()
        if impls is None:
            return mode
        if device == "cuda":
            return None if torch.cuda.is_available() else "torch sees no CUDA device"
        if mode != "interpreted":
            return "triton runs CPU tensors only with TRITON_INTERPRET=1 set before its kernels are imported"
        return None
    mod, reason = _extension()
    if mod is None:
        return f"C++/CUDA extension unavailable: {reason}"
    if name == "cpp":
        return None if device == "cpu" else "the cpp backend runs CPU tensors only (use cuda or triton)"
    if device == "cpu":
        return "the cuda backend runs CUDA tensors only (use cpp)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None if mod.has_cuda() else "the extension was built without CUDA"


def _unavailable_everywhere(name: str) -> Optional[str]:
    """None when backend `name` runs on some device, else why not, per device."""
    why = {device: _unavailable(name, device) for device in _AUTO_ORDER}
    return "; ".join(f"{device}: {reason}" for device, reason in why.items()) if all(why.values()) else None


def _forced_name() -> Optional[str]:
    name = _forced.get() or os.environ.get(_ENV) or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{_ENV}={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return name


def _choose(device: torch.device) -> str:
    forced = _forced_name()
    if forced is not None:
        why = _unavailable(forced, device.type)
        if why:
            raise RuntimeError(f"backend {forced!r} was forced but cannot run {device.type} tensors: {why}")
        return forced
    return _auto(device.type)


@functools.cache
def _auto(device: str) -> str:
    return next(name for name in _AUTO_ORDER.get(device, ("torch",)) if _unavailable(name, device) is None)


def backends() -> dict:
    """Which backends can run, why the others cannot, and which one each device's tensors get now."""
    available, unavailable = [], {}
    for name in BACKENDS:
        why = _unavailable_everywhere(name)
        if why:
            unavailable[name] = why
        else:
            available.append(name)
    active = {}
    for device in _AUTO_ORDER:
        try:
            active[device] = _choose(torch.device(device))
        except RuntimeError:
            active[device] = None
    if not torch.cuda.is_available():
        active["cuda"] = None
    return {"available": available, "unavailable": unavailable, "active": active, "forced": _forced_name()}


# ---------------------------------------------------------------- per-backend implementations


def _ext_lincomb(inputs: Sequence[Tensor], coeffs: Tensor, out: Tensor) -> Tensor:
    ins, dst = elementwise_operands(inputs, out, batch_outer=True, any_layout=False)
    _extension()[0].lincomb(ins, coeffs, dst)
    return writeback(out, dst)


def _ext_blend(fresh: Tensor, cached: Tensor, w: Tensor, out: Tensor) -> Tensor:
    (fresh, cached), dst = elementwise_operands([fresh, cached], out, batch_outer=True, any_layout=False)
    _extension()[0].blend(fresh, cached, w, dst)
    return writeback(out, dst)


def _ext_skip_concat(h: Tensor, skip: Tensor, rho: Tensor, b: Optional[Tensor], out: Tensor) -> Tensor:
    (h, skip), dst, _ = concat_operands([h, skip], out)
    _extension()[0].skip_concat(h, skip, rho, b, dst)
    return writeback(out, dst)


def _ext_blend_concat(
    fresh: Tensor, cached: Tensor, w: Tensor, skip: Tensor, rho: Tensor, b: Optional[Tensor], out: Tensor
) -> Tensor:
    (fresh, cached, skip), dst, _ = concat_operands([fresh, cached, skip], out)
    _extension()[0].blend_concat(fresh, cached, w, skip, rho, b, dst)
    return writeback(out, dst)


_EXT_IMPLS = SimpleNamespace(
    lincomb=_ext_lincomb, skip_concat=_ext_skip_concat, blend=_ext_blend, blend_concat=_ext_blend_concat
)


def _impls(backend: str) -> SimpleNamespace:
    return _triton_impls()[0] if backend == "triton" else _EXT_IMPLS


def _launch(impl: Callable[..., Tensor], *args: object) -> Tensor:
    _launches[0] += 1
    return impl(*args)


def _wants_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------- public ops


def lincomb(inputs: Sequence[Tensor], coeffs: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """out = sum_k coeffs[..., k] * inputs[k] in one launch; coeffs a device tensor [K] or per-sample [B, K].

    Computes in float32 and stores in out's dtype (inputs[0]'s when out is None). out may be an input.
    """
    inputs = list(inputs)
    if not 1 <= len(inputs) <= MAX_INPUTS:
        raise ValueError(f"lincomb takes 1 to {MAX_INPUTS} inputs, got {len(inputs)}")
    data = inputs + ([out] if out is not None else [])
    names = [f"inputs[{k}]" for k in range(len(inputs))] + ["out"]
    check_same(data, names, "shape")
    check_same(data, names, "device")
    _check_coeffs(coeffs, inputs)
    backend = _choose(inputs[0].device)
    if backend == "torch" or not uniform_float_dtype(data):
        return _launch(reference.lincomb, inputs, coeffs, out)
    launch = functools.partial(_launch, _impls(backend).lincomb)
    if _wants_grad(coeffs, *inputs):
        from .lincomb import LincombFunction

        result = LincombFunction.apply(launch, coeffs, *inputs)
        return result if out is None else out.copy_(result)
    out = torch.empty_like(inputs[0]) if out is None else out
    return launch(inputs, coeffs.to(torch.float32).contiguous(), out)


def _check_coeffs(coeffs: Tensor, inputs: Sequence[Tensor]) -> None:
    if not isinstance(coeffs, Tensor) or not coeffs.is_floating_point():
        raise ValueError(f"coeffs must be a floating-point tensor on the data's device, got {coeffs!r}")
    if coeffs.dim() not in (1, 2):
        raise ValueError(f"coeffs must be [K] or per-sample [B, K], got shape {tuple(coeffs.shape)}")
    if coeffs.shape[-1] != len(inputs):
        raise ValueError(f"coeffs has K={coeffs.shape[-1]} columns but {len(inputs)} inputs were given")
    if coeffs.dim() == 2 and (inputs[0].dim() == 0 or coeffs.shape[0] != inputs[0].shape[0]):
        batch = inputs[0].shape[0] if inputs[0].dim() else "none (0-d inputs)"
        raise ValueError(f"per-sample coeffs have {coeffs.shape[0]} rows but the batch size is {batch}")
    if coeffs.device != inputs[0].device:
        raise ValueError(f"coeffs is on {coeffs.device} but the inputs are on {inputs[0].device}; keep the table on the data's device")


def blend(fresh: Tensor, cached: Tensor, w: Tensor | float, out: Optional[Tensor] = None) -> Tensor:
    """w * fresh + (1 - w) * cached; w a device scalar or per-sample [B] (a Python number is converted)."""
    data = [fresh, cached] + ([out] if out is not None else [])
    names = ["fresh", "cached", "out"]
    check_same(data, names, "shape")
    check_same(data, names, "device")
    w = as_scalar(w, fresh, "w")
    backend = _choose(fresh.device)
    if backend == "torch" or not uniform_float_dtype(data) or _wants_grad(fresh, cached, w):
        return _launch(reference.blend, fresh, cached, w, out)
    return _launch(_impls(backend).blend, fresh, cached, w, torch.empty_like(fresh) if out is None else out)


def skip_concat(
    h: Tensor, skip: Tensor, rho: Tensor | float, b: Tensor | float | None = None, out: Optional[Tensor] = None
) -> Tensor:
    """cat([h * b, skip * rho], dim=1) written straight into out; rho / b device scalars or per-sample [B]."""
    _check_concat(h, "h", skip, out)
    rho = as_scalar(rho, h, "rho")
    b = None if b is None else as_scalar(b, h, "b")
    backend = _choose(h.device)
    data = [h, skip] + ([out] if out is not None else [])
    if backend == "torch" or not uniform_float_dtype(data) or _wants_grad(h, skip, rho, b):
        return _launch(reference.skip_concat, h, skip, rho, b, out)
    out = _concat_out(h, skip) if out is None else out
    return _launch(_impls(backend).skip_concat, h, skip, rho, b, out)


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
    check_same([fresh, cached], ["fresh", "cached"], "shape")
    check_same([fresh, cached], ["fresh", "cached"], "device")
    _check_concat(fresh, "fresh", skip, out)
    w = as_scalar(w, fresh, "w")
    rho = as_scalar(rho, fresh, "rho")
    b = None if b is None else as_scalar(b, fresh, "b")
    backend = _choose(fresh.device)
    data = [fresh, cached, skip] + ([out] if out is not None else [])
    if backend == "torch" or not uniform_float_dtype(data) or _wants_grad(fresh, cached, skip, w, rho, b):
        return _launch(reference.blend_concat, fresh, cached, w, skip, rho, b, out)
    out = _concat_out(fresh, skip) if out is None else out
    return _launch(_impls(backend).blend_concat, fresh, cached, w, skip, rho, b, out)


def _check_concat(h: Tensor, h_name: str, skip: Tensor, out: Optional[Tensor]) -> None:
    if h.dim() < 2 or skip.dim() != h.dim() or h.shape[0] != skip.shape[0] or h.shape[2:] != skip.shape[2:]:
        raise ValueError(
            f"{h_name} {tuple(h.shape)} and skip {tuple(skip.shape)} must be [B, C, ...] tensors that differ only in dim 1"
        )
    check_same([h, skip] + ([out] if out is not None else []), [h_name, "skip", "out"], "device")
    expected = (h.shape[0], h.shape[1] + skip.shape[1], *h.shape[2:])
    if out is not None and tuple(out.shape) != expected:
        raise ValueError(f"out has shape {tuple(out.shape)} but the concatenation has shape {expected}")


def _concat_out(h: Tensor, skip: Tensor) -> Tensor:
    shape = (h.shape[0], h.shape[1] + skip.shape[1], *h.shape[2:])
    return torch.empty(shape, dtype=h.dtype, device=h.device, memory_format=concat_format([h, skip]))
