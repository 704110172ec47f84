"""Integrations with other libraries' APIs: `fd.integrations.diffusers` (diffusers schedulers read exactly, and a
diffusers-API scheduler over the fused solvers)."""
from . import diffusers
from .diffusers import DiffusersSchedule, FusedScheduler, accelerate, from_diffusers, undo

__all__ = ["DiffusersSchedule", "FusedScheduler", "accelerate", "diffusers", "from_diffusers", "undo"]
