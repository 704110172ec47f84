"""Fused ops. Every op picks its backend (triton / cuda / cpp / torch) in dispatch.py."""
from .dispatch import backends, blend, blend_concat, count_launches, lincomb, skip_concat

__all__ = ["backends", "blend", "blend_concat", "count_launches", "lincomb", "skip_concat"]
