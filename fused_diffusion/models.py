"""Adapters from common model parameterisations to the denoiser convention D(x, sigma[B]) -> x0 estimate.

EDM / k-diffusion convention: x = x0 + sigma * noise (unscaled), sigma a tensor of shape [B].
Every scaling is one lincomb with per-sample coefficient rows [B, K] built on the device (no host sync).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import ops
from .schedules import sigmas_from_alphas_cumprod
from .checks import check_bool, check_real, describe


def unwrap_output(out: Any) -> Tensor:
    """A model's prediction: the tensor itself, `.sample` (diffusers outputs) or the first tuple element."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample"):
        if not isinstance(out.sample, Tensor):
            raise TypeError(f"model returned a {type(out).__name__} whose .sample is {describe(out.sample)}; "
                            "expected a tensor")
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"model returned {describe(out)}; expected a tensor, an object with a tensor .sample, or a tuple "
                    "or list whose first element is a tensor")


def _check_callable(name: str, model: object) -> None:
    if not callable(model):
        raise TypeError(f"{name} must be callable (a model or function), got {describe(model)}")


def _broadcast_batch(name: str, value: object, batch: int) -> Tensor:
    """cond / uncond with x's batch: as given, or a batch-1 tensor expanded (a view, no copy)."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == 1 and batch != 1:
        return value.expand(batch, *value.shape[1:])
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, got {describe(value)}")
    if value.dim() == 0 or value.shape[0] != batch:
        raise ValueError(f"{name} must have batch {batch} (x's batch) or 1 (broadcast) in dim 0, got shape "
                         f"{tuple(value.shape)}")
    return value


def _doubled(value: Any, batch: int) -> Any:
    """Extra conditioning for the guided batch [uncond, cond]: tensors with x's batch in dim 0 repeated, dicts
    (diffusers' added_cond_kwargs) entry by entry, anything else unchanged."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return torch.cat([value, value])
    if isinstance(value, dict):
        return {key: _doubled(item, batch) for key, item in value.items()}
    return value


def _check_call(x: Tensor, sigma: object) -> None:
    """An adapter's inputs: x a floating tensor with a batch dimension, sigma a floating tensor of shape [B] on x's
    device (metadata only: adapters run inside sampling loops and graph captures)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"x must be a floating-point tensor with a batch dimension, got {describe(x)}")
    if not isinstance(sigma, Tensor) or not sigma.is_floating_point():
        raise TypeError(f"sigma must be a floating-point tensor of shape [{x.shape[0]}] (one per sample), got "
                        f"{describe(sigma)}")
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape [{x.shape[0]}] (one per sample of x), got {tuple(sigma.shape)}")
    if sigma.device != x.device:
        raise ValueError(f"sigma is on {sigma.device}, expected x's device {x.device}")


def _inner_output(output: Any, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The wrapped model's prediction, checked against the shape it must have (a broadcastable or integer output would
    otherwise pass through the update as a wrong sample)."""
    out = unwrap_output(output)
    if out.shape != shape:
        raise ValueError(f"the wrapped model returned {name} of shape {tuple(out.shape)}, expected {tuple(shape)}")
    if not out.is_floating_point():
        raise TypeError(f"the wrapped model returned {name} of dtype {out.dtype}, expected a floating-point tensor")
    return out.to(like.dtype)


def _in_model_dtype(x_in: Tensor, model: Callable[..., Any]) -> Tensor:
    """The model input in the wrapped module's parameter dtype: a half-precision model under a float32 solver state
    (the accurate mix) gets half inputs instead of failing in its first layer; the output comes back in x's dtype."""
    if isinstance(model, nn.Module):
        parameter = next(model.parameters(), None)
        if parameter is not None and parameter.is_floating_point() and parameter.dtype != x_in.dtype:
            return x_in.to(parameter.dtype)
    return x_in


def lincomb_rows(*columns: Tensor) -> Tensor:
    """Per-sample coefficient rows [B, K] from K vectors of shape [B]."""
    return torch.stack([c.float() for c in columns], dim=1)


class EpsDenoiser(nn.Module):
    """A DDPM epsilon-prediction model eps(x_t, t) as a denoiser (k-diffusion's DiscreteEpsDDPMDenoiser).

    c_in = 1 / sqrt(sigma^2 + 1), D = x - sigma * eps(c_in * x, t(sigma)); t(sigma) interpolates the
    training timesteps linearly in log sigma (or picks the nearest with quantize=True). `timestep_table`
    (sigmas, timesteps), e.g. a diffusers scheduler's after set_timesteps (fd.from_diffusers), gives each of those
    sigmas exactly its timestep, as that scheduler calls the model; other sigmas still interpolate.
    """

    def __init__(self, eps_model: Callable[..., Any], alphas_cumprod: Tensor, quantize: bool = False,
                 timestep_table: tuple[Tensor, Tensor] | None = None):
        super().__init__()
        _check_callable("eps_model", eps_model)
        self.inner_model = eps_model
        check_bool("quantize", quantize)
        self.quantize = quantize
        self.register_buffer("log_sigmas", sigmas_from_alphas_cumprod(alphas_cumprod).log().float(), persistent=False)
        self.table_sigmas = self.table_timesteps = None
        if timestep_table is not None:
            self.table_sigmas, self.table_timesteps = _check_timestep_table(timestep_table)

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        if self.log_sigmas.device != sigma.device:  # moved once (in a graph's warm-up, never during capture)
            self.log_sigmas = self.log_sigmas.to(sigma.device)
            if self.table_sigmas is not None:
                self.table_sigmas = self.table_sigmas.to(sigma.device)
                self.table_timesteps = self.table_timesteps.to(sigma.device)
        log_sigmas = self.log_sigmas
        log_sigma = sigma.float().log().reshape(-1)
        # the training sigmas around each sigma by binary search (k-diffusion compares with all T: O(T) per sample)
        low_idx = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(log_sigmas) - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        if self.quantize:  # the nearer of the two, the lower one on a tie (k-diffusion's argmin)
            t = torch.where((log_sigma - low).abs() <= (high - log_sigma).abs(), low_idx, high_idx)
            t = t.view(sigma.shape).float()
        else:
            w = ((low - log_sigma) / (low - high)).clamp(0, 1)
            t = ((1 - w) * low_idx + w * high_idx).view(sigma.shape)
        if self.table_sigmas is None:
            return t if not self.quantize else t.long()
        # a sigma of the table (to float32 rounding) takes its timestep; a select, so no host sync
        nearest = (sigma.float()[None] - self.table_sigmas[:, None]).abs().min(dim=0)
        exact = nearest.values <= 1e-6 * sigma.float().abs()
        return torch.where(exact, self.table_timesteps[nearest.indices], t)

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        _check_call(x, sigma)
        c_in = (sigma.float() ** 2 + 1).rsqrt()
        x_in = ops.lincomb([x], c_in[:, None])
        eps = _inner_output(self.inner_model(_in_model_dtype(x_in, self.inner_model), self.sigma_to_t(sigma), **kwargs),
                            "eps", x.shape, x)
        return ops.lincomb([x, eps], lincomb_rows(torch.ones_like(sigma), -sigma))


def _check_timestep_table(table: object) -> tuple[Tensor, Tensor]:
    """(sigmas, timesteps): two 1-D tensors of one length, finite, as float32."""
    if not isinstance(table, (tuple, list)) or len(table) != 2 or not all(isinstance(t, Tensor) for t in table):
        raise TypeError(f"timestep_table must be a pair of tensors (sigmas, timesteps), got {describe(table)}")
    sigmas, timesteps = (t.detach().to("cpu", torch.float32) for t in table)  # sync-ok: once, at construction
    if sigmas.dim() != 1 or sigmas.shape != timesteps.shape:
        raise ValueError(f"timestep_table must hold two 1-D tensors of one length, got shapes {tuple(sigmas.shape)} "
                         f"and {tuple(timesteps.shape)}")
    if not (torch.isfinite(sigmas).all() and torch.isfinite(timesteps).all()):
        raise ValueError("timestep_table contains NaN or inf")
    return sigmas, timesteps


class VDenoiser(EpsDenoiser):
    """A DDPM v-prediction model v(x_t, t) as a denoiser (k-diffusion's DiscreteVDDPMDenoiser, sigma_data = 1):
    D = c_skip x + c_out v(c_in x, t), c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1)."""

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        _check_call(x, sigma)
        sigma32 = sigma.float()
        c_in = (sigma32**2 + 1).rsqrt()
        x_in = ops.lincomb([x], c_in[:, None])
        v = _inner_output(self.inner_model(_in_model_dtype(x_in, self.inner_model), self.sigma_to_t(sigma), **kwargs),
                          "v", x.shape, x)
        return ops.lincomb([x, v], lincomb_rows(c_in**2, -sigma32 * c_in))


class FlowDenoiser(nn.Module):
    """A rectified-flow velocity model v(x_t, t) as a denoiser; x_t = t * data + (1 - t) * noise, t = 1 is data.

    With t = 1/(1+sigma), x_t = t * x_edm, so D(x, sigma) = (x + sigma * v(x/(1+sigma), 1/(1+sigma))) / (1+sigma).
    """

    def __init__(self, velocity_model: Callable[..., Any]):
        super().__init__()
        _check_callable("velocity_model", velocity_model)
        self.inner_model = velocity_model

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        _check_call(x, sigma)
        t = 1 / (1 + sigma.float())
        x_in = _in_model_dtype(ops.lincomb([x], t[:, None]), self.inner_model)
        v = _inner_output(self.inner_model(x_in, t, **kwargs), "v", x.shape, x)
        return ops.lincomb([x, v], lincomb_rows(t, sigma.float() * t))


class CFGDenoiser(nn.Module):
    """Classifier-free guidance: D = D_uncond + scale * (D_cond - D_uncond), cond and uncond in one batched call.

    `forward(x, sigma, cond=..., uncond=...)` concatenates [uncond, cond] along the batch and passes it to the
    inner denoiser as the keyword `cond_kwarg` (e.g. "encoder_hidden_states" for diffusers U-Nets, "class_labels"
    for class-conditional ones); a batch-1 cond or uncond (one negative prompt for the whole batch) is broadcast.
    Other keyword arguments go to both halves: a tensor with x's batch in dim 0 (class labels, SDXL's
    `added_cond_kwargs` entries, inside dicts too) is doubled, anything else passed as it is. The combine is one
    lincomb whose row [1 - scale, scale] lives on the device, so `set_scale` changes it without recapturing a graph.
    """

    def __init__(self, denoiser: Callable[..., Tensor], scale: float, cond_kwarg: str = "cond"):
        super().__init__()
        _check_callable("denoiser", denoiser)
        if not isinstance(cond_kwarg, str):
            raise TypeError(f"cond_kwarg must be a keyword name (str), got {describe(cond_kwarg)}")
        self.inner_model = denoiser
        self.cond_kwarg = cond_kwarg
        # a plain tensor, not a buffer: a new scale must not look like a weight edit to a graph's version check
        self.combine = torch.empty(2)
        self.set_scale(scale)

    def set_scale(self, scale: float) -> None:
        """A new guidance scale, written in place so captured graphs replay it."""
        self.scale = check_real("scale", scale)  # a NaN scale would surface later as the model's non-finite output
        self.combine.copy_(torch.tensor([1.0 - self.scale, self.scale]))

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor, uncond: Tensor, **kwargs: Any) -> Tensor:
        _check_call(x, sigma)
        batch = x.shape[0]
        # before the inner model, which would fail deep inside on a bad batch
        cond, uncond = _broadcast_batch("cond", cond, batch), _broadcast_batch("uncond", uncond, batch)
        if cond.shape != uncond.shape:
            raise ValueError(f"cond and uncond must have the same shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}")
        if self.combine.device != x.device:
            self.combine = self.combine.to(x.device)
        both = self.inner_model(
            torch.cat([x, x]), torch.cat([sigma, sigma]), **{self.cond_kwarg: torch.cat([uncond, cond])},
            **_doubled(kwargs, batch)
        )
        both = _inner_output(both, "the guided batch [uncond, cond]", (2 * batch, *x.shape[1:]), x)
        return ops.lincomb([both[:batch], both[batch:]], self.combine)
