"""The diffusers hooks (`diffusers.hooks.ModelHook` in a `HookRegistry`) that carry Skip-Tuning and DeepCache into
a U-Net's blocks, and their removal that leaves the modules as they were."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Optional

import torch
from torch import Tensor, nn

from .. import ops
from .up_blocks import bind_arguments, run_up_block, skip_counts, up_block_kind

if TYPE_CHECKING:
    from .deepcache import DeepCacheState
    from .skip_tuning import SkipTuning


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


class UpBlockHook(NoCopy, ModelHook):
    """Owns an up block's forward: every skip concatenation is one fused launch, scaled by Skip-Tuning's rho when
    that is on; with DeepCache the block is either deeper than the cache point (`role="cached"`: recomputed on full
    calls, its output reused on shallow ones) or the cache point (`role="entry"`: shallow calls enter resnet `start`
    with the stored feature, read through the fused concat)."""

    NAME = "fused_diffusion.up_block"

    def __init__(self, name: str, offset: int):
        super().__init__()
        self.name, self.offset = name, offset  # offset: this block's first skip in the U-Net's skip order
        self.skip_tuning: Optional[SkipTuning] = None
        self.deepcache: Optional[DeepCacheState] = None
        self.role: Optional[str] = None
        self.start = 0

    def graph_key(self) -> Hashable:
        return (self.skip_tuning is not None and self.skip_tuning.graph_key(), self.role, self.start)

    def idle(self) -> bool:
        return self.skip_tuning is None and self.deepcache is None

    def concat(self, j: int, h: Tensor, skip: Tensor) -> Tensor:
        if self.skip_tuning is None:
            return ops.skip_concat(h, skip, _one(h.device))
        return ops.skip_concat(h, skip, self.skip_tuning.rho_on(h.device)[self.offset + j])

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        bound = bind_arguments(module, args, kwargs)
        state = self.deepcache
        if state is None:
            return run_up_block(module, bound, self.concat)
        if self.role == "cached":
            if state.full:
                return state.store(self.name, run_up_block(module, bound, self.concat))
            return state.fetch(self.name)
        if state.full:
            previous = state.entry_before()
            concat = self.concat
            if previous is not None and state.config.blend is not None:
                concat = self.blending_concat(previous, state)
            return run_up_block(module, bound, concat, record_at=self.start, record=state.store_entry)
        return run_up_block(module, bound, self.concat, start=self.start, entry=state.entry())

    def blending_concat(self, previous: Tensor, state: "DeepCacheState"):
        """The concat at the cache point on a full call: w * fresh + (1 - w) * stored, then the skip, one launch."""
        def concat(j: int, h: Tensor, skip: Tensor) -> Tensor:
            if j != self.start:
                return self.concat(j, h, skip)
            rho = _one(h.device) if self.skip_tuning is None else self.skip_tuning.rho_on(h.device)[self.offset + j]
            return ops.blend_concat(h, previous, state.blend_on(h.device), skip, rho)

        return concat


class CachedOutputHook(NoCopy, ModelHook):
    """DeepCache on a down block, mid block or down-block layer deeper than the cache point: computed and stored on
    full calls, the stored output returned on shallow calls."""

    NAME = "fused_diffusion.deepcache"

    def __init__(self, state: "DeepCacheState", name: str):
        super().__init__()
        self.state, self.name = state, name

    def graph_key(self) -> Hashable:
        return ("deepcache_cached", self.name)

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.state.full:
            return self.state.store(self.name, self.fn_ref.original_forward(*args, **kwargs))
        return self.state.fetch(self.name)


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
