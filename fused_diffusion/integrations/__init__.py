"""Integrations with other libraries' APIs: `fd.integrations.diffusers` (diffusers schedulers, read exactly)."""
from . import diffusers
from .diffusers import DiffusersSchedule, from_diffusers

__all__ = ["DiffusersSchedule", "diffusers", "from_diffusers"]
