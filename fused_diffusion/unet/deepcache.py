"""DeepCache (Ma, Fang and Wang 2024, "DeepCache: Accelerating Diffusion Models for Free") on diffusers U-Nets.

Model call k of a sampling run is a full call when k % interval == 0 (mode "uniform"; mode "quadratic" spaces the
full calls as the paper's non-uniform strategy); every other call runs only the layers above the cache point and
reuses the deep feature stored at the last full call, as the reference helper (`DeepCacheSDHelper.set_params(
cache_interval, cache_branch_id)`) does: branch = block * L + layer, L the up blocks' resnets per block; down
layers at or below (block, layer), the mid block and the up layers deeper than the mirror point are reused.

The call index comes from the sampling engine (`fd.current_model_call()`), never from a host sync; in a captured
loop the full/shallow pattern is fixed at capture and both kinds of call are in the one graph. Without the engine's
context (a hand-written loop, a diffusers pipeline's own loop) the U-Net counts its own calls from the last
`enable` or `handle.reset()`, and starts a new run when the timestep it is given rises (the next call of a
pipeline) or repeats right after a run's first call (back-to-back one-step runs), so a run never reuses the
features of the one before. A loop whose runs share no such sign calls `handle.reset()` between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from ..context import current_model_call
from ..checks import check_count, check_real
from .hooks import (ModelHook, NoCopy, UpBlockHook, check_unet, hook_of, registry,
                    release_up_block_hooks, remove, up_block_hooks)
from .up_blocks import UP_BLOCKS, run_up_block

# the parts of a down block that lie below a layer-level cache point (used exactly once per forward)
_DOWN_TAIL = ("downsamplers", "resnet_down", "skip_conv")


def quadratic_full_calls(calls: int, full: int, center: int, power: float = 1.2) -> list[int]:
    """The paper's non-uniform spacing (`sample_from_quad_center` of the DeepCache code): `full` call indices in
    [0, calls), densest around `center`, uniform in sign(u)|u|^(1/power) (for the left side the reference takes a
    complex power of a negative number; the signed power is what it intends). Lowers the power from 1.2 by 0.02
    until the indices are distinct, as the reference does."""
    while power > 1:
        u = np.linspace(-(center ** (1 / power)), (calls - center) ** (1 / power), full + 1)
        x = np.trunc(np.sign(u) * np.abs(u) ** power).astype(np.int64)
        indices = [0] + [int(v) + center for v in np.unique(x)[1:-1]]
        if len(indices) == full:
            return sorted(indices)
        power -= 0.02
    raise ValueError(f"no quadratic spacing of {full} full calls in {calls} around {center}; use fewer full calls "
                     f"(a larger interval) or another center")


@dataclass(frozen=True)
class DeepCacheConfig:
    """interval: a full call every `interval` calls (1: no caching). branch: the cache point (0: shallowest, the
    paper's default). mode: "uniform" or "quadratic" (then `calls`, the model calls of one run, is required and
    `center` defaults to calls // 2). blend: None reuses the stored feature as is; a weight w in [0, 1] makes full
    calls after the first enter the cache point with w * fresh + (1 - w) * stored (shallow calls have only the
    stored one)."""

    interval: int = 3
    branch: int = 0
    mode: str = "uniform"
    blend: Optional[float] = None
    calls: Optional[int] = None
    center: Optional[int] = None
    full_calls: tuple[int, ...] = field(init=False, default=())

    def __post_init__(self):
        check_count("interval", self.interval)
        check_count("branch", self.branch, minimum=0)
        if self.mode not in ("uniform", "quadratic"):
            raise ValueError(f"mode must be 'uniform' or 'quadratic', got {self.mode!r}")
        if self.blend is not None:
            check_real("blend", self.blend, at_least=0)
            if not self.blend <= 1:
                raise ValueError(f"blend must be None or a weight in [0, 1], got {self.blend!r}")
        if self.mode == "uniform" and (self.calls, self.center) != (None, None):
            raise ValueError(f"calls and center space the full calls of mode='quadratic'; mode='uniform' takes "
                             f"neither, got calls={self.calls!r}, center={self.center!r}")
        if self.mode == "quadratic":
            if self.calls is None:
                raise ValueError("mode='quadratic' needs calls (the model calls of one run) >= 1, got None")
            calls = check_count("calls", self.calls)
            center = calls // 2 if self.center is None else check_count("center", self.center, minimum=0)
            if center >= calls:
                raise ValueError(f"center must be an integer in [0, {calls}) (a call of the run), got {center!r}")
            full = -(-calls // self.interval)
            spacing = tuple(range(calls)) if full >= calls else tuple(quadratic_full_calls(calls, full, center))
            object.__setattr__(self, "full_calls", spacing)

    def is_full(self, index: int) -> bool:
        if self.mode == "uniform":
            return index % self.interval == 0
        if index >= self.calls:
            raise RuntimeError(f"DeepCache (mode='quadratic', calls={self.calls}) saw model call {index}: the run makes "
                               f"more calls than configured")
        return index in self.full_calls


class DeepCacheState:
    """What one U-Net's DeepCache remembers: whether the current forward is a full call, and per forward slot (the
    n-th U-Net forward within one model call, e.g. separate unconditional and conditional passes) the outputs stored
    at the last full call. Reset at every new run."""

    def __init__(self, config: DeepCacheConfig):
        self.config = config
        self.blend = None if config.blend is None else torch.tensor([float(config.blend)])
        self.reset()

    def reset(self) -> None:
        self.run: Any = None
        self.own_calls = 0  # without the engine's context: this U-Net's own count since the last reset
        self.last_timestep: float | None = None  # ... and the timestep of its last call (a rise starts a new run)
        self.last_call: Any = None
        self.slot = 0
        self.full = True
        self.outputs: dict[int, dict[str, Any]] = {}
        self.entries: dict[int, Tensor] = {}
        self.inputs: dict[int, tuple] = {}

    def blend_on(self, device: torch.device) -> Tensor:
        if self.blend.device != device:  # moved once, in eager mode or a graph's warm-up
            self.blend = self.blend.to(device)
        return self.blend

    def begin(self, sample: Tensor, timestep: Any) -> None:
        """Decides this forward: the call index from the engine's context (or the own count), full or shallow."""
        call = current_model_call()
        if call is None:
            if timestep is not None:
                value = float(torch.as_tensor(timestep).reshape(-1)[0])  # sync-ok: outside the engine only
                last = self.last_timestep
                # a new run of the caller's loop: the timestep went back up, or stayed where a run's first call
                # was (back-to-back one-step runs; a repeat after later calls is Heun's second call)
                if last is not None and (value > last or (value == last and self.own_calls == 1)):
                    self.reset()
                self.last_timestep = value
            index, slot = self.own_calls, 0
            self.own_calls += 1
        else:
            if call.run != self.run:
                self.reset()
                self.run = call.run
            slot = self.slot + 1 if (call.run, call.index) == self.last_call else 0
            self.last_call, index = (call.run, call.index), call.index
        self.slot, self.full = slot, self.config.is_full(index)
        signature = (tuple(sample.shape), sample.dtype, sample.device)
        if self.full:
            self.outputs[slot] = {}
            self.inputs[slot] = signature
        elif self.inputs.get(slot) != signature:
            stored = self.inputs.get(slot)
            raise RuntimeError(
                f"DeepCache: model call {index} is a shallow call for an input of shape {signature[0]}, "
                f"{signature[1]} on {signature[2]}, but " + (
                    "no full call of this run stored features for it (a run must start at a full call)"
                    if stored is None else f"the last full call stored features of shape {stored[0]}, {stored[1]} "
                                           f"on {stored[2]}") + "; features are never mixed across inputs")

    def store(self, name: str, value: Any) -> Any:
        self.outputs[self.slot][name] = value
        return value

    def fetch(self, name: str) -> Any:
        return self.outputs[self.slot][name]

    def store_entry(self, h: Tensor) -> None:
        self.entries[self.slot] = h

    def entry(self) -> Tensor:
        return self.entries[self.slot]

    def entry_before(self) -> Optional[Tensor]:
        """The feature stored at the previous full call of this slot, if it has the same shape."""
        return self.entries.get(self.slot)


class DeepCacheUNetHook(NoCopy, ModelHook):
    """On the U-Net itself: decides each forward (full or shallow) before any block runs."""

    NAME = "fused_diffusion.deepcache_unet"
    _is_stateful = True

    def __init__(self, state: DeepCacheState, cache_point: tuple[int, int]):
        super().__init__()
        self.state, self.cache_point = state, cache_point

    def graph_key(self) -> Hashable:
        c = self.state.config
        return ("deepcache", c.interval, c.branch, c.mode, c.blend is None, c.full_calls, self.cache_point)

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any):
        # diffusers U-Nets take (sample, timestep, ...)
        self.state.begin(args[0] if args else kwargs["sample"], args[1] if len(args) > 1 else kwargs.get("timestep"))
        return args, kwargs

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.state.reset()
        return module


class CachedOutputHook(NoCopy, ModelHook):
    """DeepCache on a down block, mid block or down-block layer deeper than the cache point: computed and stored on
    full calls, the stored output returned on shallow calls."""

    NAME = "fused_diffusion.deepcache"

    def __init__(self, state: DeepCacheState, name: str):
        super().__init__()
        self.state, self.name = state, name

    def graph_key(self) -> Hashable:
        return ("deepcache_cached", self.name)

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.state.full:
            return self.state.store(self.name, self.fn_ref.original_forward(*args, **kwargs))
        return self.state.fetch(self.name)


class CachedUpBlock:
    """An up block deeper than the cache point: run (and its output stored) on full calls, the stored output
    returned on shallow calls."""

    def __init__(self, state: DeepCacheState, name: str):
        self.state, self.name = state, name

    def graph_key(self) -> Hashable:
        return ("deepcache_cached",)

    def forward(self, module: nn.Module, bound: Any, hook: UpBlockHook) -> Any:
        if self.state.full:
            return self.state.store(self.name, run_up_block(module, bound, hook.concat))
        return self.state.fetch(self.name)


class CacheEntry:
    """The up block at the cache point: full calls run it whole and record the feature entering resnet `start`
    (blended with the previous one when configured); shallow calls enter resnet `start` with the stored feature,
    read through the fused concat."""

    def __init__(self, state: DeepCacheState, start: int):
        self.state, self.start = state, start

    def graph_key(self) -> Hashable:
        return ("deepcache_entry", self.start)

    def forward(self, module: nn.Module, bound: Any, hook: UpBlockHook) -> Any:
        state = self.state
        if not state.full:
            return run_up_block(module, bound, hook.concat, start=self.start, entry=state.entry())
        previous = state.entry_before()
        concat = hook.concat
        if previous is not None and state.config.blend is not None:
            concat = self.blending_concat(hook, previous)
        return run_up_block(module, bound, concat, record_at=self.start, record=state.store_entry)

    def blending_concat(self, hook: UpBlockHook, previous: Tensor):
        """The concat at the cache point on a full call: w * fresh + (1 - w) * stored, then the skip, one launch."""
        def concat(j: int, h: Tensor, skip: Tensor) -> Tensor:
            if j != self.start:
                return hook.concat(j, h, skip)
            return ops.blend_concat(h, previous, self.state.blend_on(h.device), skip, hook.rho(j, h.device))

        return concat


class DeepCacheHandle:
    """Returned by `enable_deepcache`: `disable()` restores the U-Net (once; a handle whose DeepCache was already
    disabled, or replaced by a later enable, changes nothing); `reset()` restarts the own call count of a
    hand-written loop without the engine's context."""

    def __init__(self, unet: nn.Module, state: DeepCacheState, cached: list[nn.Module]):
        self.unet, self.state, self.cached = unet, state, cached
        self.config = state.config

    @property
    def enabled(self) -> bool:
        """Whether this handle's DeepCache is the one on the U-Net now."""
        hook = hook_of(self.unet, DeepCacheUNetHook.NAME)
        return hook is not None and hook.state is self.state

    def reset(self) -> None:
        self.state.reset()

    def disable(self) -> None:
        if not self.enabled:
            return
        for module in self.cached:
            remove(module, CachedOutputHook.NAME)
        for block in self.unet.up_blocks:
            hook = hook_of(block, UpBlockHook.NAME)
            if hook is not None and hook.cache is not None and hook.cache.state is self.state:
                hook.cache = None
        release_up_block_hooks(self.unet)
        remove(self.unet, DeepCacheUNetHook.NAME)


def apply_deepcache(unet: nn.Module, config: DeepCacheConfig) -> DeepCacheHandle:
    """Installs DeepCache on a diffusers U-Net (see the module docstring); returns its handle."""
    check_unet(unet, "DeepCache")
    if not isinstance(config, DeepCacheConfig):
        raise TypeError(f"config must be a DeepCacheConfig, got {type(config).__name__}")
    if hook_of(unet, DeepCacheUNetHook.NAME) is not None:
        raise RuntimeError("DeepCache is already enabled on this U-Net; disable() its handle first")
    for i, up in enumerate(unet.up_blocks):
        if not UP_BLOCKS[type(up).__name__].concat_each:
            raise TypeError(f"DeepCache does not support up_blocks[{i}] ({type(up).__name__}): k-diffusion blocks join "
                            f"one skip per level, so the reference's (block, layer) cache points do not apply")
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    layers = len(unet.up_blocks[-1].resnets)  # L: up resnets per level, the reference's 3 for SD
    block, layer = divmod(config.branch, layers)
    if block >= n_down:
        raise ValueError(f"branch {config.branch} is beyond this U-Net: {n_down} levels of {layers} layers allow "
                         f"branches 0..{n_down * layers - 1}")
    down = unet.down_blocks[block]
    entry_block = unet.up_blocks[n_up - 1 - block]
    if len(entry_block.resnets) != layers or len(getattr(down, "resnets", [])) != layers - 1:
        raise TypeError(f"down_blocks[{block}] ({type(down).__name__}) and up_blocks[{n_up - 1 - block}] "
                        f"({type(entry_block).__name__}) do not mirror each other ({layers} up layers)")
    state = DeepCacheState(config)
    cached: list[nn.Module] = [*unet.down_blocks[block + 1:], *([unet.mid_block] if unet.mid_block is not None else [])]
    cached += list(down.resnets[layer:]) + list(getattr(down, "attentions", None) or [])[layer:]
    for name in _DOWN_TAIL:
        part = getattr(down, name, None)
        cached += list(part) if isinstance(part, nn.ModuleList) else [part] if isinstance(part, nn.Module) else []
    for i, module in enumerate(cached):
        registry(module).register_hook(CachedOutputHook(state, f"cached.{i}"), CachedOutputHook.NAME)
    hooks = up_block_hooks(unet)
    for u, hook in enumerate(hooks):
        if u < n_up - 1 - block:
            hook.cache = CachedUpBlock(state, hook.name)
        elif u == n_up - 1 - block:
            hook.cache = CacheEntry(state, layers - 1 - layer)
    registry(unet).register_hook(DeepCacheUNetHook(state, (block, layer)), DeepCacheUNetHook.NAME)
    return DeepCacheHandle(unet, state, cached)


def enable_deepcache(unet: nn.Module, interval: int = 3, branch: int = 0, mode: str = "uniform",
                     blend: Optional[float] = None, calls: Optional[int] = None,
                     center: Optional[int] = None) -> DeepCacheHandle:
    """DeepCache on a diffusers UNet2DModel / UNet2DConditionModel; see DeepCacheConfig for the arguments."""
    return apply_deepcache(unet, DeepCacheConfig(interval, branch, mode, blend, calls, center))
