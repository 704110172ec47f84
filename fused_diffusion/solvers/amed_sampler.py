"""AMED-Solver (Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps", Alg. 1)
with the analytic first step (AFS, sec. 3.3)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .. import ops
from ..checks import check_bool, check_callable, check_real
from .base import Solver
from .run import Run

# predictor(x, sigma[B], sigma_next[B], analytic) -> r [B] or (r, scale_dir, scale_time), each [B]. `analytic` says
# the step's direction came from AFS, not from a model call at sigma (so the model's features of this step are absent).
Predictor = Callable[[Tensor, Tensor, Tensor, bool], "Tensor | tuple[Tensor, Tensor, Tensor]"]


def predict(predictor: Predictor, x: Tensor, sigma: Tensor, sigma_next: Tensor, analytic: bool,
            scale_dir: float = 1.0, scale_time: float = 1.0) -> tuple[Tensor, Tensor | float, Tensor | float]:
    """(r, scale_dir, scale_time) from a predictor's output; scales it does not predict take the given values."""
    prediction = predictor(x, sigma, sigma_next, analytic)
    if isinstance(prediction, tuple):
        if len(prediction) != 3:
            raise ValueError(f"an AMED predictor returns r or (r, scale_dir, scale_time); got {len(prediction)} values")
        for name, value in zip(("r", "scale_dir", "scale_time"), prediction):
            _check_prediction(name, value, x)
        return prediction
    _check_prediction("r", prediction, x)
    return prediction, scale_dir, scale_time


def _check_prediction(name: str, value: object, x: Tensor) -> None:
    """A predicted value: a real number, or a float tensor of shape [] or [B] on x's device (metadata only: no host
    sync; the run checks tensors for NaN after the loop)."""
    if not isinstance(value, Tensor):
        check_real(f"the AMED predictor's {name}", value)
        return
    if not value.is_floating_point():
        raise TypeError(f"the AMED predictor's {name} must be a floating-point tensor, got "
                        f"{getattr(value, 'dtype', type(value).__name__)}")
    if value.shape not in ((), (x.shape[0],)):
        raise ValueError(f"the AMED predictor's {name} must have shape [] or [{x.shape[0]}] (one per sample), got "
                         f"{tuple(value.shape)}")
    if value.device != x.device:
        raise ValueError(f"the AMED predictor's {name} is on {value.device}, expected x's device {x.device}")


def amed_coefficients(sigma: Tensor, sigma_next: Tensor, r, scale_dir, scale_time, analytic: bool):
    """The step's numbers, for host float64 tables ([n]) and per-sample device rows ([B]) alike:
    t_mid = t_next^r t^(1-r); x_mid = x + (t_mid - t) d, with d = (x - D)/t, or d = x / sqrt(1 + t^2) for AFS;
    x_next = x + c (t_next - t) (x_mid - D(x_mid, s t_mid)) / t_mid, c = scale_dir, s = scale_time.
    Returns (model sigma at the midpoint, midpoint row on [x, D] (AFS: [x]), final row on [x, x_mid, D_mid])."""
    t_mid = sigma_next**r * sigma ** (1 - r)
    if analytic:
        midpoint = torch.stack([1 + (t_mid - sigma) / (1 + sigma**2).sqrt(), torch.zeros_like(sigma)], dim=-1)
    else:
        midpoint = torch.stack([t_mid / sigma, 1 - t_mid / sigma], dim=-1)
    slope = scale_dir * (sigma_next - sigma) / t_mid
    final = torch.stack([torch.ones_like(slope), slope, -slope], dim=-1)
    return scale_time * t_mid, midpoint, final


def check_predictor(predictor: object) -> object:
    if predictor is None:
        return None
    return check_callable("predictor", predictor, "predictor(x, sigma, sigma_next, analytic) -> r or (r, scale_dir, "
                                                  "scale_time)", 4)


class AMED(Solver):
    """One midpoint model call per step; the midpoint exponent r (and the scales) come from the learned predictor,
    or r = 1/2 (geometric mean, DPM-Solver-2's midpoint) and the given scales without one. With `afs` the first
    step's direction is the analytic x / sqrt(1 + sigma^2) (no model call). The step to sigma = 0 is Euler."""

    name, label, paper = "amed", "AMED", "Zhou et al. 2024 (AMED-Solver)"
    calls_per_step = 2

    def __init__(self, predictor: Predictor | None = None, afs: bool = True, scale_dir: float = 1.0,
                 scale_time: float = 1.0):
        self.predictor, self.afs = check_predictor(predictor), check_bool("afs", afs)
        self.scale_dir, self.scale_time = check_real("scale_dir", scale_dir), check_real("scale_time", scale_time)

    def graph_key(self) -> tuple:
        # the predictor by identity (its weights and hooks are watched through `modules`)
        return (type(self).__name__, id(self.predictor), self.afs, self.scale_dir, self.scale_time)

    def calls(self, n_steps: int, to_zero: bool = True) -> int:
        return super().calls(n_steps, to_zero) - int(self.afs)  # AFS: the first step's direction costs no call

    def modules(self) -> list[nn.Module]:
        return [self.predictor] if isinstance(self.predictor, nn.Module) else []

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:].clone()
        if sigmas[-1] == 0:
            sigma_next[-1] = sigma[-1] / 2  # placeholder: the step to 0 is Euler and never reads its row
        sigma_mid, midpoint, final = amed_coefficients(sigma, sigma_next, 0.5, self.scale_dir, self.scale_time, False)
        if self.afs:
            _, afs_row, _ = amed_coefficients(sigma[:1], sigma_next[:1], 0.5, 1.0, 1.0, True)
            midpoint[0] = afs_row[0]
        last = 1 - sigma[-1:] / (1 + sigma[-1:] ** 2).sqrt()  # AFS Euler step to 0 when n = 1
        return {"sigma": sigma, "sigma_next": sigmas[1:], "sigma_mid": sigma_mid, "midpoint": midpoint,
                "final": final, "afs_euler": torch.stack([last, torch.zeros_like(last)], dim=1)}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        analytic = self.afs and i == 0
        last = run.lands_on_zero(i)
        if analytic and last:
            return run.lincomb("afs_euler", 0, x)
        if not analytic:
            denoised = run.call(x, i, "sigma")
            run.report(i, x, denoised)
            if last:
                return denoised
        if self.predictor is None:
            x_mid = run.lincomb("midpoint", i, x) if analytic else run.lincomb("midpoint", i, x, denoised)
            denoised_mid = run.call(x_mid, i, "sigma_mid")
            return run.lincomb("final", i, x, x_mid, denoised_mid)
        return self.predicted_step(run, i, x, None if analytic else denoised)

    def predicted_step(self, run: Run, i: int, x: Tensor, denoised: Tensor | None) -> Tensor:
        """The step with per-sample (r, scale_dir, scale_time) from the predictor: per-batch lincomb rows."""
        sigma, sigma_next = run.value("sigma", i), run.value("sigma_next", i)
        r, scale_dir, scale_time = predict(self.predictor, x, sigma, sigma_next, denoised is None, self.scale_dir,
                                           self.scale_time)
        run.watch_prediction(i, r, scale_dir, scale_time)
        sigma_mid, midpoint, final = amed_coefficients(sigma, sigma_next, r, scale_dir, scale_time, denoised is None)
        x_mid = ops.lincomb([x], midpoint[:, :1]) if denoised is None else ops.lincomb([x, denoised], midpoint)
        denoised_mid = run.call_with(x_mid, i, "predicted midpoint", sigma_mid)
        return ops.lincomb([x, x_mid, denoised_mid], final)
