"""Few-step samplers of consistency-distilled epsilon models on a DDPM's integer timesteps, as diffusers' schedulers:

- LCM (Luo et al. 2023, "Latent Consistency Models", Algorithm 3): the consistency function with the boundary
  scalings f(x, t) = c_skip(t) x + c_out(t) x0(x, eps, t) (c_skip = s^2 / ((k t)^2 + s^2), c_out = k t /
  sqrt((k t)^2 + s^2), s = sigma_data = 0.5, k = timestep_scaling), then re-noised to the next timestep,
  x' = sqrt(a') f + sqrt(1 - a') z; the last step returns f.
- TCD (Zheng et al. 2024, "Trajectory Consistency Distillation", sec. 4.4 strategic stochastic sampling): the
  prediction taken to s = floor((1 - gamma) t') on the trajectory, x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps, then
  forward-noised to t', x' = sqrt(a'/a_s) x_s + sqrt(1 - a'/a_s) z; gamma = 0 is deterministic, the last step
  returns x_s (at s = 0).

Each step is one model call and one lincomb on [x, eps(, z)]; the timesteps are given (the scheduler's), not derived."""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import check_alphas_cumprod
from ..checks import check_real
from ..analytic_dpm import check_timesteps
from .base import Solver
from .run import Run

SIGMA_DATA = 0.5  # LCMScheduler's boundary-condition sigma_data


class TimestepSolver(Solver):
    """A solver over given decreasing integer timesteps of a DDPM with `alphas_cumprod`, its model called as
    eps(x, t[B]); step i goes from timesteps[i] to timesteps[i + 1] (the last to the data)."""

    model_output = "eps"
    schedule_kind = "timesteps"

    def __init__(self, alphas_cumprod: Tensor):
        self.alphas_cumprod = check_alphas_cumprod(alphas_cumprod).detach().to("cpu", torch.float64)

    def graph_key(self) -> tuple:
        return (type(self).__name__, self.stochastic)

    def check_schedule(self, timesteps: Tensor) -> None:
        check_timesteps("timesteps", timesteps, len(self.alphas_cumprod), order="decreasing")

    def num_steps(self, timesteps: Tensor) -> int:
        return len(timesteps)

    def ends_at_zero(self, schedule: Tensor) -> bool:
        return False  # integer timesteps: the last step is the solver's own

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        eps = run.call(x, i, "timestep")
        if run.callback is not None:
            run.callback({"x": x, "i": i, "timestep": run.schedule[i], "denoised": run.lincomb("x0", i, x, eps)})
        if self.stochastic and i < run.n_steps - 1:
            return run.lincomb("update", i, x, eps, run.noise(i))
        return run.lincomb("update", i, x, eps)

    def x0_row(self, a_t: Tensor) -> Tensor:
        """x0 = (x - sqrt(1 - a) eps) / sqrt(a) on [x, eps]."""
        return torch.stack([a_t.rsqrt(), -(1 - a_t).sqrt() / a_t.sqrt()], dim=1)


class LCM(TimestepSolver):
    """LCMScheduler's step: f = c_skip x + c_out x0, x' = sqrt(a_{t'}) f + sqrt(1 - a_{t'}) z (the last step: f),
    one lincomb on [x, eps, z]."""

    name, label, paper = "lcm", "LCM", "Luo et al. 2023 (Latent Consistency Models), Algorithm 3"
    stochastic = True  # re-noises between steps (a 1-step run draws nothing)

    def __init__(self, alphas_cumprod: Tensor, timestep_scaling: float = 10.0):
        super().__init__(alphas_cumprod)
        self.timestep_scaling = check_real("timestep_scaling", timestep_scaling, above=0)

    def tables(self, timesteps: Tensor) -> dict[str, Tensor]:
        t = timesteps.long()
        a_t = self.alphas_cumprod[t]
        a_next = torch.cat([self.alphas_cumprod[t[1:]], a_t[-1:]])  # unread at the last step
        scaled = t.double() * self.timestep_scaling
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
        x0 = self.x0_row(a_t)
        f = torch.stack([c_skip + c_out * x0[:, 0], c_out * x0[:, 1]], dim=1)  # the consistency function on [x, eps]
        last = torch.arange(len(t)) == len(t) - 1
        scale = torch.where(last, 1.0, a_next.sqrt())
        noise = torch.where(last, 0.0, (1 - a_next).sqrt())
        return {"timestep": t, "x0": x0, "update": torch.cat([f * scale[:, None], noise[:, None]], dim=1)}


class TCD(TimestepSolver):
    """TCDScheduler's step with gamma (its `eta`): x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps at s = floor((1 - gamma)
    t') (t' = 0 after the last step), then with gamma > 0 (not on the last step) x' = sqrt(a_{t'} / a_s) x_s +
    sqrt(1 - a_{t'} / a_s) z; one lincomb on [x, eps(, z)]."""

    name, label, paper = "tcd", "TCD", "Zheng et al. 2024 (Trajectory Consistency Distillation)"
    noise_option = "gamma"

    def __init__(self, alphas_cumprod: Tensor, gamma: float = 0.3):
        super().__init__(alphas_cumprod)
        self.gamma = check_real("gamma", gamma, at_least=0)
        if self.gamma > 1:
            raise ValueError(f"gamma must be in [0, 1] (the share of each step taken by re-noising), got {gamma}")

    def tables(self, timesteps: Tensor) -> dict[str, Tensor]:
        t = timesteps.long()
        t_next = torch.cat([t[1:], t.new_zeros(1)])
        # floor((1 - gamma) t') in float32, as TCDScheduler computes it
        s = torch.floor((1 - self.gamma) * t_next.to(torch.float32)).long()
        a_t, a_next, a_s = self.alphas_cumprod[t], self.alphas_cumprod[t_next], self.alphas_cumprod[s]
        x0 = self.x0_row(a_t)
        to_s = torch.stack([a_s.sqrt() * x0[:, 0], a_s.sqrt() * x0[:, 1] + (1 - a_s).sqrt()], dim=1)
        last = torch.arange(len(t)) == len(t) - 1
        noisy = (~last) & (self.gamma > 0)
        scale = torch.where(noisy, (a_next / a_s).sqrt(), 1.0)
        noise = torch.where(noisy, (1 - a_next / a_s).clamp_min(0).sqrt(), 0.0)
        return {"timestep": t, "x0": x0, "update": torch.cat([to_s * scale[:, None], noise[:, None]], dim=1)}
