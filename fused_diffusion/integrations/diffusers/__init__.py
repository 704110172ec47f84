"""diffusers integration: scheduler adapters read exactly (`from_diffusers`), a diffusers-API scheduler over the
fused solvers (`FusedScheduler`), and pipelines that sample through this library (`accelerate` / `undo`)."""
from .fused_scheduler import FusedScheduler
from .pipelines import FAMILIES, UNCONDITIONAL, Acceleration, accelerate, undo
from .schedulers import ADAPTERS, SchedulerAdapter, Setup, from_diffusers, scheduler_like

__all__ = ["ADAPTERS", "Acceleration", "FAMILIES", "FusedScheduler", "SchedulerAdapter", "Setup", "UNCONDITIONAL",
           "accelerate", "from_diffusers", "scheduler_like", "undo"]
