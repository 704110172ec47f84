"""DPM-Solver-2 in k-diffusion's sample_dpm_2 form (Lu et al. 2022, Alg. 1 with the midpoint
sigma_mid = sqrt(sigma_hat sigma_{i+1}), i.e. r = 1/2 in log sigma), and its ancestral variant."""
from __future__ import annotations

import torch
from torch import Tensor

from .churn import ChurnSolver
from .euler import Ancestral, ancestral_sigmas
from .run import Run


class DPM2(ChurnSolver):
    """x_mid = x + (sigma_mid - sigma_hat) d; x_{i+1} = x + (sigma_{i+1} - sigma_hat) d_mid,
    d_mid = (x_mid - D(x_mid, sigma_mid)) / sigma_mid. Lincombs on [x, D] and [x, x_mid, D_mid]."""

    name, label, paper = "dpm_2", "DPM-2", "Lu et al. 2022 (DPM-Solver), Algorithm 1"
    calls_per_step = 2

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


class DPM2Ancestral(Ancestral):
    """k-diffusion's sample_dpm_2_ancestral: a DPM-Solver-2 step (midpoint sqrt(sigma sigma_down)) down to sigma_down,
    then noise up to sigma_next (ancestral_sigmas in euler.py). Lincombs on [x, D] and [x, x_mid, D_mid, z]. Where
    sigma_down = 0 the step is Euler to 0 (x = D) and, as in k-diffusion, no noise is drawn."""

    name, label, paper = "dpm_2_ancestral", "DPM-2 ancestral", "Lu et al. 2022 (DPM-Solver) + ancestral noise"
    calls_per_step = 2

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, self.eta)
        sigma_mid = (sigma * sigma_down).sqrt()
        ratio = sigma_mid / sigma
        slope = (sigma_down - sigma) / torch.where(sigma_mid > 0, sigma_mid, 1.0)  # rows with sigma_mid = 0: unused
        return {
            "sigma": sigma,
            "sigma_mid": sigma_mid,
            "midpoint": torch.stack([ratio, 1 - ratio], dim=1),
            "dpm_2_ancestral": torch.stack([torch.ones_like(slope), slope, -slope, self.s_noise * sigma_up], dim=1),
        }

    def structure(self, host: dict[str, Tensor]) -> tuple[int, ...]:
        return tuple((host["sigma_mid"] == 0).nonzero().flatten().tolist())  # the Euler-to-0 steps

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.plan.host["sigma_mid"][i] == 0:  # sigma_down = 0: Euler to 0 lands on D
            return denoised
        x_mid = run.lincomb("midpoint", i, x, denoised)
        denoised_mid = run.call(x_mid, i, "sigma_mid")
        return run.noisy_lincomb("dpm_2_ancestral", i, x, x_mid, denoised_mid, noise=self.eta > 0)
