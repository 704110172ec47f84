"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Solver
from .run import Run


class Consistency(Solver):
    """x0 = f(x, sigma_i); then re-noise to the next sigma, x = x0 + sqrt(sigma_{i+1}^2 - sigma_min^2) z
    (one lincomb on [x0, z]); the last call's x0 is the sample."""

    name = "consistency"

    def __init__(self, sigma_min: float = 0.002):
        self.sigma_min = float(sigma_min)

    def check_schedule(self, sigmas: Tensor) -> None:
        super().check_schedule(sigmas)
        later = sigmas.detach().to("cpu", torch.float64)[1:]  # sync-ok: validated once, before the loop
        later = later[later > 0]  # a final 0 ends with the last denoise; every noise level re-noised to is above
        if (later < self.sigma_min).any():
            raise ValueError(f"every sigma re-noised to must be >= sigma_min={self.sigma_min}, got {later.tolist()}")  # sync-ok: error path

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
