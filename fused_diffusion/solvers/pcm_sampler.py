"""The deterministic phased sampler of Phased Consistency Models (Wang et al. 2024, "Phased Consistency Model",
NeurIPS; sec. 3.2 and its code G-U-N/Phased-Consistency-Model, `DDIMSolver.ddim_style_multiphase_pred`).

The teacher's DDPM timesteps are discretised as its code does: N = 50 DDIM timesteps tau_i = (i + 1) T / N - 1
(19, 39, ..., 999 for T = 1000); M phases split their indices at e_m = floor(m N / M), m = 0..M-1. A start index i in
phase [e_m, e_{m+1}) is mapped to the phase edge, the timestep tau_{e_m - 1} (timestep 0 for the first phase), by the
phased consistency function in DDIM form,

    x_edge = sqrt(a_edge) x0(x_t, eps) + sqrt(1 - a_edge) eps,   x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),

and sampling walks the edges: tau_{N-1} -> tau_{e_{M-1} - 1} -> ... -> timestep 0, one model call per phase.
`pcm_timesteps(phases, steps)` gives the start timesteps of a run: with steps = k M each phase's index range is cut
into k equal parts (floor division) and each step maps to the next cut by the same DDIM form; with M = k steps,
every k-th edge (the model is then asked to jump past edges it was not trained to reach).

Against diffusers' `TCDScheduler` at gamma (its `eta`) = 0: its step is this step, x' = sqrt(a_s) x0 + sqrt(1 - a_s)
eps with s the next timestep and a_0 after the last, so the two agree on the same timesteps. Its own
`set_timesteps(n)` cuts the same 50 timesteps at floor(k N / n) counted from the top (999 down), PCM's phases at
floor(m N / M) counted from the bottom: the same when M divides N (1, 2, 5, 10, 25, 50 phases), not otherwise
(4 phases: TCD's 999, 759, 499, 259 against the edges 999, 739, 499, 239); `set_timesteps(timesteps=
pcm_timesteps(...))` makes it this sampler.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_count
from .lcm import TimestepSolver

DDIM_STEPS = 50  # N: the paper's code's num_ddim_timesteps


def ddim_grid(num_train_timesteps: int, ddim_steps: int = DDIM_STEPS) -> Tensor:
    """tau_i = (i + 1) floor(T / N) - 1, i = 0..N-1 (increasing), as the PCM code's DDIMSolver."""
    return torch.arange(1, ddim_steps + 1) * (num_train_timesteps // ddim_steps) - 1


def phase_starts(phases: int, ddim_steps: int = DDIM_STEPS) -> Tensor:
    """e_m = floor(m N / M), the first DDIM index of each phase (the code's floor(linspace(0, N, M, endpoint=False)))."""
    return torch.arange(phases) * ddim_steps // phases


def check_phases(phases: object, ddim_steps: int = DDIM_STEPS) -> int:
    phases = check_count("phases", phases)
    if phases > ddim_steps:
        raise ValueError(f"phases must be at most ddim_steps = {ddim_steps} (each phase needs a DDIM timestep), "
                         f"got {phases}")
    return phases


def pcm_timesteps(phases: int, steps: int, num_train_timesteps: int = 1000, ddim_steps: int = DDIM_STEPS) -> Tensor:
    """The start timesteps (decreasing, int64) of a `steps`-step phased run of an M = `phases` model; steps must be
    a multiple of phases (each phase cut into steps / phases parts) or divide it (every phases / steps-th edge)."""
    ddim_steps = check_count("ddim_steps", ddim_steps)
    num_train_timesteps = check_count("num_train_timesteps", num_train_timesteps, minimum=ddim_steps)
    phases, steps = check_phases(phases, ddim_steps), check_count("steps", steps)
    edges = phase_starts(phases, ddim_steps).tolist() + [ddim_steps]  # sync-ok: a CPU index table, once per schedule
    if steps % phases == 0:
        parts = steps // phases
        bounds = [lo + q * (hi - lo) // parts for lo, hi in zip(edges, edges[1:]) for q in range(parts)]
    elif phases % steps == 0:
        bounds = edges[:-1][:: phases // steps]
    else:
        raise ValueError(f"steps must be a multiple of phases ({phases}) or divide it, got {steps}")
    bounds = bounds + [ddim_steps]
    if len(set(bounds)) != len(bounds):
        raise ValueError(f"steps = {steps} cuts a phase of {phases} over {ddim_steps} DDIM timesteps into parts "
                         "without a timestep; use fewer steps")
    return ddim_grid(num_train_timesteps, ddim_steps)[torch.tensor(bounds[1:]) - 1].flip(0)


class PCM(TimestepSolver):
    """The phased consistency step: eps = model(x, t_i), x' = sqrt(a') x0 + sqrt(1 - a') eps toward the next start
    timestep t_{i+1} (the phase edge, or a cut inside the phase), a' = alphas_cumprod[0] after the last; one
    lincomb on [x, eps] (TimestepSolver's step). The schedule is `pcm_timesteps(phases, steps)`."""

    name, label, paper = "pcm", "PCM", "Wang et al. 2024 (Phased Consistency Model), sec. 3.2"

    def tables(self, timesteps: Tensor) -> dict[str, Tensor]:
        t = timesteps.long()
        edge = torch.cat([t[1:], t.new_zeros(1)])  # the last step lands on timestep 0, as the code's first phase
        a_edge = self.alphas_cumprod[edge]
        x0 = self.x0_row(self.alphas_cumprod[t])
        to_edge = torch.stack([a_edge.sqrt() * x0[:, 0], a_edge.sqrt() * x0[:, 1] + (1 - a_edge).sqrt()], dim=1)
        return {"timestep": t, "x0": x0, "update": to_edge}
