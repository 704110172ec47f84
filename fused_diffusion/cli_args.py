"""argparse types for the command line: a bad value becomes argparse's one-line error naming the option, the
expected and the actual value ("argument --calls: must be an integer >= 1, got '0'"), not a traceback mid-run."""
from __future__ import annotations

import argparse
import math
from typing import Callable

import torch


def count(minimum: int = 1) -> Callable[[str], int]:
    """An integer >= minimum."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    return convert


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
