"""Which model call of a sampling run is under way: set by the sampling loop around every model call, read by
model-side features (DeepCache's full/shallow pattern, per-call feature state) without any host sync.

Inside a captured CUDA graph the loop's Python runs once, at capture: what a feature decides from the call index
is fixed into the graph, which is exactly the pattern the eager loop would follow. Every run numbers its calls from
0 and has a new `run` id, so the warm-up before a capture never shifts the captured pattern, and stateful features
can reset themselves when they see a new run id.
"""
from __future__ import annotations

import contextvars
import itertools
from typing import NamedTuple, Optional

from torch import Tensor

_current: contextvars.ContextVar[Optional["ModelCall"]] = contextvars.ContextVar("fused_diffusion_model_call",
                                                                                 default=None)
_run_ids = itertools.count(1)


def new_run_id() -> int:
    return next(_run_ids)


class ModelCall(NamedTuple):
    """One model call of a run (an immutable record, made on every call: a named tuple costs a third of a frozen
    dataclass). index: calls made before it in this run (0-based); step: the solver step it belongs
    to; call_in_step: 0 for a step's first call, 1 for its second (Heun's correction, a midpoint); label: the table
    that gave the model its noise level ('sigma', 'sigma_hat', 'sigma_next', 'sigma_mid', 'timestep', ...);
    sigma: that [B] device tensor (read it on the device only: converting it to a number syncs)."""

    run: int
    index: int
    step: int
    n_steps: int
    call_in_step: int
    label: str
    sigma: Optional[Tensor]


def current_model_call() -> Optional[ModelCall]:
    """The model call under way, or None outside a sampling loop of this library."""
    return _current.get()


class model_call:  # noqa: N801 - used as a function: `with fd.model_call(call):`
    """Makes `call` the current one inside the block (the loop uses it; so can a hand-written sampling loop). A
    class rather than a generator context manager: it runs around every model call (about 1 us instead of 3)."""

    __slots__ = ("call", "token")

    def __init__(self, call: ModelCall):
        self.call = call

    def __enter__(self) -> ModelCall:
        self.token = _current.set(self.call)
        return self.call

    def __exit__(self, *exc: object) -> None:
        _current.reset(self.token)
