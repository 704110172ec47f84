"""The shipped few-step students of the digits model: consistency distillation (`python -m fused_diffusion train
digits-consistency`, fd.consistency) and the phased consistency model (`train digits-pcm --phases 4`, fd.pcm)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import Module

from .. import files
from ..consistency import ConsistencyFunction, karras_sigmas
from ..checks import check_count
from ..models import EpsDenoiser
from ..schedules import ddpm_alphas_cumprod
from .digits_unet import load_unet
from .train import WEIGHTS


class ConsistencyZooModel(NamedTuple):
    """A consistency model ready for `fd.sample_consistency(model, noise * sigma_max, sigmas(steps),
    sigma_min=model.sigma_min)`: `model(x, sigma)` the consistency function f, its largest sigma and the shape of
    one sample."""
    model: ConsistencyFunction
    sigma_max: float
    sample_shape: tuple[int, ...]

    def sigmas(self, steps: int, device: str | torch.device = "cpu") -> Tensor:
        """sigma_max, the inner points of a (steps + 1)-point Karras ramp (rho = 7) down to sigma_min, then 0: one
        call per step (f is the identity at sigma_min, so that point is skipped)."""
        ramp = karras_sigmas(check_count("steps", steps) + 1, self.model.sigma_min, self.sigma_max).flip(0)
        return torch.cat([ramp[:-1], ramp.new_zeros(1)]).to(device, torch.float32)


class PCMZooModel(NamedTuple):
    """A phased consistency model ready for `fd.sample_pcm(unet, noise, alphas_cumprod, phases, steps)`: the eps
    U-Net, its DDPM schedule, its number of phases and the shape of one sample."""
    unet: Module
    alphas_cumprod: Tensor
    phases: int
    sample_shape: tuple[int, ...]


def digits_consistency(device: str | torch.device = "cpu", path: str | Path | None = None,
                       dtype: torch.dtype = torch.float32) -> ConsistencyZooModel:
    """The consistency model distilled from the digits model (1, 2, 4 steps).

    >>> model, sigma_max, shape = cm = fd.zoo.digits_consistency()
    >>> images = fd.sample_consistency(model, torch.randn(16, *shape) * sigma_max, cm.sigmas(2),
    ...                                sigma_min=model.sigma_min)
    """
    unet, metadata = load_unet(WEIGHTS["consistency"] if path is None else path, files.CONSISTENCY_UNET, device, dtype)
    settings = metadata["distillation"]
    denoiser = EpsDenoiser(unet, ddpm_alphas_cumprod(**metadata["schedule"])).to(unet.device)
    model = ConsistencyFunction(denoiser, settings["sigma_min"], settings["sigma_data"])
    resolution = metadata["config"]["sample_size"]
    return ConsistencyZooModel(model, settings["sigma_max"], (1, resolution, resolution))


def digits_pcm(device: str | torch.device = "cpu", path: str | Path | None = None,
               dtype: torch.dtype = torch.float32) -> PCMZooModel:
    """The phased consistency model distilled from the digits model (4 phases: 4 or 8 steps).

    >>> unet, alphas_cumprod, phases, shape = fd.zoo.digits_pcm()
    >>> images = fd.sample_pcm(unet, torch.randn(16, *shape), alphas_cumprod, phases, steps=4)
    """
    unet, metadata = load_unet(WEIGHTS["pcm"] if path is None else path, files.PCM_UNET, device, dtype)
    resolution = metadata["config"]["sample_size"]
    return PCMZooModel(unet, ddpm_alphas_cumprod(**metadata["schedule"]), metadata["distillation"]["phases"],
                       (1, resolution, resolution))
