"""The shipped shortcut digits model (`python -m fused_diffusion train digits-shortcut`) and its baseline, the same
network trained with flow matching only for the same iterations (`train digits-flow`)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from ..shortcut import ShortcutUNet
from .digits_unet import load_unet
from .train import UNET_KINDS, WEIGHTS


class ShortcutZooModel(NamedTuple):
    """A shipped flow model ready to sample with `fd.sample_shortcut(model, noise, steps)`: `model(x, t, d)` the
    velocity, and the shape of one sample."""
    model: ShortcutUNet
    sample_shape: tuple[int, ...]


def digits_shortcut(device: str | torch.device = "cpu", objective: str = "shortcut",
                    path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> ShortcutZooModel:
    """The shortcut digits model (1 to 128 steps), or with objective="flow" the flow-matching baseline (which
    ignores d: it was only trained at the finest step).

    >>> model, shape = fd.zoo.digits_shortcut()
    >>> images = fd.sample_shortcut(model, torch.randn(16, *shape), steps=1)
    """
    if objective not in ("shortcut", "flow"):
        raise ValueError(f"objective must be 'shortcut' or 'flow', got {objective!r}")
    unet, metadata = load_unet(WEIGHTS[objective] if path is None else path, UNET_KINDS[objective], device, dtype)
    model = ShortcutUNet(unet, step_conditioned=objective == "shortcut")
    resolution = metadata["config"]["sample_size"]
    return ShortcutZooModel(model, (1, resolution, resolution))
