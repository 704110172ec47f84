"""argparse types for the command line: a bad value becomes argparse's one-line error naming the option, the
expected and the actual value ("argument --calls: must be an integer >= 1, got '0'"), not a traceback mid-run."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

import torch


def count(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An integer >= minimum (and <= maximum when given)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value
    return convert


# a seed torch's generators take (manual_seed overflows beyond int64)
seed = count(0, 2**63 - 1)


def real(above: float) -> Callable[[str], float]:
    """A finite real number > `above`."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > above):
            raise argparse.ArgumentTypeError(f"must be a finite number > {above:g}, got {text!r}")
        return value
    return convert


def device(text: str) -> torch.device:
    """cpu or a CUDA device this machine has."""
    try:
        parsed = torch.device(text)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu or a CUDA device such as cuda:0, got {text!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} needs a CUDA GPU and this machine has none (use cpu)")
    return parsed


def _existing_file_above(path: Path) -> Path | None:
    """The first existing ancestor of `path` that is not a folder (no folder can be made under it), or None."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def folder(text: str) -> Path:
    """A folder to write into: it exists as a folder or can be made (no file in its place or above it)."""
    if not text:
        raise argparse.ArgumentTypeError("must name a folder, got ''")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    blocking = _existing_file_above(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be made: {str(blocking)!r} is a file, not a folder")
    return path


def existing_folder(text: str) -> Path:
    """A folder that exists (to read from)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return path


def file_path(text: str) -> Path:
    """A file to write: not a folder, and its folder exists or can be made."""
    if not text:
        raise argparse.ArgumentTypeError("must name a file, got ''")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    blocking = _existing_file_above(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written: {str(blocking)!r} is a file, not a folder")
    return path
