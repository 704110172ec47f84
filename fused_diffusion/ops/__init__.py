"""Fused ops. Every op picks its backend (triton / cuda / cpp / torch) in dispatch.py."""
# The Triton kernel modules share their names with the public functions: import them first, so the
# functions bound below replace the submodule attributes for good (a later first import of a
# submodule would rebind e.g. `ops.lincomb` to the module).
try:
    from . import blend, blend_concat, lincomb, skip_concat  # noqa: F401
except Exception:  # no (working) triton: dispatch reports why in backends() and uses the other backends
    pass
from .dispatch import backends, blend, blend_concat, count_launches, lincomb, skip_concat, use_backend  # noqa: F811

__all__ = ["backends", "blend", "blend_concat", "count_launches", "lincomb", "skip_concat", "use_backend"]
