"""Skip-Tuning (Ma et al. 2024, "The Surprising Effectiveness of Skip-Tuning in Diffusion Sampling"): every skip
connection concatenated in the up path is scaled by rho_i, linear in depth from rho_bottom at the deepest skip to
rho_top at the shallowest; written by the fused `skip_concat` straight into the concatenation buffer.

The rho values live in one device tensor: `set_rho` rewrites it in place, so captured graphs replay new values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import torch
from torch import Tensor, nn

from .. import ops
from ..checks import check_count, check_real
from .hooks import UpBlockHook, check_unet, hook_of, release_up_block_hooks, up_block_hooks
from .up_blocks import skip_counts


@dataclass(frozen=True)
class SkipTuningConfig:
    rho_bottom: float
    rho_top: float = 1.0

    def __post_init__(self):
        for name in ("rho_bottom", "rho_top"):
            object.__setattr__(self, name, check_real(name, getattr(self, name), at_least=0))


def rho_profile(count: int, rho_bottom: float, rho_top: float) -> Tensor:
    """rho_i for skips i = 0 (deepest) .. count - 1 (shallowest), linear in i."""
    if count == 1:
        return torch.tensor([float(rho_bottom)])
    return torch.linspace(float(rho_bottom), float(rho_top), count, dtype=torch.float64).float()


class SkipTuning:
    """The rho values of one U-Net's `count` skip connections and the fused concatenation that applies them.

    A custom (non-diffusers) U-Net calls `concat(i, h, skip)` in its up path, i counting its skip connections from
    the deepest (0) to the shallowest:

        self.skip_tuning = fd.unet.SkipTuning(count=4, rho_bottom=0.6)
        ...
        for i, block in enumerate(self.up_blocks):
            h = block(self.skip_tuning.concat(i, h, skips.pop()))   # = torch.cat([h, rho_i * skip], 1), one launch
    """

    def __init__(self, count: int, rho_bottom: float, rho_top: float = 1.0):
        self.count = check_count("count (the number of skip connections)", count)
        self.config = SkipTuningConfig(rho_bottom, rho_top)
        self.rho = rho_profile(count, rho_bottom, rho_top)

    def set_rho(self, rho_bottom: float, rho_top: float = 1.0) -> None:
        """New values, written in place (a captured graph replays them without recapture)."""
        self.config = SkipTuningConfig(rho_bottom, rho_top)
        self.rho.copy_(rho_profile(self.count, rho_bottom, rho_top))

    def graph_key(self) -> Hashable:
        return ("skip_tuning", self.count)  # the values are device data, read on replay

    def rho_on(self, device: torch.device) -> Tensor:
        if self.rho.device != device:  # moved once, in eager mode or a graph's warm-up, never during capture
            self.rho = self.rho.to(device)
        return self.rho

    def concat(self, i: int, h: Tensor, skip: Tensor) -> Tensor:
        """cat([h, rho_i * skip], dim=1) in one fused launch."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.count:
            raise IndexError(f"skip connection {i} out of range for {self.count} skips")
        return ops.skip_concat(h, skip, self.rho_on(h.device)[i])


class SkipTuningHandle:
    """Returned by `enable_skip_tuning`: `set_rho` (in place, no recapture), `disable()` restores the U-Net."""

    def __init__(self, unet: nn.Module, skip_tuning: SkipTuning):
        self.unet, self.skip_tuning = unet, skip_tuning

    @property
    def config(self) -> SkipTuningConfig:
        return self.skip_tuning.config

    @property
    def enabled(self) -> bool:
        """Whether this handle's Skip-Tuning is on the U-Net now."""
        return any(getattr(hook_of(b, UpBlockHook.NAME), "skip_scales", None) is self.skip_tuning
                   for b in self.unet.up_blocks)

    def set_rho(self, rho_bottom: float, rho_top: float = 1.0) -> None:
        if not self.enabled:
            raise RuntimeError("this Skip-Tuning was disabled (or replaced by a later enable): set_rho would change "
                               "nothing; enable it again")
        self.skip_tuning.set_rho(rho_bottom, rho_top)

    def disable(self) -> None:
        for block in self.unet.up_blocks:
            hook = hook_of(block, UpBlockHook.NAME)
            if hook is not None and hook.skip_scales is self.skip_tuning:
                hook.skip_scales = None
        release_up_block_hooks(self.unet)


def apply_skip_tuning(unet: nn.Module, config: SkipTuningConfig) -> SkipTuningHandle:
    """Skip-Tuning on every skip concatenation of a diffusers U-Net's up path; returns its handle."""
    check_unet(unet, "Skip-Tuning")
    if not isinstance(config, SkipTuningConfig):
        raise TypeError(f"config must be a SkipTuningConfig, got {type(config).__name__}")
    if any(getattr(hook_of(b, UpBlockHook.NAME), "skip_scales", None) is not None for b in unet.up_blocks):
        raise RuntimeError("Skip-Tuning is already enabled on this U-Net; disable() its handle first")
    count = sum(skip_counts(unet))
    if not count:
        raise TypeError(f"Skip-Tuning scales skip connections, and the up path of this {type(unet).__name__} "
                        "concatenates none")
    skip_tuning = SkipTuning(count, config.rho_bottom, config.rho_top)
    for hook in up_block_hooks(unet):
        hook.skip_scales = skip_tuning
    return SkipTuningHandle(unet, skip_tuning)


def enable_skip_tuning(unet: nn.Module, rho_bottom: float, rho_top: float = 1.0) -> SkipTuningHandle:
    """Skip-Tuning on a diffusers UNet2DModel / UNet2DConditionModel: skip i scaled by rho_i, linear from rho_bottom
    (deepest) to rho_top (shallowest), by the fused skip_concat; composes with DeepCache."""
    return apply_skip_tuning(unet, SkipTuningConfig(rho_bottom, rho_top))
