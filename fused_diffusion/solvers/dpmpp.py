"""DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models")
in k-diffusion's forms: 2M (Algorithm 2), 2S ancestral (Algorithm 1 with r = 1/2, then ancestral noise), the
stochastic single-step "SDE" variant, and the multistep SDE variants 2M SDE and 3M SDE. With t = -log sigma and
h = t_{i+1} - t_i, every update is one lincomb whose inputs are x, this and earlier denoised outputs and the noise."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_eta, check_real
from .base import Solver
from .euler import Ancestral, ancestral_sigmas
from .run import Run


def _previous(values: Tensor, k: int) -> Tensor:
    """values shifted by k steps (row i holds row i - k); the first k rows hold 1, never read."""
    return torch.cat([values.new_ones(k), values])[: len(values)]  # schedules shorter than k steps too


def _unused_on_zero(table: Tensor, sigma_next: Tensor) -> Tensor:
    """Zeroes the rows of steps to sigma = 0, which return D and never read them (so a repeated sigma just before
    the final 0, finite in k-diffusion, is not refused for an unread NaN)."""
    table[sigma_next == 0] = 0.0
    return table


def _log_step(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """h = log(sigma / sigma_next); 1 on a step to 0 (whose row is never read: that step returns D)."""
    return torch.where(sigma_next > 0, (sigma / sigma_next.clamp_min(1e-300)).log(), 1.0)


class DPMpp2M(Solver):
    """With r = h_{i-1} / h: x_{i+1} = (sigma_{i+1}/sigma_i) x - expm1(-h) ((1 + 1/(2r)) D_i - 1/(2r) D_{i-1});
    the first step is first order (D_{i-1} absent), the last one lands on D. One lincomb on [x, D_i, D_{i-1}]."""

    name, label, paper = "dpmpp_2m", "DPM++(2M)", "Lu et al. 2022b (DPM-Solver++), Algorithm 2"
    history = 1

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        ratio = sigma_next / sigma
        weight = 1 - ratio  # = -expm1(-h)
        h = _log_step(sigma, sigma_next)
        half_inv_r = h / (2 * _previous(h, 1))
        half_inv_r[0] = 0.0  # first order
        coeffs = torch.stack([ratio, weight * (1 + half_inv_r), -weight * half_inv_r], dim=1)
        return {"sigma": sigma, "dpmpp_2m": _unused_on_zero(coeffs, sigma_next)}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.lands_on_zero(i):
            return denoised
        if i == 0:
            x = run.lincomb("dpmpp_2m", i, x, denoised)
        else:
            x = run.lincomb("dpmpp_2m", i, x, denoised, run.history[-1])
        run.history.append(denoised)
        return x


class DPMpp2SAncestral(Ancestral):
    """k-diffusion's sample_dpmpp_2s_ancestral: a DPM-Solver++(2S) step to sigma_down (midpoint
    sigma_mid = sqrt(sigma sigma_down)), x_mid = (sigma_mid/sigma) x + (1 - sigma_mid/sigma) D, then
    x = (sigma_down/sigma) x + (1 - sigma_down/sigma) D_mid + s_noise sigma_up z. Where sigma_down = 0 the step is
    Euler to 0, x = D (+ s_noise sigma_up z unless sigma_next = 0), as k-diffusion."""

    name, label = "dpmpp_2s_ancestral", "DPM++(2S) ancestral"
    paper = "Lu et al. 2022b (DPM-Solver++), Algorithm 1 + ancestral noise"
    calls_per_step = 2

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, self.eta)
        sigma_mid = (sigma * sigma_down).sqrt()
        noise = self.s_noise * sigma_up
        return {
            "sigma": sigma,
            "sigma_mid": sigma_mid,
            "midpoint": torch.stack([sigma_mid / sigma, 1 - sigma_mid / sigma], dim=1),
            "update": torch.stack([sigma_down / sigma, 1 - sigma_down / sigma, noise], dim=1),
            "to_zero": torch.stack([torch.ones_like(noise), noise], dim=1),
        }

    def structure(self, host: dict[str, Tensor]) -> tuple[int, ...]:
        return tuple((host["sigma_mid"] == 0).nonzero().flatten().tolist())  # the Euler-to-0 steps

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.plan.host["sigma_mid"][i] == 0:  # sigma_down = 0: Euler to 0 lands on D
            if run.lands_on_zero(i):
                return denoised
            return run.lincomb("to_zero", i, denoised, run.noise(i))
        x_mid = run.lincomb("midpoint", i, x, denoised)
        denoised_mid = run.call(x_mid, i, "sigma_mid")
        return run.noisy_lincomb("update", i, x, denoised_mid, noise=self.eta > 0)


class DPMppSDE(Solver):
    """k-diffusion's sample_dpmpp_sde: a stochastic DPM-Solver++ step with an intermediate point at
    sigma_s = sigma^(1-r) sigma_next^r. Stage 1 goes ancestrally from sigma to sigma_s on [x, D, z1]; stage 2 from
    sigma to sigma_next on [x, D, D_s, z2], with D_d = (1 - 1/(2r)) D + 1/(2r) D_s. The step to 0 is x = D.
    Each stage draws its own noise, noise_sampler(sigma, sigma_s) and noise_sampler(sigma, sigma_next)."""

    name, label, paper = "dpmpp_sde", "DPM++ SDE", "Lu et al. 2022b (DPM-Solver++), k-diffusion's stochastic form"
    calls_per_step = 2
    noise_option = "eta"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
        self.eta, self.s_noise, self.r = check_eta(eta), check_real("s_noise", s_noise), check_real("r", r)
        if not 0 < self.r <= 1:
            raise ValueError(f"r must be in (0, 1], got {r}")

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        # in t = -log sigma as k-diffusion, so a repeated sigma gives sigma_s = sigma exactly (h = 0)
        t, t_next = sigmas[:-1].log().neg(), sigmas[1:].log().neg()
        s = t + (t_next - t) * self.r
        sigma, sigma_s, sigma_next = t.neg().exp(), s.neg().exp(), t_next.neg().exp()
        fac = 1 / (2 * self.r)
        down_1, up_1 = ancestral_sigmas(sigma, sigma_s, self.eta)
        down_2, up_2 = ancestral_sigmas(sigma, sigma_next, self.eta)
        keep_1, keep_2 = -torch.expm1(down_1.log() - sigma.log()), -torch.expm1(down_2.log() - sigma.log())
        stage_1 = torch.stack([down_1 / sigma, keep_1, self.s_noise * up_1], dim=1)
        stage_2 = torch.stack([down_2 / sigma, keep_2 * (1 - fac), keep_2 * fac, self.s_noise * up_2], dim=1)
        return {
            "sigma": sigmas[:-1],
            "sigma_s": sigma_s,
            "stage_1": _unused_on_zero(stage_1, sigmas[1:]),
            "stage_2": _unused_on_zero(stage_2, sigmas[1:]),
        }

    def noise_sigmas(self, schedule: Tensor) -> dict[str, Tensor]:
        """(sigma_fn(t), sigma_fn(s)) and (sigma_fn(t), sigma_fn(t_next)) as k-diffusion computes them, one scalar
        at a time in the schedule's dtype (vectorised kernels may round differently)."""
        stage_1, stage_2 = [], []
        for i in range(len(schedule) - 1):
            t, t_next = schedule[i].log().neg(), schedule[i + 1].log().neg()
            s = t + (t_next - t) * self.r
            stage_1.append(torch.stack([t.neg().exp(), s.neg().exp()]))
            stage_2.append(torch.stack([t.neg().exp(), t_next.neg().exp()]))
        return {"stage_1": torch.stack(stage_1), "stage_2": torch.stack(stage_2)}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.lands_on_zero(i):
            return denoised
        x_s = run.noisy_lincomb("stage_1", i, x, denoised, noise=self.eta > 0, at="stage_1")
        denoised_s = run.call(x_s, i, "sigma_s")
        return run.noisy_lincomb("stage_2", i, x, denoised, denoised_s, noise=self.eta > 0, at="stage_2")


class MultistepSDE(Solver):
    """The step shared by the multistep SDE solvers: D at sigma, then one lincomb `update_k` on [x, D, D_1, ...,
    z] with as many earlier D as exist (k - 1, up to `history`); noise only with eta > 0 (k-diffusion draws none at
    eta = 0); the step to 0 returns D."""

    history = 1
    noise_option = "eta"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta, self.s_noise = check_eta(eta), check_real("s_noise", s_noise)

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.lands_on_zero(i):
            x = denoised
        else:
            earlier = list(run.history)[::-1][: min(i, self.history)]  # D_1, D_2, ... as far as they exist
            noise = [run.noise(i)] if self.eta else []
            x = run.lincomb(f"update_{len(earlier) + 1}", i, x, denoised, *earlier, *noise)
        run.history.append(denoised)
        return x


def _update_tables(rows: dict[int, Tensor], sigma_next: Tensor) -> dict[str, Tensor]:
    """`update_k` tables from the rows of a step with k - 1 earlier D: step k - 1 reads update_k, the last k from there
    on; the rows no step reads are zeroed (so an unread NaN is not refused)."""
    steps, last = torch.arange(len(sigma_next)), max(rows)
    tables = {}
    for k, table in rows.items():
        read = steps >= k - 1 if k == last else steps == k - 1
        tables[f"update_{k}"] = _unused_on_zero(torch.where(read[:, None], table, 0.0), sigma_next)
    return tables


class DPMpp2MSDE(MultistepSDE):
    """k-diffusion's sample_dpmpp_2m_sde (the SDE form of DPM-Solver++(2M), Lu et al. 2022b sec. 5): with
    eta_h = eta h, x = (sigma_next/sigma) e^(-eta_h) x + (1 - e^(-h - eta_h)) D + c (D - D_prev)
    + s_noise sigma_next sqrt(1 - e^(-2 eta_h)) z, where r = h_prev / h and c = (1 - e^(-h - eta_h)) / (2r) for the
    midpoint variant, ((1 - e^(-h - eta_h)) / (-h - eta_h) + 1) / r for heun; the first step has no correction, the
    step to 0 is x = D. One lincomb on [x, D, D_prev, z]."""

    name, label, paper = "dpmpp_2m_sde", "DPM++(2M) SDE", "Lu et al. 2022b (DPM-Solver++), sec. 5"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint"):
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
        super().__init__(eta, s_noise)
        self.solver_type = solver_type

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        h = _log_step(sigma, sigma_next)
        eta_h = self.eta * h
        weight = -torch.expm1(-h - eta_h)
        inv_r = h / _previous(h, 1)
        if self.solver_type == "midpoint":
            correction = 0.5 * weight * inv_r
        else:
            correction = (weight / (-h - eta_h) + 1) * inv_r
        noise = self.s_noise * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt()
        decay = sigma_next / sigma * torch.exp(-eta_h)
        rows = {1: torch.stack([decay, weight, noise], dim=1),
                2: torch.stack([decay, weight + correction, -correction, noise], dim=1)}
        return {"sigma": sigma, **_update_tables(rows, sigma_next)}


class DPMpp3MSDE(MultistepSDE):
    """k-diffusion's sample_dpmpp_3m_sde: with h_eta = (1 + eta) h,
    x = e^(-h_eta) x + (1 - e^(-h_eta)) D + phi_2 d1 - phi_3 d2 + s_noise sigma_next sqrt(1 - e^(-2 eta h)) z, where
    phi_2 = expm1(-h_eta)/h_eta + 1, phi_3 = phi_2/h_eta - 1/2 and d1, d2 are the first and second divided differences
    of D over the last three steps (r0 = h_1/h, r1 = h_2/h); the second step uses phi_2 (D - D_1)/r0 only, the first
    none, the step to 0 is x = D. One lincomb on [x, D, D_1, D_2, z] (as many D as the step has)."""

    name, label, paper = "dpmpp_3m_sde", "DPM++(3M) SDE", "Lu et al. 2022b (DPM-Solver++), k-diffusion's 3M SDE"
    history = 2

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        h = _log_step(sigma, sigma_next)
        h_eta = h * (self.eta + 1)
        phi_2 = torch.expm1(-h_eta) / h_eta + 1
        phi_3 = phi_2 / h_eta - 0.5
        r0, r1 = _previous(h, 1) / h, _previous(h, 2) / h
        zero = torch.zeros_like(h)
        # divided differences as weights on (D, D_1, D_2)
        d1_0 = torch.stack([1 / r0, -1 / r0, zero], dim=1)
        d1_1 = torch.stack([zero, 1 / r1, -1 / r1], dim=1)
        d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))[:, None]
        d2 = (d1_0 - d1_1) / (r0 + r1)[:, None]
        first = torch.stack([-torch.expm1(-h_eta), zero, zero], dim=1)
        denoised_weights = {1: first, 2: first + phi_2[:, None] * d1_0, 3: first + phi_2[:, None] * d1 - phi_3[:, None] * d2}
        decay = torch.exp(-h_eta)[:, None]
        noise = (self.s_noise * sigma_next * (-torch.expm1(-2 * h * self.eta)).sqrt())[:, None]
        rows = {k: torch.cat([decay, weights[:, :k], noise], dim=1) for k, weights in denoised_weights.items()}
        return {"sigma": sigma, **_update_tables(rows, sigma_next)}
