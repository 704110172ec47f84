"""What a captured loop bakes in from the modules it calls, so that a change is never replayed stale.

Two parts, read in one walk over every module the loop calls (the model's and the solver's, e.g. an AMED predictor):
- structure, part of the graph cache key: module types, forwards patched on an instance, registered hooks (global
  ones too) and whatever a module, hook or feature reports through a `graph_key()` method (DeepCache's interval,
  Skip-Tuning's rho, ...). A change captures a new graph; changing it back finds the old one.
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


def _module_structure(module: nn.Module) -> tuple:
    patched = module.__dict__.get("forward")  # an instance attribute shadows the class's forward
    return (
        type(module),
        None if patched is None else id(getattr(patched, "__func__", patched)),
        _hooks(module._forward_pre_hooks),
        _hooks(module._forward_hooks),
        # looked up on the class first: nn.Module's __getattr__ makes a failed instance lookup costly
        graph_key(module) if hasattr(type(module), "graph_key") or "graph_key" in module.__dict__ else None,
    )


class LoopWatch:
    """Every module a loop over `roots` calls (nn.Modules among the roots and everything inside them), with the
    structure and weights they had when last read. Holds them strongly, so the ids in a cache key stay unique."""

    def __init__(self, *roots: Any):
        self.roots = roots
        self.modules = [m for root in roots if isinstance(root, nn.Module) for m in root.modules()]
        self.structure, self.weights = self.read()

    def read(self) -> tuple[Hashable, Hashable]:
        """(structure, weights) now."""
        structure, versions, pointers, children = [], 0, [], []
        for module in self.modules:
            structure.append(_module_structure(module))
            for t in (*module._parameters.values(), *module._buffers.values()):
                if t is not None:
                    versions += 0 if t.is_inference() else t._version  # inference tensors have no counter
                    pointers.append(t.data_ptr())
            children.extend(map(id, module._modules.values()))
        roots = tuple(graph_key(root) for root in self.roots if not isinstance(root, nn.Module))
        return (tuple(structure), _global_hooks(), roots), (versions, hash(tuple(pointers)), hash(tuple(children)))

    def changed(self) -> bool:
        return self.read() != (self.structure, self.weights)
