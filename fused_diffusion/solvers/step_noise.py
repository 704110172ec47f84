"""The step noise of a sampling run: k-diffusion's noise_sampler(sigma, sigma_next) when given (its draws checked and
watched for NaN), else standard normal draws from the run's generator or torch's global one."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from .base import Plan
from .finite import FiniteWatch, Source

NoiseSampler = Callable[[Tensor, Tensor], Tensor]


class NoiseSource:
    """`draw(i, at)`: fresh noise shaped like the run's x for step i; `skip(i, at)`: a draw k-diffusion makes and
    discards (no churn, eta = 0), made only with `k_diffusion_rng` to keep its random stream. `at` names the sigma
    pair `plan.noise_sigmas[at][i]` given to a noise_sampler (default: schedule[i], schedule[i + 1])."""

    def __init__(self, plan: Plan, shape: torch.Size, dtype: torch.dtype, device: torch.device, *,
                 noise_sampler: NoiseSampler | None, generator: torch.Generator | None, k_diffusion_rng: bool,
                 finite: FiniteWatch | None):
        self.plan, self.shape, self.dtype, self.device = plan, shape, dtype, device
        self.noise_sampler, self.generator, self.k_diffusion_rng, self.finite = (noise_sampler, generator,
                                                                                 k_diffusion_rng, finite)
        generator_device = device if generator is None else generator.device
        self.skip_by_uniforms = (noise_sampler is None and generator_device.type == "cpu"
                                 and dtype in UNIFORM_ADVANCE_DTYPES and math.prod(shape) >= 16)

    def draw(self, i: int, at: str | None = None) -> Tensor:
        if self.noise_sampler is not None:
            schedule = self.plan.schedule
            pair = (schedule[i], schedule[i + 1]) if at is None else self.plan.noise_sigmas[at][i]
            z = checked_noise(self.noise_sampler(pair[0], pair[1]), self.shape, self.device, f"step {i}")
            if self.finite is not None:
                self.finite.watch(z, Source.NOISE, i)
            return z.to(self.dtype)
        if self.generator is None:
            return torch.randn(self.shape, dtype=self.dtype, device=self.device)
        z = torch.randn(self.shape, dtype=self.dtype, device=self.generator.device, generator=self.generator)
        return z.to(self.device)

    def skip(self, i: int, at: str | None = None) -> None:
        if not self.k_diffusion_rng:
            return
        if self.skip_by_uniforms:
            advance_like_randn(self.shape, self.dtype, self.generator)
        else:
            self.draw(i, at)


# CPU randn of n >= 16 float32 / float64 values draws n uniforms (n + 16 when n % 16: the last 16 are redrawn) from
# the mt19937 stream and Box-Muller-transforms them; uniform_ draws one per value from the same stream (fp16 / bf16
# do not match). tests/test_k_diffusion_samplers.py checks the states agree, so a torch change here fails a test.
UNIFORM_ADVANCE_DTYPES = (torch.float32, torch.float64)


def advance_like_randn(shape: torch.Size, dtype: torch.dtype, generator: torch.Generator | None) -> None:
    """Leaves the CPU generator (torch's global one when None) where torch.randn(shape, dtype=dtype) would, for a
    draw whose values are discarded: uniforms skip the transform, about a sixth less time than the draw of [8, 4, 64, 64] here."""
    n = math.prod(shape)
    torch.empty(n + (16 if n % 16 else 0), dtype=dtype).uniform_(generator=generator)


def checked_noise(z: Any, shape: torch.Size, device: torch.device, where: str) -> Tensor:
    """A noise sampler's draw: a floating-point tensor of x's shape on x's device, or an error naming `where`."""
    if not isinstance(z, Tensor) or z.shape != shape:
        found = f"shape {tuple(z.shape)}" if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"{where}: noise_sampler returned {found}, expected a tensor of shape {tuple(shape)}")
    if z.device != device:
        raise ValueError(f"{where}: noise_sampler returned a tensor on {z.device}, expected {device}")
    if not z.is_floating_point():
        raise TypeError(f"{where}: noise_sampler returned dtype {z.dtype}, expected standard normal floats")
    return z
