"""The finite check of a sampling run: one device sum per watched tensor (a model output, a noise draw, an input, a
learned predictor's output), read once after the loop, so the first NaN or inf is blamed on what produced it
without a host sync per step."""
from __future__ import annotations

import enum
from typing import Callable

import torch
from torch import Tensor


_WIDE = (torch.float32, torch.float64)


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
        # (kind, step, label) per sum; a group of inputs checked together has {label: tensor} as its label
        self.sources: list[tuple[Source, int, str | dict[str, Tensor]]] = []

    def watch(self, value: Tensor, kind: Source, step: int = -1, label: str = "") -> None:
        # half-precision sums in float32, or a large finite tensor would sum to inf (asking for float32 of a float32
        # tensor takes a slower path: ~3 instead of ~2 us)
        self.sums.append(value.sum() if value.dtype in _WIDE else value.sum(dtype=torch.float32))
        self.sources.append((kind, step, label))

    def watch_inputs(self, named: dict[str, Tensor]) -> None:
        """Queues the check of what a run starts from, {label: tensor}: one reduction over the inputs on a device
        together (a pipeline's conditioning is many tensors); the one holding NaN or inf is found when raising."""
        by_device: dict[torch.device, dict[str, Tensor]] = {}
        for label, value in named.items():
            by_device.setdefault(value.device, {})[label] = value
        for group in by_device.values():
            if len(group) == 1:
                label, value = next(iter(group.items()))
                self.watch(value, Source.INPUT, label=label)
            else:
                self.sums.append(torch.cat([value.reshape(-1) for value in group.values()]).sum(dtype=torch.float32))
                self.sources.append((Source.INPUT, -1, group))

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
                if isinstance(label, dict):  # sync-ok: raising, or a sum of finite inputs that overflowed
                    label = next((name for name, value in label.items() if not torch.isfinite(value).all()), None)
                    if label is None:
                        continue
                raise ValueError(f"{label} contains NaN or inf")
            if kind is Source.NOISE:
                raise FloatingPointError(f"noise_sampler returned non-finite values at step {step}")
            if kind is Source.PREDICTOR:
                raise FloatingPointError(f"the AMED predictor returned non-finite values at step {step}")
            raise FloatingPointError(f"model returned non-finite values at {self.describe(step, label)}")
