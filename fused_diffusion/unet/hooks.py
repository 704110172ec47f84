"""The diffusers hooks (`diffusers.hooks.ModelHook` in a `HookRegistry`) that carry the U-Net methods into a U-Net's
blocks, and their removal that leaves the modules as they were. The up-block hook knows the methods only through two
small interfaces, so it imports none of them: the skip scales Skip-Tuning sets (`SkipScales`) and the way DeepCache
runs a block (`UpBlockCache`)."""
from __future__ import annotations

from typing import Any, Callable, Hashable, Optional, Protocol

import torch
from torch import Tensor, nn

from .. import ops
from .up_blocks import bind_arguments, run_up_block, skip_counts, up_block_kind

Concat = Callable[[int, Tensor, Tensor], Tensor]  # concat(j, h, skip): an up block's j-th skip concatenation


def _model_hook_base():
    try:
        from diffusers.hooks import ModelHook
    except ImportError as e:
        raise ImportError("fused_diffusion.unet works on diffusers U-Nets: pip install 'fused_diffusion[diffusers]'") from e
    return ModelHook


ModelHook = _model_hook_base()


def registry(module: nn.Module):
    from diffusers.hooks import HookRegistry

    return HookRegistry.check_if_exists_or_initialize(module)


def hook_of(module: nn.Module, name: str) -> Optional[ModelHook]:
    found = module.__dict__.get("_diffusers_hook")
    return None if found is None else found.get_hook(name)


def remove(module: nn.Module, name: str) -> None:
    """Removes hook `name`; with no hook left, also the registry and the forward it set on the instance."""
    found = module.__dict__.get("_diffusers_hook")
    if found is None or found.get_hook(name) is None:
        return
    found.remove_hook(name, recurse=False)
    if not found.hooks:
        del module._diffusers_hook
        forward = module.__dict__.get("forward")
        if forward is not None and getattr(forward, "__func__", None) is type(module).forward:
            del module.__dict__["forward"]


_ONES: dict[torch.device, Tensor] = {}


def _one(device: torch.device) -> Tensor:
    """A device scalar 1 for plain concatenations (made once per device, before any capture)."""
    if device not in _ONES:
        _ONES[device] = torch.ones(1, device=device)
    return _ONES[device]


class NoCopy:
    """A hook of this library refuses deepcopy: its copy would keep calling the original U-Net's blocks (diffusers'
    hooks hold their module's bound forward), so a copied U-Net would silently ignore edits to its own weights."""

    def __deepcopy__(self, memo: dict) -> Any:
        raise TypeError("a U-Net with DeepCache or Skip-Tuning on cannot be deep-copied (the copy would run the "
                        "original's blocks): disable() the handles, copy, then enable the methods on each U-Net")


class SkipScales(Protocol):
    """What scales the skip connections (Skip-Tuning): one rho per skip of the U-Net, in its skip order."""

    def rho_on(self, device: torch.device) -> Tensor: ...

    def graph_key(self) -> Hashable: ...


class UpBlockCache(Protocol):
    """How a cache runs an up block (DeepCache: a block deeper than the cache point, or the cache point itself);
    `state` is the cache it belongs to (a handle removes only its own)."""

    state: Any

    def forward(self, module: nn.Module, bound: Any, hook: "UpBlockHook") -> Any: ...

    def graph_key(self) -> Hashable: ...


class UpBlockHook(NoCopy, ModelHook):
    """Owns an up block's forward: every skip concatenation is one fused launch, scaled by `skip_scales` when set;
    with a `cache` set, the cache runs the block (with this hook's concat)."""

    NAME = "fused_diffusion.up_block"

    def __init__(self, name: str, offset: int):
        super().__init__()
        self.name, self.offset = name, offset  # offset: this block's first skip in the U-Net's skip order
        self.skip_scales: Optional[SkipScales] = None
        self.cache: Optional[UpBlockCache] = None

    def graph_key(self) -> Hashable:
        return (self.skip_scales and self.skip_scales.graph_key(), self.cache and self.cache.graph_key())

    def idle(self) -> bool:
        return self.skip_scales is None and self.cache is None

    def rho(self, j: int, device: torch.device) -> Tensor:
        """The scale of this block's j-th skip: a device scalar."""
        return _one(device) if self.skip_scales is None else self.skip_scales.rho_on(device)[self.offset + j]

    def concat(self, j: int, h: Tensor, skip: Tensor) -> Tensor:
        return ops.skip_concat(h, skip, self.rho(j, h.device))

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        bound = bind_arguments(module, args, kwargs)
        if self.cache is None:
            return run_up_block(module, bound, self.concat)
        return self.cache.forward(module, bound, self)


def check_unet(unet: Any, feature: str) -> None:
    if isinstance(unet, nn.Module) and isinstance(unet._modules.get("_orig_mod"), nn.Module):  # torch.compile's wrapper
        raise TypeError(f"{feature} goes on the U-Net itself, before torch.compile (a compiled module does not see "
                        f"hooks added after it was traced): enable it on unet._orig_mod, then compile")
    if not isinstance(unet, nn.Module) or not all(hasattr(unet, a) for a in ("down_blocks", "up_blocks", "mid_block")):
        raise TypeError(f"{feature} needs a diffusers UNet2DModel or UNet2DConditionModel (down_blocks, mid_block, "
                        f"up_blocks), got {type(unet).__name__}")
    if not len(unet.up_blocks):
        raise TypeError(f"{feature} needs a U-Net with at least one up block, got {type(unet).__name__} with none")
    for i, block in enumerate(unet.up_blocks):
        up_block_kind(block, f"up_blocks[{i}]")


def up_block_hooks(unet: nn.Module) -> list[UpBlockHook]:
    """The UpBlockHook of every up block, registered where missing (skip offsets in the U-Net's skip order)."""
    hooks, offset = [], 0
    for i, (block, count) in enumerate(zip(unet.up_blocks, skip_counts(unet))):
        hook = hook_of(block, UpBlockHook.NAME)
        if hook is None:
            hook = UpBlockHook(f"up_blocks.{i}", offset)
            registry(block).register_hook(hook, UpBlockHook.NAME)
        hooks.append(hook)
        offset += count
    return hooks


def release_up_block_hooks(unet: nn.Module) -> None:
    for block in unet.up_blocks:
        hook = hook_of(block, UpBlockHook.NAME)
        if hook is not None and hook.idle():
            remove(block, UpBlockHook.NAME)
