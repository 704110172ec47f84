"""The shipped shortcut digits model (`python -m fused_diffusion train digits-shortcut`) and its baseline, the same
network trained with flow matching only for the same iterations (`train digits-flow`)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from ..schedules import check_device
from ..shortcut import ShortcutUNet
from .digits_unet import load_unet
from .train import WEIGHTS


class ShortcutZooModel(NamedTuple):
    """A shipped flow model ready to sample with `fd.sample_shortcut(model, noise, steps)`: `model(x, t, d)` the
    velocity, and the shape of one sample."""
    model: ShortcutUNet
    sample_shape: tuple[int, ...]


def digits_shortcut(device: str | torch.device = "cpu", objective: str = "shortcut",
                    path: str | Path | None = None) -> ShortcutZooModel:
    """The shortcut digits model (1 to 128 steps), or with objective="flow" the flow-matching baseline (which
    ignores d: it was only trained at the finest step).

    >>> model, shape = fd.zoo.digits_shortcut()
    >>> images = fd.sample_shortcut(model, torch.randn(16, *shape), steps=1)
    """
    device = check_device(device)
    if objective not in ("shortcut", "flow"):
        raise ValueError(f"objective must be 'shortcut' or 'flow', got {objective!r}")
    unet, metadata = load_unet(path or WEIGHTS[objective])
    trained = metadata.get("objective", "ddpm")  # files from before the objective was recorded are DDPM's
    if trained not in ("shortcut", "flow"):
        raise ValueError(f"{path or WEIGHTS[objective]} holds a {trained!r} model, not a shortcut or flow model")
    model = ShortcutUNet(unet, step_conditioned=trained == "shortcut").to(device)
    resolution = metadata["config"]["sample_size"]
    return ShortcutZooModel(model, (1, resolution, resolution))
