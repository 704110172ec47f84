"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_real
from .base import Solver
from .run import Run

# how far below sigma_min (in ulps of the schedule's dtype) a sigma may round: Karras' float32 pow loses about rho
RENOISE_ULPS = 32


class Consistency(Solver):
    """x0 = f(x, sigma_i); then re-noise to the next sigma, x = x0 + sqrt(sigma_{i+1}^2 - sigma_min^2) z
    (one lincomb on [x0, z]); the last call's x0 is the sample."""

    name, label, paper = "consistency", "Consistency", "Song et al. 2023 (Consistency Models), Algorithm 1"
    stochastic = True  # re-noises between steps

    def __init__(self, sigma_min: float = 0.002):
        self.sigma_min = check_real("sigma_min", sigma_min, above=0)

    def check_schedule(self, sigmas: Tensor) -> None:
        super().check_schedule(sigmas)
        host = sigmas.detach().to("cpu", torch.float64)  # sync-ok: validated once, before the loop
        # a schedule ending at sigma_min, computed in its own dtype (e.g. Karras' float32 pow), may land a few ulps
        # below it; that is sigma_min, not a bug (the re-noise scale clamps at 0)
        floor = self.sigma_min * (1 - RENOISE_ULPS * torch.finfo(sigmas.dtype).eps)
        # a final 0 ends with the last denoise; every other sigma after the first is re-noised to
        below = (host < floor) & (host > 0)
        below[0] = False
        if below.any():
            i = int(below.nonzero()[0])
            value = host[i].item()  # sync-ok: error path
            raise ValueError(f"sigmas[{i}] = {value} is below sigma_min={self.sigma_min}; every sigma "
                             "re-noised to (all but the first and a final 0) must be >= sigma_min")

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        scale = (sigma_next**2 - self.sigma_min**2).clamp_min(0).sqrt()
        return {"sigma": sigma, "renoise": torch.stack([torch.ones_like(scale), scale], dim=1)}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.lands_on_zero(i):
            return denoised
        return run.lincomb("renoise", i, denoised, run.noise(i))
