"""scikit-learn's bundled 8x8 digits (1797 images inside the scikit-learn wheel, no download) as a diffusion
training set: pixels 0..16 scaled to [-1, 1], one fixed seeded split into train and held-out."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

HELDOUT = 297  # images held out from every training run (the metric's reference set); 1500 remain for training
SPLIT_SEED = 0
NATIVE_RESOLUTION = 8


class DigitsSplit(NamedTuple):
    train_images: Tensor  # [1500, 1, R, R] float32 in [-1, 1]
    train_labels: Tensor  # [1500] int64
    heldout_images: Tensor  # [297, 1, R, R]
    heldout_labels: Tensor  # [297]


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits data ship with scikit-learn: pip install 'fused_diffusion[digits]'") from e
    return load_digits()


def resize(images: Tensor, resolution: int) -> Tensor:
    """Digits at another resolution: bilinear upsampling (the training data of a larger model), area averaging
    down (how larger samples are brought back to the classifier's 8x8)."""
    size = images.shape[-1]
    if resolution == size:
        return images
    mode = "bilinear" if resolution > size else "area"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(images, size=(resolution, resolution), mode=mode, **kwargs)


def load_digits_split(resolution: int = NATIVE_RESOLUTION) -> DigitsSplit:
    """The fixed train / held-out split (seeded permutation of the 1797 images), images at `resolution`."""
    if not isinstance(resolution, int) or resolution < NATIVE_RESOLUTION:
        raise ValueError(f"resolution must be an int >= {NATIVE_RESOLUTION}, got {resolution!r}")
    digits = _sklearn_digits()
    images = torch.from_numpy(digits.images).float().div(16).mul(2).sub(1)[:, None]
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    images, labels = resize(images[order], resolution), labels[order]
    return DigitsSplit(images[HELDOUT:], labels[HELDOUT:], images[:HELDOUT], labels[:HELDOUT])
