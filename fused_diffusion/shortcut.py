"""Shortcut models (Frans, Hafner, Levine, Abbeel 2024, "One Step Diffusion via Shortcut Models"): a flow model
v(x_t, t, d) told its step size d, trained so one step of 2d equals two steps of d (sec. 3, eq. 5), which makes
1 to 4 steps work. Flow convention of `fd.sample_shortcut`: t = 0 is noise, t = 1 data, x_t = (1 - t) x0 + t x1,
x_{t+d} = x_t + d v.

`loss` is the training objective (flow matching on 3/4 of the batch, self-consistency on 1/4 as the issue asks; the
paper's code uses 1/8), `targets` its inputs and targets;
`ShortcutUNet` is a diffusers `UNet2DModel` with the step size as a class embedding (its log2 index, as the paper).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from .checks import check_bool, check_callable, check_count, check_real, describe

LEVELS = 7  # step sizes d = 1, 1/2, ..., 1/128: log2 indices 0..7, index 7 also the flow-matching ("d = 0") token
MAX_LEVELS = 24  # times on the grid k / 2^levels stay exact in float32 (24-bit significand)
VELOCITY_CLIP = 4.0  # the paper's code clips the bootstrap targets and the intermediate x to +-4


def check_levels(levels: object) -> int:
    """The number of halvings of the step size: times k / 2^levels must stay exact in float32."""
    levels = check_count("levels", levels)
    if levels > MAX_LEVELS:
        raise ValueError(f"levels must be at most {MAX_LEVELS} (times k / 2^levels must be exact in float32), got "
                         f"{levels}")
    return levels


def step_index(d: Tensor | float, levels: int = LEVELS) -> Tensor:
    """The log2 index k of step sizes d = 2^-k (0 <= k <= levels), as a long tensor. Checked on the host when d
    is there (a CPU tensor or a number); a CUDA d is converted without a check, so a sampling loop never syncs."""
    d = torch.as_tensor(d)
    index = (-torch.log2(d.double())).round().long()
    if d.device.type == "cpu":
        valid = torch.isfinite(d) & (index >= 0) & (index <= levels) & (torch.exp2(-index.double()) == d.double())
        if not bool(valid.all()):
            bad = d.reshape(-1)[~valid.reshape(-1)][0].item()
            raise ValueError(f"d must be a power of two from 1 down to 1/{2**levels} (a step size the model was "
                             f"trained for), got {bad}")
    return index


class ShortcutUNet(nn.Module):
    """v(x, t, d) over a diffusers `UNet2DModel` built with `num_class_embeds=levels + 1`: t in [0, 1] enters the
    time embedding as 1000 t, the step size d as the class label log2(1/d).

    `step_conditioned=False` makes it a plain flow-matching model (every call gets the finest step's label), the
    baseline trained without self-consistency."""

    def __init__(self, unet: nn.Module, levels: int = LEVELS, step_conditioned: bool = True):
        super().__init__()
        self.levels = check_levels(levels)
        embeds = getattr(getattr(unet, "config", None), "num_class_embeds", None)
        if embeds is None or embeds < self.levels + 1:
            raise ValueError(f"unet must be a diffusers UNet2DModel with num_class_embeds >= {self.levels + 1} (the "
                             f"step-size embedding), got num_class_embeds={embeds} ({type(unet).__name__})")
        self.unet = unet
        self.step_conditioned = check_bool("step_conditioned", step_conditioned)

    @staticmethod
    def unet_config(config: dict[str, Any], levels: int = LEVELS) -> dict[str, Any]:
        """A UNet2DModel config with the step-size embedding added."""
        return {**config, "num_class_embeds": levels + 1}

    def forward(self, x: Tensor, t: Tensor | float, d: Tensor | float) -> Tensor:
        """The velocity at x [B, ...] (in x's dtype; the U-Net runs in its own), t and d numbers or [B] / [] tensors."""
        batch = x.shape[0]
        t = _per_sample("t", t, batch).to(x.device, torch.float32)
        if self.step_conditioned:
            labels = step_index(_per_sample("d", d, batch), self.levels).to(x.device)
        else:
            labels = torch.full((batch,), self.levels, device=x.device)
        dtype = self.unet.dtype
        return self.unet(x.to(dtype), t * 1000, class_labels=labels).sample.to(x.dtype)


def _per_sample(name: str, value: Tensor | float, batch: int) -> Tensor:
    """A time or step size as one value per sample ([batch]), from a number or a [] / [batch] tensor."""
    value = torch.as_tensor(value)
    if value.dim() > 1 or value.numel() not in (1, batch) or not (value.is_floating_point() or value.dim() == 0):
        raise ValueError(f"{name} must be a number or a floating-point tensor of shape [] or [{batch}] (x's batch), "
                         f"got {describe(value)}")
    return value.reshape(-1).expand(batch)


def check_step_model(model: Callable[..., Any], name: str = "model") -> None:
    """A model that cannot take (x, t, d) fails here with its name, not inside the bootstrap targets or a loop."""
    check_callable(name, model, f"{name}(x, t, d) -> velocity (it must take the step size d, as "
                                "fd.shortcut.ShortcutUNet does)", 3)


def predict_velocity(model: Callable[..., Any], x: Tensor, t: Tensor, d: Tensor) -> Tensor:
    """model(x, t, d), which must be a velocity of x's shape (a [B, 1] output would broadcast into the loss)."""
    out = model(x, t, d)
    if not isinstance(out, Tensor) or out.shape != x.shape or not out.is_floating_point():
        raise ValueError(f"model returned {describe(out)} for x of shape {tuple(x.shape)}; a velocity is a "
                         "floating-point tensor of x's shape")
    return out


class Targets(NamedTuple):
    """One batch of the shortcut objective: the model is asked model(x_t, t, d) and should return `velocity`."""
    x_t: Tensor
    t: Tensor
    d: Tensor
    velocity: Tensor
    bootstrap: int  # the first `bootstrap` rows carry self-consistency targets, the rest flow-matching ones


def targets(model: Callable[[Tensor, Tensor, Tensor], Tensor], x_data: Tensor, x_noise: Tensor | None = None, *,
            bootstrap_fraction: float = 0.25, levels: int = LEVELS, target_model: Callable | None = None,
            generator: torch.Generator | None = None) -> Targets:
    """The inputs and regression targets of the shortcut objective (paper eq. 5 and its reference code).

    - The last (1 - bootstrap_fraction) of the batch: flow matching, t on the grid k / 2^levels, target
      x1 - x0, the model told the finest step d = 2^-levels (the paper's "d = 0").
    - The first bootstrap_fraction: self-consistency for a step 2d, d in {1/2 ... 2^-levels} cycled over the
      rows; t on the grid of 2d; target the mean of two d-steps of `target_model` (default `model`; an EMA copy
      in the paper) without gradient: v1 = v(x_t, t, d), v2 = v(clip(x_t + d v1), t + d, d), clipped to +-4.

    x_data and x_noise (default: drawn from `generator`) are [B, ...]; bootstrap_fraction 0 is plain flow
    matching (the baseline)."""
    if not isinstance(x_data, Tensor) or not x_data.is_floating_point() or x_data.dim() < 1 or not len(x_data):
        raise TypeError(f"x_data must be a floating-point torch.Tensor with a non-empty batch, got {describe(x_data)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
    if x_noise is None:
        x_noise = torch.randn(x_data.shape, generator=generator).to(x_data)
    elif not isinstance(x_noise, Tensor) or x_noise.shape != x_data.shape or not x_noise.is_floating_point():
        raise ValueError(f"x_noise must be a floating-point tensor of x_data's shape {tuple(x_data.shape)}, got "
                         f"{describe(x_noise)}")
    fraction = check_real("bootstrap_fraction", bootstrap_fraction, at_least=0, below=1)
    levels = check_levels(levels)
    check_step_model(model)
    if target_model is not None:
        check_step_model(target_model, "target_model")
    target_model = model if target_model is None else target_model

    batch, device = len(x_data), x_data.device
    n_boot = math.floor(batch * fraction)
    view = (-1,) + (1,) * (x_data.dim() - 1)
    # the full step 2d = 2^-k, k = 0 .. levels - 1, cycled over the bootstrap rows; the flow rows take the finest d
    k = torch.cat([torch.arange(n_boot) % levels, torch.full((batch - n_boot,), levels)])
    grid = torch.exp2(k.double())  # t on the grid of the row's step: k / 2^k for k < 2^k
    t = (torch.randint(2**levels, (batch,), generator=generator) % grid.long()) / grid
    t, d = t.to(device, torch.float32), (1 / grid).to(device, torch.float32)

    x_t = (1 - t.view(view)) * x_noise + t.view(view) * x_data
    velocity = x_data - x_noise
    if n_boot:
        half = d[:n_boot] / 2
        x_b, t_b = x_t[:n_boot], t[:n_boot]
        with torch.no_grad():
            v1 = predict_velocity(target_model, x_b, t_b, half)
            x_mid = (x_b + half.view(view) * v1).clamp(-VELOCITY_CLIP, VELOCITY_CLIP)
            v2 = predict_velocity(target_model, x_mid, t_b + half, half)
            boot = ((v1 + v2) / 2).clamp(-VELOCITY_CLIP, VELOCITY_CLIP)
        velocity = torch.cat([boot.to(velocity.dtype), velocity[n_boot:]])
    return Targets(x_t, t, d, velocity, n_boot)


def loss(model: Callable[[Tensor, Tensor, Tensor], Tensor], x_data: Tensor, x_noise: Tensor | None = None, *,
         bootstrap_fraction: float = 0.25, levels: int = LEVELS, target_model: Callable | None = None,
         generator: torch.Generator | None = None) -> Tensor:
    """The shortcut training loss: mean squared error of model(x_t, t, d) against `targets(...)`'s velocity,
    over the whole batch (flow-matching and self-consistency rows alike, as the paper's code)."""
    batch = targets(model, x_data, x_noise, bootstrap_fraction=bootstrap_fraction, levels=levels,
                    target_model=target_model, generator=generator)
    return (predict_velocity(model, batch.x_t, batch.t, batch.d) - batch.velocity).pow(2).mean()
