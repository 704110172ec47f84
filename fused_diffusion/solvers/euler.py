"""Euler (k-diffusion's sample_euler, EDM Alg. 2 without the correction) and Euler ancestral."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_eta, check_real
from .base import Solver
from .run import Run
from .churn import ChurnSolver


class Euler(ChurnSolver):
    """x_{i+1} = x + (sigma_{i+1} - sigma_hat) (x - D) / sigma_hat  (Karras et al. 2022, eq. 4 / Alg. 2 line 8),
    one lincomb on [x, D]: [sigma_{i+1} / sigma_hat, 1 - sigma_{i+1} / sigma_hat]."""

    name, label, paper = "euler", "Euler", "Karras et al. 2022 (EDM)"

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        tables = self.churn_tables(sigmas)
        ratio = sigmas[1:] / tables["sigma_hat"]
        tables["euler"] = torch.stack([ratio, 1 - ratio], dim=1)
        return tables

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        x, denoised = self.denoise_churned(run, i, x)
        if run.lands_on_zero(i):
            return denoised  # the Euler step to sigma = 0 lands exactly on D
        return run.lincomb("euler", i, x, denoised)


def ancestral_sigmas(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """k-diffusion's get_ancestral_step: sigma_up^2 = eta^2 sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2
    (capped at sigma_next), sigma_down^2 = sigma_next^2 - sigma_up^2, in its operations (DPM-Solver-fast repeats
    them in float32)."""
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


class Ancestral(Solver):
    """A solver that steps deterministically to sigma_down, then adds s_noise sigma_up z (ancestral_sigmas)."""

    noise_option = "eta"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta, self.s_noise = check_eta(eta), check_real("s_noise", s_noise)

    def calls(self, n_steps: int, to_zero: bool = True) -> int:
        if self.calls_per_step > 1 and self.eta > 1:
            raise ValueError(f"{self.name} with eta={self.eta} > 1 makes one model call instead of "
                             f"{self.calls_per_step} in each step whose sigma_down is 0, and the schedule's values "
                             "decide which those are: count the calls of a run instead")
        return super().calls(n_steps, to_zero)


class EulerAncestral(Ancestral):
    """Euler to sigma_down, then noise up to sigma_next (Ho et al. 2020 ancestral sampling in k-diffusion's form):
    one lincomb on [x, D, z]: [sigma_down / sigma, 1 - sigma_down / sigma, s_noise sigma_up]."""

    name, label, paper = "euler_ancestral", "Euler ancestral", "Ho et al. 2020 (DDPM ancestral sampling)"

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, self.eta)
        ratio = sigma_down / sigma
        return {"sigma": sigma, "ancestral": torch.stack([ratio, 1 - ratio, self.s_noise * sigma_up], dim=1)}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.lands_on_zero(i):
            return denoised  # sigma_down = sigma_up = 0
        return run.noisy_lincomb("ancestral", i, x, denoised, noise=self.eta > 0)
