"""An analytic test model: a mixture of isotropic Gaussians, whose EDM denoiser and probability-flow ODE
solution are known exactly. Tests measure solver convergence orders on it; benchmarks and the demo sample it."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GaussianMixture(nn.Module):
    """p(x0) = sum_k w_k N(mu_k, s_k^2 I) in any dimension; x of shape [B, *shape] with prod(shape) = dim.

    Noised by sigma, component k is N(mu_k, (s_k^2 + sigma^2) I), so the exact denoiser is
        D(x, sigma) = sum_k gamma_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),
    gamma_k the posterior responsibilities. Computed in the input's dtype (float32 or float64).
    """

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must be [K, dim], got shape {tuple(means.shape)}")
        k = means.shape[0]
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(f"stds and weights must have shape [{k}], got {tuple(stds.shape)} and {tuple(weights.shape)}")
        if (stds <= 0).any() or (weights <= 0).any():
            raise ValueError("stds and weights must be positive")
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("log_weights", (weights / weights.sum()).log())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def random(cls, components: int, dim: int, seed: int = 0, spread: float = 2.0) -> "GaussianMixture":
        """A reproducible mixture with means ~ N(0, spread^2), stds in [0.3, 0.8] and random weights."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * spread
        stds = 0.3 + 0.5 * torch.rand(components, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(means, stds, weights)

    def _flat(self, x: Tensor) -> Tensor:
        if x[0].numel() != self.dim:
            raise ValueError(f"each sample must have {self.dim} elements, got shape {tuple(x.shape[1:])}")
        return x.reshape(x.shape[0], self.dim)

    def _posterior(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Responsibilities gamma [B, K] and the component variances s_k^2 + sigma^2 [B, K]."""
        means, stds, log_w = (t.to(x.dtype) for t in (self.means, self.stds, self.log_weights))
        var = stds**2 + sigma.to(x.dtype).reshape(-1, 1) ** 2
        dist2 = (x * x).sum(1, keepdim=True) - 2 * x @ means.T + (means * means).sum(1)
        logits = log_w - 0.5 * dist2 / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return logits.softmax(dim=1), var

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        flat = self._flat(x)
        sigma = sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma
        gamma, var = self._posterior(flat, sigma)
        means, stds = self.means.to(x.dtype), self.stds.to(x.dtype)
        shrink = (gamma * stds**2 / var).sum(1, keepdim=True)
        pulled = (gamma * sigma.to(x.dtype).reshape(-1, 1) ** 2 / var) @ means
        return (shrink * flat + pulled).reshape(x.shape)

    def ode_derivative(self, x: Tensor, sigma: Tensor) -> Tensor:
        """dx/dsigma = (x - D) / sigma, written as sigma * sum_k gamma_k (x - mu_k) / (s_k^2 + sigma^2),
        which stays exact at sigma = 0."""
        flat = self._flat(x)
        gamma, var = self._posterior(flat, sigma)
        w = gamma / var
        out = sigma.to(x.dtype).reshape(-1, 1) * (w.sum(1, keepdim=True) * flat - w @ self.means.to(x.dtype))
        return out.reshape(x.shape)

    def ode_solution(self, x: Tensor, sigma_from: float, sigma_to: float = 0.0, steps: int = 2000) -> Tensor:
        """The probability-flow ODE solution from (x, sigma_from) to sigma_to, in float64 by classical RK4 on a
        rho = 7 grid (about 1e-12 relative error at the default steps: far below any solver under test)."""
        u_from, u_to = sigma_from ** (1 / 7), sigma_to ** (1 / 7)
        grid = (u_from + torch.linspace(0, 1, steps + 1, dtype=torch.float64) * (u_to - u_from)) ** 7
        y = x.to(torch.float64)
        ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        f = lambda y, s: self.ode_derivative(y, ones * s)  # noqa: E731
        for s, s_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
            h = s_next - s
            k1 = f(y, s)
            k2 = f(y + 0.5 * h * k1, s + 0.5 * h)
            k3 = f(y + 0.5 * h * k2, s + 0.5 * h)
            k4 = f(y + h * k3, s_next)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y.to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> Tensor:
        """n exact samples of the data distribution, [n, dim]."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * noise).to(dtype)
