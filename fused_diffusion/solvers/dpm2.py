"""DPM-Solver-2 in k-diffusion's sample_dpm_2 form (Lu et al. 2022, Alg. 1 with the midpoint
sigma_mid = sqrt(sigma_hat sigma_{i+1}), i.e. r = 1/2 in log sigma)."""
from __future__ import annotations

import torch
from torch import Tensor

from .run import Run
from .churn import ChurnSolver


class DPM2(ChurnSolver):
    """x_mid = x + (sigma_mid - sigma_hat) d; x_{i+1} = x + (sigma_{i+1} - sigma_hat) d_mid,
    d_mid = (x_mid - D(x_mid, sigma_mid)) / sigma_mid. Lincombs on [x, D] and [x, x_mid, D_mid]."""

    name = "dpm_2"

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        tables = self.churn_tables(sigmas)
        sigma_hat, sigma_next = tables["sigma_hat"], sigmas[1:]
        sigma_mid = (sigma_hat * sigma_next).sqrt()
        safe_mid = torch.where(sigma_mid > 0, sigma_mid, 1.0)  # the last row is never used
        ratio = sigma_mid / sigma_hat
        slope = (sigma_next - sigma_hat) / safe_mid
        tables["sigma_mid"] = sigma_mid
        tables["midpoint"] = torch.stack([ratio, 1 - ratio], dim=1)
        tables["dpm_2"] = torch.stack([torch.ones_like(slope), slope, -slope], dim=1)
        return tables

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        x, denoised = self.denoise_churned(run, i, x)
        if run.lands_on_zero(i):
            return denoised
        x_mid = run.lincomb("midpoint", i, x, denoised)
        denoised_mid = run.call(x_mid, i, "sigma_mid")
        return run.lincomb("dpm_2", i, x, x_mid, denoised_mid)
