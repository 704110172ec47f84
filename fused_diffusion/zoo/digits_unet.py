"""The shipped digits model: a diffusers UNet2DModel (epsilon prediction, DDPM linear betas) stored as safetensors
with its U-Net config and training schedule in the file's metadata, so the file alone rebuilds the model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import files
from ..models import EpsDenoiser
from ..schedules import ddpm_alphas_cumprod
from ..checks import check_device
from .store import WEIGHTS_DIR

DIGITS_WEIGHTS = WEIGHTS_DIR / "digits.safetensors"

SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


def unet_config(resolution: int = 8, channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
                norm_groups: int = 8) -> dict[str, Any]:
    """Three resolution levels with skip connections, attention at the lowest (and in the mid block)."""
    return {
        "sample_size": resolution, "in_channels": 1, "out_channels": 1,
        "block_out_channels": list(channels), "layers_per_block": layers_per_block,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": norm_groups, "attention_head_dim": 8,
    }


def build_unet(config: dict[str, Any]):
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ImportError("the digits model is a diffusers UNet2DModel: pip install 'fused_diffusion[digits]'") from e
    return UNet2DModel(**config)


class ZooModel(NamedTuple):
    """A shipped model ready to sample: `denoiser(x, sigma)` (EDM convention), the DDPM `alphas_cumprod` it was
    trained with (for fd.sample_ddim on `denoiser.inner_model`), and the shape of one sample."""
    denoiser: EpsDenoiser
    alphas_cumprod: Tensor
    sample_shape: tuple[int, ...]


def load_unet(path: str | Path, kind: files.Kind, device: Any = "cpu", dtype: Any = torch.float32):
    """(UNet2DModel in eval mode without gradients, on `device` in `dtype`, metadata) from a U-Net file of `kind`
    (zoo/train.py writes them)."""
    device = check_device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise TypeError(f"dtype must be a floating torch.dtype (torch.float32, torch.float64, torch.float16, "
                        f"torch.bfloat16), got {dtype!r}")
    tensors, metadata = files.read(path, kind)
    schedule = metadata["schedule"]
    if not isinstance(schedule, dict) or set(schedule) != set(SCHEDULE):
        raise files.damaged(path, kind, f"its schedule must give {sorted(SCHEDULE)}, got {schedule!r}")
    try:
        unet = build_unet(metadata["config"])
        ddpm_alphas_cumprod(**schedule)
    except (TypeError, ValueError) as e:
        raise files.damaged(path, kind, f"{type(e).__name__}: {e}") from None
    try:
        unet.load_state_dict(tensors)
    except RuntimeError as e:
        raise files.damaged(path, kind, f"its weights do not match its config: {e}") from None
    unet = unet.to(device)
    if dtype != torch.float32:  # (diffusers warns on any dtype cast, so only when one is asked for)
        unet = unet.to(dtype)
    return unet.eval().requires_grad_(False), metadata


def digits(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
           path: str | Path = DIGITS_WEIGHTS) -> ZooModel:
    """The shipped digits model (8x8 scikit-learn digits in [-1, 1]), offline.

    >>> denoiser, alphas_cumprod, shape = fd.zoo.digits()
    >>> sigmas = fd.get_sigmas_karras(10, denoiser.sigma_min, denoiser.sigma_max)
    >>> images = fd.sample_dpmpp_2m(denoiser, torch.randn(16, *shape) * sigmas[0], sigmas)
    """
    unet, metadata = load_unet(path, files.DIGITS_UNET, device, dtype)
    alphas_cumprod = ddpm_alphas_cumprod(**metadata["schedule"])
    resolution = metadata["config"]["sample_size"]
    return ZooModel(EpsDenoiser(unet, alphas_cumprod).to(unet.device), alphas_cumprod, (1, resolution, resolution))
