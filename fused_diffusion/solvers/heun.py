"""Heun's 2nd-order method (EDM, Karras et al. 2022, Algorithm 2) as k-diffusion's sample_heun."""
from __future__ import annotations

import torch
from torch import Tensor

from .run import Run
from .churn import ChurnSolver


class Heun(ChurnSolver):
    """Predictor x' = x + h d, d = (x - D(x, sigma_hat)) / sigma_hat, h = sigma_{i+1} - sigma_hat (Alg. 2 line 8);
    corrector x_{i+1} = x + h (d + d') / 2, d' = (x' - D(x', sigma_{i+1})) / sigma_{i+1} (line 11), rewritten on
    [x, x', D'] as [1/2, 1/2 + h / (2 sigma_{i+1}), -h / (2 sigma_{i+1})]. Euler on the last step (sigma = 0)."""

    name, label, paper = "heun", "Heun", "Karras et al. 2022 (EDM), Algorithm 2"
    calls_per_step = 2

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        tables = self.churn_tables(sigmas)
        sigma_hat, sigma_next = tables["sigma_hat"], sigmas[1:]
        ratio = sigma_next / sigma_hat
        safe_next = torch.where(sigma_next > 0, sigma_next, 1.0)  # the last row is never used
        half_slope = (sigma_next - sigma_hat) / (2 * safe_next)
        tables["sigma_next"] = sigma_next
        tables["euler"] = torch.stack([ratio, 1 - ratio], dim=1)
        tables["heun"] = torch.stack([torch.full_like(ratio, 0.5), 0.5 + half_slope, -half_slope], dim=1)
        return tables

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        x, denoised = self.denoise_churned(run, i, x)
        if run.lands_on_zero(i):
            return denoised
        x_pred = run.lincomb("euler", i, x, denoised)
        denoised_pred = run.call(x_pred, i, "sigma_next")
        return run.lincomb("heun", i, x, x_pred, denoised_pred)
