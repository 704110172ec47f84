"""Torch definitions of every fused op: the ground truth each backend is tested against.

All arithmetic is done in float32 (float64 for float64 data, which only this reference handles) and the result
stored in the output dtype, as the fused kernels do.
Coefficients and scalars are device tensors, never Python floats, so no op here syncs with the host.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _per_batch(c: Tensor, like: Tensor) -> Tensor:
    """A [B] vector of per-sample scalars, shaped to broadcast against a [B, ...] tensor."""
    return c.reshape(c.shape[0], *([1] * (like.dim() - 1)))


def _scalar(c: Tensor, like: Tensor) -> Tensor:
    """A device scalar ([] or [1]) or a per-sample [B] vector, shaped to broadcast against `like`."""
    c = c.float()
    if c.numel() == 1:
        return c.reshape(())
    return _per_batch(c, like)


def lincomb(inputs: Sequence[Tensor], coeffs: Tensor, out: Tensor | None = None) -> Tensor:
    """out = sum_k coeffs[..., k] * inputs[k].

    coeffs is one row [K] shared by the batch, or one row per sample [B, K].
    """
    compute = torch.float64 if inputs[0].dtype == torch.float64 else torch.float32
    acc = None
    for k, t in enumerate(inputs):
        c = coeffs[..., k].to(compute)
        term = (_per_batch(c, t) if coeffs.dim() == 2 else c) * t.to(compute)
        acc = term if acc is None else acc + term
    dtype = out.dtype if out is not None else inputs[0].dtype
    result = acc.to(dtype)
    if out is None:
        return result
    return out.copy_(result)


def skip_concat(h: Tensor, skip: Tensor, rho: Tensor, b: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """Skip-Tuning's weighted concatenation: cat([h * b, skip * rho], dim=1)."""
    hb = h.float() if b is None else h.float() * _scalar(b, h)
    result = torch.cat([hb, skip.float() * _scalar(rho, skip)], dim=1).to(h.dtype)
    if out is None:
        return result
    return out.copy_(result)


def blend(fresh: Tensor, cached: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
    """DeepCache's feature blend: w * fresh + (1 - w) * cached (w = 0 reuses the cache untouched)."""
    w = _scalar(w, fresh)
    result = (w * fresh.float() + (1 - w) * cached.float()).to(fresh.dtype)
    if out is None:
        return result
    return out.copy_(result)


def blend_concat(
    fresh: Tensor,
    cached: Tensor,
    w: Tensor,
    skip: Tensor,
    rho: Tensor,
    b: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """blend(fresh, cached, w) fed straight into skip_concat(., skip, rho, b)."""
    w = _scalar(w, fresh)
    blended = w * fresh.float() + (1 - w) * cached.float()
    result = skip_concat(blended, skip, rho, b).to(fresh.dtype)
    if out is None:
        return result
    return out.copy_(result)
