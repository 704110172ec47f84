"""The graph cache: captured loops by key, least recently used evicted beyond a bound, an entry whose weights
changed since capture dropped on lookup, and the keys that could not be captured (run eagerly from then on)."""
from __future__ import annotations

import collections
from typing import Any, Hashable, Optional

from torch import Tensor


def argument_signature(extra: dict) -> tuple:
    """The cache-key part of the extra arguments: tensors by shape/dtype/device (their values are copied in on each
    replay), anything else by value."""
    def one(value: Any) -> Hashable:
        if isinstance(value, Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device)
        return ("value", repr(value))

    return tuple(sorted((name, one(value)) for name, value in extra.items()))


class GraphCache:
    def __init__(self, max_graphs: int):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self.entries: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self.eager_keys: set[Hashable] = set()

    def get(self, key: Hashable, weights: Hashable) -> Optional[Any]:
        """The entry for key, unless its weights differ from `weights` (then it is dropped)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.weights != weights:
            del self.entries[key]  # weights edited since capture: the graph would replay stale values
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: Any) -> None:
        while len(self.entries) >= self.max_graphs:
            self.entries.popitem(last=False)
        self.entries[key] = entry

    def clear(self) -> None:
        self.entries.clear()
        self.eager_keys.clear()

    def __len__(self) -> int:
        return len(self.entries)
