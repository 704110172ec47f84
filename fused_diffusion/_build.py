"""The C++/CUDA extension's sources and compiler flags, in one place: setup.py reads this file by path (before the
package is importable) and the JIT build in _ext.py imports it."""
from __future__ import annotations

import sys
from pathlib import Path

CPP_SOURCES = ["csrc/lincomb.cpp", "csrc/concat.cpp", "csrc/library.cpp", "csrc/bindings.cpp"]
CUDA_SOURCES = ["csrc/cuda/lincomb.cu", "csrc/cuda/concat.cu"]
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
CXX_FLAGS = ["-O3", *OPENMP]
NVCC_FLAGS = ["-O3"]
LINK_FLAGS = OPENMP
CUDA_MACRO = "WITH_CUDA"  # defined when the CUDA kernels are compiled in


def sources(root: str | Path = ".", cuda: bool = False) -> list[str]:
    """The source files relative to the repository root `root`; the .cu files only with `cuda`."""
    return [str(Path(root) / s) for s in CPP_SOURCES + (CUDA_SOURCES if cuda else [])]


def with_cuda() -> bool:
    """Whether to compile the CUDA kernels: torch is a CUDA build and a CUDA toolkit is installed."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None
