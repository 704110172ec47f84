"""Which backend runs a fused-op call, and why the others cannot.

Order per call: CUDA tensors -> triton (when it imports), else the CUDA extension, else torch; CPU tensors -> the
C++ extension, else torch. FUSED_DIFFUSION_BACKEND=torch|cpp|triton|cuda or `with use_backend(name):` forces one
(the context manager wins over the variable); triton on CPU tensors works when TRITON_INTERPRET=1 was set before
the kernels were imported.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from types import ModuleType
from typing import Iterator, Optional

import torch

BACKENDS = ("triton", "cuda", "cpp", "torch")
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}
ENV = "FUSED_DIFFUSION_BACKEND"
_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("fused_diffusion_backend", default=None)


@functools.cache
def extension() -> tuple[Optional[ModuleType], str]:
    """(compiled fused_diffusion._C, how it was obtained) or (None, why not); loading may JIT-build csrc/ once."""
    try:
        from fused_diffusion import _ext
    except ImportError as e:
        return None, f"fused_diffusion._ext is missing ({e})"
    module, how = _ext.load()
    if module is not None:  # importing it defined torch.ops.fused_diffusion.*: their fake kernels and autograd
        from . import library

        library.register(module)
    return module, how


@functools.cache
def triton_kernels() -> tuple[Optional[ModuleType], str]:
    """(the ops.kernels package, "interpreted" / "compiled") or (None, why triton is unusable)."""
    try:
        from . import kernels
    except Exception as e:  # not installed, or installed but broken (no usable backend, ...)
        return None, f"triton does not import ({type(e).__name__}: {e})"
    return kernels, "interpreted" if kernels.is_interpreted() else "compiled"


@functools.cache
def unavailable(name: str, device: str) -> Optional[str]:
    """Why backend `name` cannot run ops on `device` ("cuda" / "cpu" / other) tensors; None when it can."""
    if name == "torch":
        return None
    if device not in ("cuda", "cpu"):
        return f"{name} has no kernels for {device} tensors"
    if name == "triton":
        kernels, mode = triton_kernels()
        if kernels is None:
            return mode
        if device == "cuda":
            return None if torch.cuda.is_available() else "torch sees no CUDA device"
        if mode != "interpreted":
            return "triton runs CPU tensors only with TRITON_INTERPRET=1 set before its kernels are imported"
        return None
    module, reason = extension()
    if module is None:
        return f"C++/CUDA extension unavailable: {reason}"
    if name == "cpp":
        return None if device == "cpu" else "the cpp backend runs CPU tensors only (use cuda or triton)"
    if device == "cpu":
        return "the cuda backend runs CUDA tensors only (use cpp)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None if module.has_cuda() else "the extension was built without CUDA"


def unavailable_everywhere(name: str) -> Optional[str]:
    """None when backend `name` runs on some device, else why not, per device."""
    why = {device: unavailable(name, device) for device in AUTO_ORDER}
    return "; ".join(f"{device}: {reason}" for device, reason in why.items()) if all(why.values()) else None


def environment_backend() -> Optional[str]:
    """FUSED_DIFFUSION_BACKEND as set now. os.environ.get raises and catches a KeyError inside while it is unset
    (~1 us, on every op call); the mapping behind os.environ, which it keeps current, answers in ~0.1 us."""
    if _ENV_DATA is None:
        return os.environ.get(ENV)
    value = _ENV_DATA.get(_ENV_KEY)
    return None if value is None else os.environ.decodevalue(value)


_ENV_DATA = getattr(os.environ, "_data", None)  # CPython's os._Environ; other interpreters: os.environ.get
_ENV_KEY = os.environ.encodekey(ENV) if _ENV_DATA is not None else ENV


def forced() -> Optional[str]:
    name = _forced.get() or environment_backend() or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{ENV}={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return name


def choose(device: torch.device) -> str:
    """The backend for tensors on `device`: the forced one (raising when it cannot run them) or the first
    available in AUTO_ORDER."""
    name = forced()
    if name is not None:
        why = unavailable(name, device.type)
        if why:
            raise RuntimeError(f"backend {name!r} was forced but cannot run {device.type} tensors: {why}")
        return name
    return automatic(device.type)


_choices: dict[tuple[str, Optional[str]], Optional[str]] = {}


def cached_choice(device: torch.device) -> Optional[str]:
    """`choose(device)` remembered per (device type, forced backend): what a hot loop asks on every call (the
    environment variable is still read each time, so setting it takes effect). None where `choose` raises."""
    key = (device.type, _forced.get() or environment_backend())
    try:
        return _choices[key]
    except KeyError:
        try:
            name = choose(device)
        except (RuntimeError, ValueError):
            name = None
        _choices[key] = name
        return name


@functools.cache
def automatic(device: str) -> str:
    return next(name for name in AUTO_ORDER.get(device, ("torch",)) if unavailable(name, device) is None)


def clear_caches() -> None:
    """Forgets every availability answer (tests that fake the environment)."""
    for cached in (extension, triton_kernels, unavailable, automatic):
        cached.cache_clear()
    _choices.clear()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Forces backend `name` for every fused op called inside the block (this thread / task only)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    why = unavailable_everywhere(name)
    if why:
        raise RuntimeError(f"backend {name!r} is unavailable: {why}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def backends() -> dict:
    """Which backends can run, why the others cannot, and which one each device's tensors get now."""
    available, unavailable_ = [], {}
    for name in BACKENDS:
        why = unavailable_everywhere(name)
        if why:
            unavailable_[name] = why
        else:
            available.append(name)
    active = {}
    for device in AUTO_ORDER:
        try:
            active[device] = choose(torch.device(device))
        except RuntimeError:
            active[device] = None
    if not torch.cuda.is_available():
        active["cuda"] = None
    return {"available": available, "unavailable": unavailable_, "active": active, "forced": forced()}
