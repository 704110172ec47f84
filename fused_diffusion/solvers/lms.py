"""Linear multistep (Adams-Bashforth on dx/dsigma with Lagrange weights over the schedule) as k-diffusion's
sample_lms."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ..checks import check_count
from .base import Solver
from .run import Run


@functools.cache
def _gauss_legendre(order: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(order)


def lagrange_weights(sigmas: Tensor, i: int, order: int) -> Tensor:
    """w_j = integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial through sigma_i, ..., sigma_{i-order+1}
    that is 1 at sigma_{i-j} (k-diffusion's linear_multistep_coeff). The integrand has degree order - 1, so Gauss-Legendre
    with `order` nodes is exact; a repeated node makes a weight infinite (refused by the plan). In numpy float64: a
    plan makes one per step, and a chain of torch ops on a few numbers costs ~100x more on the host."""
    nodes, gauss_weights = _gauss_legendre(order)
    grid = sigmas.numpy()
    a, b = grid[i], grid[i + 1]
    tau = (b - a) / 2 * nodes + (a + b) / 2
    known = grid[i - order + 1 : i + 1][::-1]  # sigma_i, sigma_{i-1}, ...
    weights = np.empty(order)
    with np.errstate(divide="ignore", invalid="ignore"):  # a repeated node: inf / nan, refused by the plan
        for j in range(order):
            basis = np.ones_like(tau)
            for k in range(order):
                if k != j:
                    basis = basis * (tau - known[k]) / (known[j] - known[k])
            weights[j] = (b - a) / 2 * (gauss_weights * basis).sum()
    return torch.from_numpy(weights).to(sigmas.dtype)


class LMS(Solver):
    """x_{i+1} = x_i + sum_j w_j d_{i-j}, d = (x - D) / sigma, with w the Lagrange weights of the last `order` sigmas
    (lower orders while the history fills; the step to sigma = 0 too). Two lincombs per step: d on [x, D], then the
    update on [x, d_i, d_{i-1}, ...]."""

    name, label, paper = "lms", "LMS", "linear multistep (k-diffusion's sample_lms)"

    def __init__(self, order: int = 4):
        self.order = check_count("order", order)
        if self.order > 5:  # x and up to 5 derivatives: the lincomb's 6 inputs
            raise ValueError(f"order must be an integer from 1 to 5, got {order!r}")
        self.history = self.order - 1

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma = sigmas[:-1]
        update = sigmas.new_zeros(len(sigma), self.order + 1)
        update[:, 0] = 1
        for i in range(len(sigma)):
            weights = lagrange_weights(sigmas, i, min(i + 1, self.order))
            update[i, 1 : 1 + len(weights)] = weights
        return {"sigma": sigma, "to_d": torch.stack([1 / sigma, -1 / sigma], dim=1), "lms": update}

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return False  # the multistep step to 0 is taken as is (k-diffusion), not replaced by D

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        d = run.lincomb("to_d", i, x, denoised)
        earlier = list(run.history)[::-1][: min(i, self.order - 1)]
        x = run.lincomb("lms", i, x, d, *earlier)
        run.history.append(d)
        return x
