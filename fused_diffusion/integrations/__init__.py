"""Integrations with other libraries' APIs: `fd.integrations.diffusers` (diffusers schedulers read exactly, and a
diffusers-API scheduler over the fused solvers)."""
from . import diffusers
from .diffusers import DiffusersSchedule, FusedScheduler, from_diffusers

__all__ = ["DiffusersSchedule", "FusedScheduler", "diffusers", "from_diffusers"]
