"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) as k-diffusion's sample_dpmpp_2m."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Solver
from .run import Run


class DPMpp2M(Solver):
    """With t = -log sigma, h = t_{i+1} - t_i, r = h_{i-1} / h:
    x_{i+1} = (sigma_{i+1}/sigma_i) x - expm1(-h) ((1 + 1/(2r)) D_i - 1/(2r) D_{i-1});
    the first step is first order (D_{i-1} absent), the last one lands on D. One lincomb on [x, D_i, D_{i-1}]."""

    name = "dpmpp_2m"
    history = 1

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        ratio = sigma_next / sigma
        weight = 1 - ratio  # = -expm1(-h)
        h = torch.where(sigma_next > 0, (sigma / sigma_next.clamp_min(1e-300)).log(), 1.0)
        h_last = torch.cat([h.new_ones(1), h[:-1]])  # row 0 is first order, its r is unused
        half_inv_r = h / (2 * h_last)
        half_inv_r[0] = 0.0
        coeffs = torch.stack([ratio, weight * (1 + half_inv_r), -weight * half_inv_r], dim=1)
        return {"sigma": sigma, "dpmpp_2m": coeffs}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.lands_on_zero(i):
            return denoised
        if i == 0:
            x = run.lincomb("dpmpp_2m", i, x, denoised)
        else:
            x = run.lincomb("dpmpp_2m", i, x, denoised, run.history[-1])
        run.history.append(denoised)
        return x
