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
from ..checks import check_count, check_real
from ..models import EpsDenoiser
from ..schedules import ddpm_alphas_cumprod
from .digits_unet import load_unet
from .train import WEIGHTS

# where multistep consistency sampling re-noises to after its first step: the paper chose its 2-step sigma by a
# search of the sample quality, so does this (2-step FD on noise of another seed than the bench's, see docs/few-step.md)
RENOISE_SIGMA = 1.5


class ConsistencyZooModel(NamedTuple):
    """A consistency model ready for `fd.sample_consistency(model, noise * sigma_max, sigmas(steps),
    sigma_min=model.sigma_min)`: `model(x, sigma)` the consistency function f, its largest sigma and the shape of
    one sample."""
    model: ConsistencyFunction
    sigma_max: float
    sample_shape: tuple[int, ...]

    def sigmas(self, steps: int, renoise_sigma: float = RENOISE_SIGMA, device: str | torch.device = "cpu") -> Tensor:
        """sigma_max, then steps - 1 points of a Karras ramp (rho = 7) from `renoise_sigma` down toward sigma_min
        (sigma_min itself left out: f is the identity there), then 0; one model call per step."""
        steps = check_count("steps", steps)
        renoise_sigma = check_real("renoise_sigma", renoise_sigma, above=self.model.sigma_min)
        if renoise_sigma >= self.sigma_max:
            raise ValueError(f"renoise_sigma must be < sigma_max = {self.sigma_max}, got {renoise_sigma}")
        inner = karras_sigmas(steps, self.model.sigma_min, renoise_sigma).flip(0)[:-1]
        return torch.cat([torch.tensor([self.sigma_max], dtype=torch.float64), inner, inner.new_zeros(1)]).to(
            device, torch.float32)


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
