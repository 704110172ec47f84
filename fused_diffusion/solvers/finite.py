"""The finite check of a sampling run: one device sum per watched tensor (a model output, a noise draw, an input, a
learned predictor's output), read once after the loop, so the first NaN or inf is blamed on what produced it
without a host sync per step."""
from __future__ import annotations

import enum
from typing import Callable

import torch
from torch import Tensor


class Source(enum.Enum):
    """What a watched tensor is, and so what a NaN in it is blamed on."""

    INPUT = "input"  # what the run starts from (x, tensor extra_args), before any step
    NOISE = "noise"  # a noise sampler's draw
    MODEL = "model"  # a model call's output
    PREDICTOR = "predictor"  # a learned step predictor's output (AMED, iPNDM-AMED)


class FiniteWatch:
    """Watched tensors of one run: `watch` queues a device-side sum (no sync); `flags` stacks them into one bool per
    watched tensor; `raise_first` names the first non-finite one. `describe(step, label)` names a model call."""

    def __init__(self, describe: Callable[[int, str], str]):
        self.describe = describe
        self.sums: list[Tensor] = []
        self.sources: list[tuple[Source, int, str]] = []  # (kind, step, label) per sum

    def watch(self, value: Tensor, kind: Source, step: int = -1, label: str = "") -> None:
        self.sums.append(value.sum(dtype=torch.float32))
        self.sources.append((kind, step, label))

    def flags(self) -> Tensor | None:
        """One device bool per watched tensor so far: did it hold only finite values."""
        return torch.isfinite(torch.stack(self.sums)) if self.sums else None

    def raise_first(self, flags: Tensor | None) -> None:
        """Raises naming the first watched tensor that held NaN or inf (one host sync, after the loop)."""
        if flags is None:
            return
        for ok, (kind, step, label) in zip(flags.tolist(), self.sources):  # sync-ok: once, after the loop
            if ok:
                continue
            if kind is Source.INPUT:
                raise ValueError(f"{label} contains NaN or inf")
            if kind is Source.NOISE:
                raise FloatingPointError(f"noise_sampler returned non-finite values at step {step}")
            if kind is Source.PREDICTOR:
                raise FloatingPointError(f"the AMED predictor returned non-finite values at step {step}")
            raise FloatingPointError(f"model returned non-finite values at {self.describe(step, label)}")
