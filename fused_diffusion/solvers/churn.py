"""Stochastic churn shared by the k-diffusion Euler, Heun and DPM-2 samplers (EDM, Karras et al. 2022, Alg. 2)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_real
from .base import Solver
from .run import Run


class ChurnSolver(Solver):
    """Adds EDM's churn: gamma_i = min(s_churn / n, sqrt(2) - 1) for s_tmin <= sigma_i <= s_tmax,
    sigma_hat = sigma_i (1 + gamma_i), x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) * s_noise * z (Alg. 2, lines 4-6)."""

    noise_option = "s_churn"

    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0):
        self.s_churn = check_real("s_churn", s_churn, at_least=0)
        self.s_tmin = check_real("s_tmin", s_tmin, allow_inf=True)
        self.s_tmax = check_real("s_tmax", s_tmax, allow_inf=True)
        self.s_noise = check_real("s_noise", s_noise)

    def churn_tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        """'sigma' [n], 'sigma_hat' [n] and, with churn, the row [1, s_noise sqrt(sigma_hat^2 - sigma^2)]."""
        sigma = sigmas[:-1]
        in_range = (sigma >= self.s_tmin) & (sigma <= self.s_tmax)
        gamma = in_range.to(sigma.dtype) * min(self.s_churn / len(sigma), math.sqrt(2) - 1)
        sigma_hat = sigma * (gamma + 1)
        tables = {"sigma": sigma, "sigma_hat": sigma_hat}
        if self.s_churn > 0:
            noise_scale = self.s_noise * (sigma_hat**2 - sigma**2).sqrt()
            tables["churn"] = torch.stack([torch.ones_like(sigma), noise_scale], dim=1)
        return tables

    def denoise_churned(self, run: Run, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """The first stage of step i: churn x (one fused launch), then D(x_hat, sigma_hat), reported to the callback.
        Returns (x_hat, D). k-diffusion draws the churn noise on every step, churn or not."""
        if self.s_churn > 0:
            x = run.lincomb("churn", i, x, run.noise(i))
        else:
            run.unused_noise(i)
        denoised = run.call(x, i, "sigma_hat")
        run.report(i, x, denoised, "sigma_hat")
        return x, denoised
