"""Loads the C++/CUDA extension: the `fused_diffusion._C` that setup.py built, else a JIT build of csrc/.

`load()` never raises: without a usable extension it warns once and returns (None, reason), and the
dispatcher falls back to the other backends. Set FUSED_DIFFUSION_NO_JIT=1 to skip the JIT build.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

from . import _build as build

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_lock = threading.Lock()
_result: tuple[ModuleType | None, str] | None = None


def load() -> tuple[ModuleType | None, str]:
    """(module, how it was obtained), or (None, why it is unavailable). Cached after the first call."""
    global _result
    with _lock:  # a JIT build takes minutes: concurrent first callers wait for the one build
        if _result is None:
            _result = _load()
            if _result[0] is None:
                warnings.warn(f"fused_diffusion C++ extension unavailable: {_result[1]}", RuntimeWarning, stacklevel=2)
        return _result


def _prebuilt() -> tuple[ModuleType | None, str]:
    if importlib.util.find_spec("fused_diffusion._C") is None:
        return None, "fused_diffusion._C was not built at install time"
    try:
        from fused_diffusion import _C

        return _C, "prebuilt fused_diffusion._C"
    except ImportError as e:  # e.g. built against another torch version (undefined symbols)
        return None, f"prebuilt fused_diffusion._C does not import ({e})"


def _load() -> tuple[ModuleType | None, str]:
    module, prebuilt = _prebuilt()
    if module is not None:
        return module, prebuilt
    if os.environ.get("FUSED_DIFFUSION_NO_JIT") == "1":
        return None, f"{prebuilt}; JIT build disabled by FUSED_DIFFUSION_NO_JIT=1"
    if not _CSRC.is_dir():
        return None, f"{prebuilt}; no csrc/ sources to JIT-build from (non-editable install built without a compiler)"
    try:
        return _jit_build()
    except Exception as e:  # compiler missing, compile error, ninja missing, ...
        lines = str(e).strip().splitlines()
        return None, f"{prebuilt}; JIT build failed: {lines[-1] if lines else type(e).__name__}"


def _jit_build() -> tuple[ModuleType, str]:
    from torch.utils.cpp_extension import load as load_extension

    cuda = build.with_cuda()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    build_dir = cache / "fused_diffusion" / f"torch-{torch.__version__}"
    build_dir.mkdir(parents=True, exist_ok=True)
    cuda_flag = [f"-D{build.CUDA_MACRO}"] if cuda else []
    module = load_extension(
        name="fused_diffusion_C",
        sources=build.sources(_CSRC.parent, cuda),
        extra_cflags=build.CXX_FLAGS + cuda_flag,
        extra_cuda_cflags=build.NVCC_FLAGS + cuda_flag,
        extra_ldflags=build.LINK_FLAGS,
        build_directory=str(build_dir),
        with_cuda=cuda,
        verbose=False,
    )
    return module, f"JIT-built in {build_dir}" + (" (with CUDA)" if cuda else " (CPU only)")
