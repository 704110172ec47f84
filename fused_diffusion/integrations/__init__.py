"""Integrations with other libraries' APIs: `fd.integrations.diffusers` (diffusers schedulers read exactly, a
diffusers-API scheduler over the fused solvers, pipelines sampled through this library)."""
from . import diffusers
from .diffusers import FusedScheduler, Setup, accelerate, from_diffusers, undo

__all__ = ["FusedScheduler", "Setup", "accelerate", "diffusers", "from_diffusers", "undo"]
