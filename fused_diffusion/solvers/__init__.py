"""Solver families: one coefficient table + step function each, all run by the loop in base.py."""
import inspect

from .amed_sampler import AMED
from .analytic_dpm_sampler import AnalyticDPM, analytic_dpm_timesteps, sample_analytic_dpm
from .base import DeviceTables, Plan, Solver
from .consistency_sampler import Consistency
from .ddim import DDIM, ddim_timesteps
from .dpm2 import DPM2, DPM2Ancestral
from .dpm_solver import DPMFast, sample_dpm_adaptive
from .dpmpp import DPMpp2M, DPMpp2MSDE, DPMpp2SAncestral, DPMpp3MSDE, DPMppSDE
from .euler import Euler, EulerAncestral
from .flow import FlowEuler
from .heun import Heun
from .ipndm import IPNDM
from .lcm import LCM, TCD
from .lms import LMS
from .pcm_sampler import PCM, pcm_timesteps
from .run import Run, check_input, run_steps, sample
from .shortcut_sampler import Shortcut
from .unipc import UniPC

SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls
    for cls in (Euler, EulerAncestral, Heun, DPM2, DPM2Ancestral, LMS, DPMFast, DPMpp2SAncestral, DPMppSDE, DPMpp2M,
                DPMpp2MSDE, DPMpp3MSDE, AMED, IPNDM, DDIM, Shortcut, Consistency, FlowEuler, LCM, TCD, PCM, UniPC)
}
EAGER_ONLY = {
    "dpm_adaptive": "dpm_adaptive accepts or rejects each step from an error read on the host, so it cannot be "
                    "captured or planned ahead; call fd.sample_dpm_adaptive (eager), or use 'dpm_fast' for a fixed "
                    "number of model calls",
}


def get_solver(solver: "str | Solver", **options) -> Solver:
    """A solver instance from its name (with constructor options) or an instance as is."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} given with a solver instance; pass them to its constructor")
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a solver name (str) or a Solver instance, got {type(solver).__name__}")
    if solver in EAGER_ONLY:
        raise ValueError(EAGER_ONLY[solver])
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    cls = SOLVERS[solver]
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:] if cls.__init__ is not object.__init__ else []
    taken = [p.name for p in parameters]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise TypeError(f"solver {solver!r} takes the options {taken or 'none'}; got {unknown}")
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise TypeError(f"solver {solver!r} needs the options {missing}; pass them with the solver's name (e.g. "
                        f"{missing[0]}=...) or give a solvers.{cls.__name__}(...) instance")
    return cls(**options)


__all__ = ["AMED", "Consistency", "DDIM", "DPM2", "DPM2Ancestral", "DPMFast", "DPMpp2M", "DPMpp2MSDE",
           "DPMpp2SAncestral", "DPMpp3MSDE", "DPMppSDE", "DeviceTables", "EAGER_ONLY", "Euler", "EulerAncestral",
           "FlowEuler", "Heun", "IPNDM", "LCM", "LMS", "PCM", "TCD", "Plan", "Run", "SOLVERS", "Shortcut", "Solver", "check_input", "ddim_timesteps", "pcm_timesteps",
           "get_solver", "run_steps", "sample", "sample_dpm_adaptive"]
