"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps") in k-diffusion's form, with t = -log sigma and eps = (x - D) / sigma: the DPM-Solver-1, -2 and -3 steps
(eqs. 3.7-3.9, Algorithms 4 and 5), DPM-Solver-fast (fixed steps, sec. 3.4 "DPM-Solver-fast") and the adaptive
DPM-Solver-12/23 (sec. 3.4 "adaptive step size", with k-diffusion's PID step-size controller).

k-diffusion builds the time grid from Python floats, so its step coefficients are float32 arithmetic whatever x's
dtype; they are repeated here operation by operation in the grid's dtype, then turned into float64 lincomb rows.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import ops
from ..checks import check_bool, check_count, check_eta, check_real
from .base import Solver
from .euler import ancestral_sigmas
from .model_calls import ModelCalls
from .step_noise import NoiseSampler, checked_noise
from .run import Callback, Run, check_input, check_run_arguments


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _time(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


@dataclass
class DPMSolverStep:
    """One DPM-Solver-k step from t to t_next as lincomb rows: the model's sigmas (at t, then at s1, s2), the
    intermediate points (u1 on [x, D]; u2 on [x, D, u1, D1]) and the result (on [x, D], or [x, D, u, D_u] with u the
    last intermediate point)."""

    sigmas: list[float]
    stages: list[list[float]]
    final: list[float]


def _eps_update(c: Tensor, b: Tensor | None, sigma_t: float, sigma_stage: float | None) -> list[float]:
    """x - c eps - b (eps_stage - eps) with eps = (x - D) / sigma_t, eps_stage = (u - D_u) / sigma_stage, as weights
    on [x, D] (b None) or [x, D, u, D_u]."""
    c_total = float(c) - (float(b) if b is not None else 0.0)
    weights = [1 - c_total / sigma_t, c_total / sigma_t]
    if b is not None:
        weights += [-float(b) / sigma_stage, float(b) / sigma_stage]
    return weights


def dpm_solver_step(order: int, t: Tensor, t_next: Tensor, r1: float | None = None, r2: float = 2 / 3) -> DPMSolverStep:
    """k-diffusion's DPMSolver.dpm_solver_{1,2,3}_step coefficients; r1 defaults to 1/2 for the second order step and
    1/3 for the third."""
    r1 = r1 if r1 is not None else 1 / 2 if order == 2 else 1 / 3
    h = t_next - t
    sigma_t = float(_sigma(t))
    if order == 1:
        return DPMSolverStep([sigma_t], [], _eps_update(_sigma(t_next) * h.expm1(), None, sigma_t, None))
    s1 = t + r1 * h
    sigma_s1 = float(_sigma(s1))
    u1 = _eps_update(_sigma(s1) * (r1 * h).expm1(), None, sigma_t, None)
    if order == 2:
        final = _eps_update(_sigma(t_next) * h.expm1(), _sigma(t_next) / (2 * r1) * h.expm1(), sigma_t, sigma_s1)
        return DPMSolverStep([sigma_t, sigma_s1], [u1], final)
    s2 = t + r2 * h
    sigma_s2 = float(_sigma(s2))
    u2 = _eps_update(_sigma(s2) * (r2 * h).expm1(), _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1),
                     sigma_t, sigma_s1)
    final = _eps_update(_sigma(t_next) * h.expm1(), _sigma(t_next) / r2 * (h.expm1() / h - 1), sigma_t, sigma_s2)
    return DPMSolverStep([sigma_t, sigma_s1, sigma_s2], [u1, u2], final)


def ancestral_times(t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor | float]:
    """(t_next_, sigma_up): the deterministic step's end and the noise added after it (k-diffusion's eta handling in
    dpm_solver_fast and dpm_solver_adaptive)."""
    if not eta:
        return t_next, 0.0
    sigma_down, _ = ancestral_sigmas(_sigma(t), _sigma(t_next), eta)
    t_next_ = torch.minimum(t_end, _time(sigma_down))
    return t_next_, (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5


def fast_orders(nfe: int) -> list[int]:
    """DPM-Solver-fast's orders for `nfe` model calls: third order steps, then 2, 1 or a shorter last step."""
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


# the largest weight of a DPM-Solver-fast update: past it, x and the weighted denoised outputs cancel beyond float32's
# ~1e-7 resolution (relative error ~1e-2); normal schedules stay below 1e2 (sigma_min 0.002: 9.4)
MAX_WEIGHT = 1e5


class DPMFast(Solver):
    """DPM-Solver-fast (k-diffusion's sample_dpm_fast): `nfe` model calls over a grid uniform in t = -log sigma from
    sigma_max to sigma_min, with third order steps and a 2/1 or shorter last step; eta > 0 adds ancestral noise after
    each step. The schedule is the pair [sigma_max, sigma_min]; the result stays at sigma_min (no final denoise).
    Each stage is one lincomb; the result's takes the noise as its last input."""

    name, label, paper = "dpm_fast", "DPM-Solver-fast", "Lu et al. 2022 (DPM-Solver), sec. 3.4"
    schedule_kind = "sigma_range"
    noise_option = "eta"

    def __init__(self, nfe: int | None = None, eta: float = 0.0, s_noise: float = 1.0):
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise ValueError(f"dpm_fast needs nfe, the number of model calls, an integer >= 1; got {nfe!r}")
        self.nfe, self.eta, self.s_noise = nfe, check_eta(eta), check_real("s_noise", s_noise)
        self.orders = fast_orders(nfe)

    def check_schedule(self, schedule: Tensor) -> None:
        check_sigma_range(schedule)

    def num_steps(self, schedule: Tensor) -> int:
        return len(self.orders)

    def calls(self, n_steps: int, to_zero: bool = True) -> int:
        """Model calls of its first `n_steps` steps (nfe for all of them); nfe fixes how many there are."""
        n_steps = check_count("n_steps", n_steps)
        if n_steps > len(self.orders):
            raise ValueError(f"dpm_fast with nfe={self.nfe} runs {len(self.orders)} steps (orders {self.orders}), "
                             f"not {n_steps}")
        return sum(self.orders[:n_steps])

    def steps_for(self, budget: int, to_zero: bool = True) -> int | None:
        """The most of its first steps whose calls fit in `budget` (all of them from budget = nfe), or None."""
        budget = check_count("budget", budget)
        return sum(1 for calls in itertools.accumulate(self.orders) if calls <= budget) or None

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return False

    def host_schedule(self, schedule: Tensor) -> Tensor:
        return schedule.detach().cpu()  # sync-ok: once per schedule; keeps k-diffusion's float32 grid arithmetic

    def times(self, schedule: Tensor) -> tuple[Tensor, Tensor]:
        """(t grid, t_end) exactly as k-diffusion builds them, on the schedule's device."""
        t_start, t_end = _time(schedule[0]), _time(schedule[1])
        return torch.linspace(t_start, t_end, len(self.orders) + 1, dtype=schedule.dtype, device=schedule.device), t_end

    def tables(self, schedule: Tensor) -> dict[str, Tensor]:
        ts, t_end = self.times(schedule)
        n = len(self.orders)
        shapes = {"t": (), "sigma": (), "sigma_s1": (), "sigma_s2": (), "u1": (2,), "u2": (4,), "final_1": (3,),
                  "final": (5,)}  # rows a step does not read stay 0
        tables = {name: torch.zeros(n, *shape, dtype=torch.float64) for name, shape in shapes.items()}
        for i, order in enumerate(self.orders):
            t_next_, sigma_up = ancestral_times(ts[i], ts[i + 1], t_end, self.eta)
            step = dpm_solver_step(order, ts[i], t_next_)
            tables["t"][i] = float(ts[i])
            for name, value in zip(("sigma", "sigma_s1", "sigma_s2"), step.sigmas):
                tables[name][i] = value
            for name, row in zip(("u1", "u2"), step.stages):
                tables[name][i] = torch.tensor(row, dtype=torch.float64)
            tables["final_1" if order == 1 else "final"][i] = torch.tensor(
                [*step.final, float(sigma_up * self.s_noise)], dtype=torch.float64)
        largest = max(float(tables[name].abs().max()) for name in ("u1", "u2", "final_1", "final"))
        if largest > MAX_WEIGHT:
            sigma_max, sigma_min = schedule.tolist()  # sync-ok: error path
            raise ValueError(
                f"dpm_fast from sigma_max={sigma_max:g} to sigma_min={sigma_min:g} in {self.nfe} calls folds epsilon "
                f"into update weights of {largest:.3g}, whose cancellation a float32 update cannot resolve (the sample "
                f"would be lost); raise sigma_min or nfe")
        return tables

    def noise_sigmas(self, schedule: Tensor) -> dict[str, Tensor]:
        ts, _ = self.times(schedule)
        return {"sigma": torch.stack([torch.stack([_sigma(ts[i]), _sigma(ts[i + 1])]) for i in range(len(ts) - 1)])}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        order = self.orders[i]
        denoised = run.call(x, i, "sigma")
        t = run.tables["t"][i]
        run.report(i, x, denoised, sigma=run.tables["sigma"][i], t=t, t_up=t)
        if order == 1:
            table, inputs = "final_1", [x, denoised]
        else:
            u = run.lincomb("u1", i, x, denoised)
            denoised_u = run.call(u, i, "sigma_s1")
            if order == 3:
                u = run.lincomb("u2", i, x, denoised, u, denoised_u)
                denoised_u = run.call(u, i, "sigma_s2")
            table, inputs = "final", [x, denoised, u, denoised_u]
        return run.noisy_lincomb(table, i, *inputs, noise=self.eta > 0, at="sigma")


def sigma_range(sigma_min: float, sigma_max: float) -> Tensor:
    """k-diffusion's [sigma_max, sigma_min] for dpm_fast / dpm_adaptive (float32 from Python numbers), after checks
    naming the values given: positive and representable in float32, the dtype these samplers' times are in."""
    values = {"sigma_min": check_real("sigma_min", sigma_min, above=0),
              "sigma_max": check_real("sigma_max", sigma_max, above=0)}
    for name, value in values.items():
        stored = float(torch.tensor(value, dtype=torch.float32))
        if not torch.finfo(torch.float32).tiny <= stored < math.inf:
            raise ValueError(f"{name}={value:g} {'overflows' if stored == math.inf else 'underflows'} float32, the dtype "
                             "dpm_fast and dpm_adaptive compute their sigmas and times in")
    schedule = torch.stack([torch.as_tensor(sigma_max), torch.as_tensor(sigma_min)]).float()
    check_sigma_range(schedule)
    return schedule


def check_sigma_range(schedule: Tensor) -> None:
    """DPM-Solver-fast's schedule: [sigma_max, sigma_min], both finite and > 0, sigma_max > sigma_min."""
    if not isinstance(schedule, Tensor) or schedule.shape != (2,) or not schedule.is_floating_point():
        raise ValueError(f"the schedule of dpm_fast is the pair [sigma_max, sigma_min], a float tensor of shape (2,); "
                         f"got {getattr(schedule, 'shape', type(schedule).__name__)}")
    sigma_max, sigma_min = schedule.tolist()  # sync-ok: once per schedule
    if not (math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min}, sigma_max={sigma_max}")


class PIDStepSizeController:
    """k-diffusion's PID controller for the adaptive step size (Söderlind 2003): factor = limiter(prod of the last
    three inverse errors to the PID exponents); a step is accepted when the factor reaches `accept_safety`."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float = 1,
                 accept_safety: float = 0.81, eps: float = 1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    @staticmethod
    def limiter(x: float) -> float:
        return 1 + math.atan(x - 1)

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        try:
            raw = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        except OverflowError:  # large coefficients: the limiter saturates at 1 + pi / 2 there anyway
            raw = math.inf
        factor = self.limiter(raw)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(model: Callable[..., Any], x: Tensor, sigma_min: float, sigma_max: float,
                        extra_args: dict | None = None, callback: Callback | None = None, disable: bool | None = None,
                        order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                        pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81,
                        eta: float = 0.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                        return_info: bool = False, k_diffusion_rng: bool = True,
                        max_rejects: int = 1000, max_attempts: int = 10_000) -> Tensor | tuple[Tensor, dict]:
    """DPM-Solver-12 (order=2) and -23 (order=3) with adaptive steps (k-diffusion's sample_dpm_adaptive): each
    attempt computes a low and a high order solution from sigma to the proposed step end, the scaled error between
    them (atol, rtol) drives the PID controller, which accepts or shrinks the step. Every accept/reject needs the
    error on the host, so this sampler runs eagerly only (one host sync per attempt), never in a CUDA graph.
    return_info: also return {'steps', 'nfe', 'n_accept', 'n_reject'}.

    Options that would keep the loop from finishing are refused: accept_safety must be in (0, 1] (the limited
    factor 1 + atan(.) would otherwise grow the step it rejects, or never reach the threshold), and pcoeff + icoeff
    + dcoeff > 0 (else the error never shrinks a step). `max_rejects` and `max_attempts` (not in k-diffusion) bound
    the rejected attempts in a row and all attempts: a tolerance the model cannot meet, or a controller that crawls
    (an unstable pcoeff / icoeff / dcoeff), raises naming the options instead of running forever."""
    check_input(x)
    check_run_arguments(model, extra_args, callback, noise_sampler)
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order!r}")
    sigma_max, sigma_min = sigma_range(sigma_min, sigma_max).tolist()
    for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init)):
        check_real(name, value, above=0)
    if check_real("accept_safety", accept_safety, above=0) > 1:
        raise ValueError(f"accept_safety must be in (0, 1] (a step is accepted when the controller's factor reaches "
                         f"it; above 1 a rejected step grows and the loop may never finish), got {accept_safety}")
    if sum(check_real(name, value) for name, value in (("pcoeff", pcoeff), ("icoeff", icoeff), ("dcoeff", dcoeff))) <= 0:
        raise ValueError(f"pcoeff + icoeff + dcoeff must be > 0 (the exponent of the inverse error in the step-size "
                         f"factor), got {pcoeff} + {icoeff} + {dcoeff}")
    max_rejects, max_attempts = check_count("max_rejects", max_rejects), check_count("max_attempts", max_attempts)
    eta, s_noise = check_eta(eta), check_real("s_noise", s_noise)
    return_info, k_diffusion_rng = check_bool("return_info", return_info), check_bool("k_diffusion_rng", k_diffusion_rng)
    extra_args = extra_args or {}
    t_start, t_end = _time(torch.tensor(sigma_max)), _time(torch.tensor(sigma_min))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = PIDStepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    s, x_prev = t_start, x
    rejected = 0  # attempts rejected since the last accepted step

    def unreachable(what: str, also: str = "") -> None:
        raise RuntimeError(
            f"dpm_adaptive {what} at sigma={float(_sigma(s)):.6g} (step size h={pid.h:.3g} in log sigma): the solver "
            f"cannot meet rtol={rtol}, atol={atol} with accept_safety={accept_safety}; raise rtol or atol, or lower "
            f"accept_safety{also}")

    # an attempt is a step of its model calls: the outputs of the attempt so far are what its last lincombs read
    calls = ModelCalls(model, extra_args, lambda attempt, label: f"dpm_adaptive attempt {attempt} ({label})")

    def denoise(u: Tensor, sigma: float) -> Tensor:
        out = calls.call(u, info["steps"], f"sigma={sigma:.6g}", x.new_full((x.shape[0],), sigma))
        pbar.update()
        return out

    def lincomb(inputs: list[Tensor], weights: list[float]) -> Tensor:
        return ops.lincomb(inputs, torch.tensor(weights, dtype=torch.float64 if x.dtype == torch.float64
                                                else torch.float32, device=x.device))

    with tqdm(disable=disable) as pbar:
        while s < t_end - 1e-5:
            t = torch.minimum(t_end, s + pid.h)
            if not t > s:  # sync-ok: a host tensor; the step vanished in float32 (its coefficients would be NaN)
                if not info["steps"]:
                    raise ValueError(f"h_init={h_init} is below the float32 resolution of the time t = -log sigma at "
                                     f"sigma_max={float(_sigma(s)):.6g}: raise h_init")
                unreachable("shrank the step below the float32 resolution of its time grid")
            t_, sigma_up = ancestral_times(s, t, t_end, eta)
            high = dpm_solver_step(order, s, t_)
            low = dpm_solver_step(order - 1, s, t_, r1=1 / 3)  # order 3: shares the high step's first stage
            denoised = denoise(x, high.sigmas[0])
            if order == 2:
                x_low = lincomb([x, denoised], low.final)
                u1 = lincomb([x, denoised], high.stages[0])
                x_high = lincomb([x, denoised, u1, denoise(u1, high.sigmas[1])], high.final)
            else:
                u1 = lincomb([x, denoised], high.stages[0])
                denoised_1 = denoise(u1, high.sigmas[1])
                x_low = lincomb([x, denoised, u1, denoised_1], low.final)
                u2 = lincomb([x, denoised, u1, denoised_1], high.stages[1])
                x_high = lincomb([x, denoised, u2, denoise(u2, high.sigmas[2])], high.final)
            delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            if not torch.isfinite(error):  # sync-ok: the controller reads the error on the host anyway
                raise FloatingPointError(f"dpm_adaptive: non-finite error estimate at sigma={float(_sigma(s)):.6g} "
                                         "(the model returned NaN or inf)")
            if pid.propose_step(error):
                x_prev = x_low
                if eta or k_diffusion_rng:
                    if noise_sampler:
                        z = checked_noise(noise_sampler(_sigma(s), _sigma(t)), x.shape, x.device,
                                          f"dpm_adaptive step at sigma={float(_sigma(s)):.6g}")
                        if not torch.isfinite(z).all():  # sync-ok: the loop reads the error on the host anyway
                            raise FloatingPointError(f"noise_sampler returned non-finite values at sigma="
                                                     f"{float(_sigma(s)):.6g}")
                    else:
                        z = torch.randn_like(x)
                    x = lincomb([x_high, z], [1.0, float(sigma_up * s_noise)]) if eta else x_high
                else:
                    x = x_high
                s = t
                info["n_accept"] += 1
                rejected = 0
            else:
                info["n_reject"] += 1
                rejected += 1
                if rejected >= max_rejects:
                    unreachable(f"rejected {rejected} attempts in a row", " (or raise max_rejects)")
            info["nfe"] += order
            info["steps"] += 1
            if info["steps"] >= max_attempts and s < t_end - 1e-5:
                raise RuntimeError(
                    f"dpm_adaptive made {info['steps']} attempts ({info['n_accept']} accepted) and is at "
                    f"sigma={float(_sigma(s)):.6g}, not yet at sigma_min={sigma_min:g}: the step-size controller "
                    f"(pcoeff={pcoeff}, icoeff={icoeff}, dcoeff={dcoeff}, accept_safety={accept_safety}) keeps its "
                    f"steps small; use the defaults (0, 1, 0), looser rtol / atol, or raise max_attempts")
            if callback is not None:
                callback({"x": x, "i": info["steps"] - 1, "t": s, "t_up": s, "denoised": denoised, "error": error,
                          "h": pid.h, **info, "sigma": _sigma(s), "sigma_hat": _sigma(s)})
    return (x, info) if return_info else x
