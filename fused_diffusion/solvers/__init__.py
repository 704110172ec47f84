"""Solver families: one coefficient table + step function each, all run by the loop in base.py."""
from .amed import AMED
from .base import DeviceTables, Plan, Solver
from .consistency import Consistency
from .ddim import DDIM, ddim_timesteps
from .dpm2 import DPM2
from .dpmpp import DPMpp2M
from .euler import Euler, EulerAncestral
from .heun import Heun
from .ipndm import IPNDM
from .run import Run, check_input, run_steps, sample
from .shortcut import Shortcut

SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls for cls in (Euler, EulerAncestral, Heun, DPM2, DPMpp2M, AMED, IPNDM, DDIM, Shortcut, Consistency)
}


def get_solver(solver: "str | Solver", **options) -> Solver:
    """A solver instance from its name (with constructor options) or an instance as is."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} given with a solver instance; pass them to its constructor")
        return solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[solver](**options)


__all__ = ["AMED", "Consistency", "DDIM", "DPM2", "DPMpp2M", "DeviceTables", "Euler", "EulerAncestral", "Heun",
           "IPNDM", "Plan", "Run", "SOLVERS", "Shortcut", "Solver", "check_input", "ddim_timesteps", "get_solver",
           "run_steps", "sample"]
