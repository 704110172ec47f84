"""Noise samplers, k-diffusion's interface: noise_sampler(sigma, sigma_next) -> a standard normal tensor shaped like x.

`BrownianTreeNoiseSampler` is k-diffusion 0.1.1's: the increments of one Brownian motion over sigma (torchsde's
BrownianTree), normalised to unit variance, so the noise a step sees depends on the interval and not on how many
steps came before it; a solver with more steps converges to the same SDE solution. k-diffusion's DPM++ SDE samplers
use it by default; so do this library's `sample_dpmpp_sde`, `sample_dpmpp_2m_sde` and `sample_dpmpp_3m_sde`.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor

from .checks import check_real, describe


def default_noise_sampler(x: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Independent draws from the global generator, randn_like(x) (k-diffusion's default_noise_sampler)."""
    _check_like(x)
    return lambda sigma, sigma_next: torch.randn_like(x)


def _check_like(x: object) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.is_complex():
        raise TypeError(f"x (whose shape, dtype and device the noise takes) must be a floating-point torch.Tensor, "
                        f"got {describe(x)}")


def _torchsde():
    try:
        import torchsde
    except ImportError as e:
        raise ImportError(
            "Brownian-tree noise needs torchsde (`pip install torchsde`, or `pip install fused_diffusion[sde]`); "
            "or pass noise_sampler=fd.default_noise_sampler(x) for independent Gaussian noise"
        ) from e
    return torchsde


class BatchedBrownianTree:
    """torchsde.BrownianTree over [t0, t1] with one tree per batch item when `seed` is a list (k-diffusion's)."""

    def __init__(self, x: Tensor, t0: Tensor, t1: Tensor, seed: int | Sequence[int] | None = None, **kwargs):
        torchsde = _torchsde()
        t0, t1, self.sign = self.sort(t0, t1)
        w0 = kwargs.get("w0", torch.zeros_like(x))
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()  # one draw from the global generator, as k-diffusion
        self.batched = isinstance(seed, Sequence)
        if self.batched:
            if len(seed) != x.shape[0]:
                raise ValueError(f"seed: a list needs one seed per batch item ({x.shape[0]}), got {len(seed)}")
            w0 = w0[0]
        seeds = seed if self.batched else [seed]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s, **kwargs) for s in seeds]

    @staticmethod
    def sort(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, int]:
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0: Tensor, t1: Tensor) -> Tensor:
        t0, t1, sign = self.sort(t0, t1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """A noise sampler backed by a torchsde.BrownianTree over [sigma_min, sigma_max] (k-diffusion's).

    x: the tensor whose shape, dtype and device the noise takes. seed: an int, a list of one int per batch item (one
    tree each, so an item's noise does not depend on the batch it is in), or None (drawn from the global generator).
    transform: maps sigma to the tree's time (identity by default)."""

    def __init__(self, x: Tensor, sigma_min: float | Tensor, sigma_max: float | Tensor,
                 seed: int | Sequence[int] | None = None, transform: Callable[[Tensor], Tensor] = lambda s: s):
        _check_like(x)
        low, high = check_real("sigma_min", sigma_min, at_least=0), check_real("sigma_max", sigma_max)
        if not low < high:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={low}, sigma_max={high}")
        self.transform = transform
        t0, t1 = self.transform(torch.as_tensor(sigma_min)), self.transform(torch.as_tensor(sigma_max))
        self.range = (min(float(t0), float(t1)), max(float(t0), float(t1)))
        self.tree = BatchedBrownianTree(x, t0, t1, seed)

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        low, high = self.range
        slack = 1e-5 * max(abs(low), abs(high))  # the tree's own tolerance (1e-6) and float32 round trips
        for name, t in (("sigma", t0), ("sigma_next", t1)):
            if not low - slack <= float(t) <= high + slack:  # NaN fails too (torchsde would loop forever on it)
                raise ValueError(f"{name} = {float(t)} lies outside the tree's range [{low:.6g}, {high:.6g}] "
                                 "(after transform); build the sampler over the schedule's range")
        if t0 == t1:  # k-diffusion divides 0 by 0 here and returns NaN
            raise ValueError(f"a Brownian increment over an empty interval (sigma = sigma_next = {float(sigma)}) is "
                             "undefined: a repeated sigma needs noise_sampler=fd.default_noise_sampler(x)")
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends to its tolerance (1e-6) and warns when a float32 sigma_min or sigma_max
            # lands just outside; it clamps the query, which is what is wanted
            warnings.filterwarnings("ignore", message="Should have t[ab]", category=UserWarning)
            return self.tree(t0, t1) / (t1 - t0).abs().sqrt()
