"""What a captured loop bakes in from the modules it calls, so that a change is never replayed stale.

Two parts, read in one walk over every module the loop calls (the model's and the solver's, e.g. an AMED predictor):
- structure, part of the graph cache key: module types, forwards patched on an instance, registered hooks (torch's,
  global ones too, and diffusers' HookRegistry) and whatever a module, hook or feature reports through a
  `graph_key()` method (DeepCache's interval, Skip-Tuning's rho, ...). A change captures a new graph; changing it
  back finds the old one.
- weights, checked on replay: parameter and buffer version counters (in-place edits such as fusing a LoRA), data
  pointers (replaced tensors) and child modules (swapped submodules). A change recaptures. Edits through `.data`
  bypass version counters: call `Sampler.invalidate()` after those.
"""
from __future__ import annotations

from typing import Any, Hashable

from torch import nn
from torch.nn.modules import module as torch_module


def graph_key(obj: Any) -> Hashable:
    """obj.graph_key() when obj defines one (the protocol for features), else None."""
    method = getattr(obj, "graph_key", None)
    return method() if callable(method) else None


def _hooks(hooks: dict) -> tuple:
    return tuple((id(hook), graph_key(hook)) for hook in hooks.values())


def _global_hooks() -> tuple:
    return tuple(_hooks(getattr(torch_module, name)) for name in
                 ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_module_registration_hooks"))


def _patched_forward(module: nn.Module) -> int | None:
    """id of a forward set on the instance (it shadows the class's), None when there is none or it is just the
    class's own forward bound to the module (what undoing a patch often leaves behind)."""
    patched = module.__dict__.get("forward")
    if patched is None:
        return None
    func = getattr(patched, "__func__", patched)
    if func is type(module).forward and getattr(patched, "__self__", None) is module:
        return None
    return id(func)


def _module_structure(module: nn.Module) -> tuple:
    registry = module.__dict__.get("_diffusers_hook")  # diffusers.hooks.HookRegistry (it also patches forward)
    return (
        _patched_forward(module),
        _hooks(module._forward_pre_hooks),
        _hooks(module._forward_hooks),
        () if registry is None else tuple((name, type(hook), graph_key(hook)) for name, hook in registry.hooks.items()),
        graph_key(module),
    )


_PLAIN = (None, (), (), (), None)


class LoopWatch:
    """Every module a loop over `roots` calls (nn.Modules among the roots and everything inside them), with the
    structure and weights they had when last read. Holds them strongly, so the ids in a cache key stay unique."""

    def __init__(self, *roots: Any):
        self.roots = roots
        self.modules = [m for root in roots if isinstance(root, nn.Module) for m in root.modules()]
        # looked up once on the classes: nn.Module's __getattr__ makes a failed instance lookup costly
        self._keyed = [hasattr(type(m), "graph_key") for m in self.modules]
        self.structure, self.weights = self.read()

    def read(self) -> tuple[Hashable, Hashable]:
        """(structure, weights) now. Most modules carry no feature: they cost a few dict lookups (~1 us)."""
        structure, versions, pointers, children = [], 0, [], []
        for index, module in enumerate(self.modules):
            state = module.__dict__
            if (self._keyed[index] or state["_forward_hooks"] or state["_forward_pre_hooks"] or "forward" in state
                    or "_diffusers_hook" in state or "graph_key" in state):
                features = _module_structure(module)
                if features != _PLAIN:  # e.g. an emptied hook registry or an unpatched forward left behind
                    structure.append((index, type(module), features))
            for t in (*state["_parameters"].values(), *state["_buffers"].values()):
                if t is not None:
                    versions += 0 if t.is_inference() else t._version  # inference tensors have no counter
                    pointers.append(t.data_ptr())
            children.extend(map(id, state["_modules"].values()))
        roots = tuple(graph_key(root) for root in self.roots if not isinstance(root, nn.Module))
        return (tuple(structure), _global_hooks(), roots), (versions, hash(tuple(pointers)), hash(tuple(children)))

    def changed(self) -> bool:
        return self.read() != (self.structure, self.weights)
