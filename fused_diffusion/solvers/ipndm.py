"""iPNDM (improved PNDM: Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", the
DEIS paper) and the AMED-Plugin on it (Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around
5 Steps"), as `ipndm_sampler` in zju-pi/diff-sampler's amed-solver-main/solvers_amed.py."""
from __future__ import annotations

import operator

import torch
from torch import Tensor, nn

from .. import ops
from ..checks import check_bool, check_real
from .amed_sampler import Predictor, check_predictor, predict
from .base import Solver
from .run import Run

# Adams-Bashforth weights of orders 1..4 on the derivative history, newest first (equal steps assumed, as iPNDM)
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ab_rows(orders: list[int]) -> Tensor:
    """One row of Adams-Bashforth weights per order, zero-padded to 4 columns: [len(orders), 4] float64."""
    rows = torch.zeros(len(orders), 4, dtype=torch.float64)
    for k, order in enumerate(orders):
        rows[k, :order] = torch.tensor(ADAMS_BASHFORTH[order], dtype=torch.float64)
    return rows


class IPNDM(Solver):
    """Multistep Adams-Bashforth on d = dx/dsigma = (x - D(x, sigma)) / sigma with the lower-order warm start of
    iPNDM: the order is min(max_order, 1 + the number of stored derivatives), so step 0 is Euler. With t = sigma:

        x_{i+1} = x_i + (t_{i+1} - t_i) sum_j c_j d_{i-j}

    c the Adams-Bashforth weights (ADAMS_BASHFORTH, the equal-step ones whatever the schedule, as iPNDM). A step is
    one model call and two lincombs: d on [x, D], then the update on [x, d, d_{i-1}, ...]. With `afs` the first
    step's direction is the analytic d_0 = x / sqrt(1 + t_0^2) (no model call). A schedule ending at 0 takes the same
    step to 0 (with order 1 it lands on D).

    With a `predictor` (the AMED protocol of solvers/amed_sampler.py) each step is the AMED-Plugin: (r, scale_dir,
    scale_time) predicted per sample, t_mid = t_{i+1}^r t_i^(1-r), then
        x_mid = x_i + (t_mid - t_i) AB(d_i),  push d_i,
        d_mid = (x_mid - D(x_mid, scale_time t_mid)) / t_mid,
        x_{i+1} = x_mid + scale_dir (t_{i+1} - t_mid) AB(d_mid),  push d_mid,
    both derivatives going to the same history, as the AMED code (so the second half reads d_i as its newest past
    derivative and the order rises by one after each half). The step to sigma = 0 has no midpoint: it is the plain
    step above. With max_order=1 nothing is stored and the plugin is the AMED-Plugin on Euler (two Euler half
    steps, the second from x_mid; the AMED code itself fails for max_order=1 on its history buffer).
    """

    name, label, paper = "ipndm", "iPNDM", "Zhang & Chen 2023 (iPNDM); Zhou et al. 2024 (AMED-Plugin)"

    def __init__(self, max_order: int = 4, afs: bool = False, predictor: Predictor | None = None,
                 scale_dir: float = 1.0, scale_time: float = 1.0):
        try:
            order = None if isinstance(max_order, bool) else operator.index(max_order)
        except TypeError:
            order = None
        if order is None or not 1 <= order <= 4:
            raise ValueError(f"max_order must be an integer from 1 to 4, got {max_order!r}")
        self.max_order, self.afs, self.predictor = order, check_bool("afs", afs), check_predictor(predictor)
        self.scale_dir, self.scale_time = check_real("scale_dir", scale_dir), check_real("scale_time", scale_time)
        # derivatives a step reads besides its own: run.history keeps the newest max_order - 1 (none for order 1)
        self.history = order - 1

    def graph_key(self) -> tuple:
        # the predictor by identity (its weights and hooks are watched through `modules`)
        return (type(self).__name__, self.max_order, self.afs, id(self.predictor), self.scale_dir, self.scale_time)

    @property
    def calls_per_step(self) -> int:
        return 1 if self.predictor is None else 2  # the AMED-Plugin adds the midpoint's call

    def calls(self, n_steps: int, to_zero: bool = True) -> int:
        return super().calls(n_steps, to_zero) - int(self.afs)  # AFS: the first step's derivative costs no call

    def modules(self) -> list[nn.Module]:
        return [self.predictor] if isinstance(self.predictor, nn.Module) else []

    def check_schedule(self, sigmas: Tensor) -> None:
        super().check_schedule(sigmas)
        host = sigmas.detach().to("cpu", torch.float64)  # sync-ok: validated once, before the loop
        repeats = host[1:] == host[:-1]
        if repeats.any():  # a zero-length step would still push its derivative into the equal-step history
            i = int(repeats.nonzero()[0])
            raise ValueError(f"ipndm needs strictly decreasing sigmas: sigmas[{i}] = sigmas[{i + 1}] = "
                             f"{host[i].item()} (its Adams-Bashforth weights assume equal steps; a repeat is one of 0)")

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        n, top = len(sigma), self.max_order
        to_d = torch.stack([1 / sigma, -1 / sigma], dim=1)  # d = (x - D) / t on [x, D]
        if self.afs:
            to_d[0, 0], to_d[0, 1] = 1 / (1 + sigma[0] ** 2).sqrt(), 0.0  # d_0 = x / sqrt(1 + t_0^2), on [x]
        ones = torch.ones(n, 1, dtype=torch.float64)
        h = (sigma_next - sigma)[:, None]
        # plain: i derivatives stored before step i; plugin: 2i (d and d_mid per step), 2i + 1 after the first half
        plain = ab_rows([min(top, i + 1) for i in range(n)])
        ab_mid = ab_rows([min(top, 2 * i + 1) for i in range(n)])
        ab_next = ab_rows([min(top, 2 * i + 2) for i in range(n)])
        return {
            "sigma": sigma,
            "sigma_next": sigma_next,
            "to_d": to_d,
            "update": torch.cat([ones, h * plain], dim=1),  # on [x, d_i, d_{i-1}, ...]
            "plugin_update": torch.cat([ones, h * ab_mid], dim=1),  # the plugin's step to 0 (its own history)
            "ab_mid": ab_mid,
            "ab_next": ab_next,
        }

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        analytic = self.afs and i == 0
        if analytic:
            d = run.lincomb("to_d", i, x)
        else:
            denoised = run.call(x, i, "sigma")
            run.report(i, x, denoised)
            d = run.lincomb("to_d", i, x, denoised)
        if self.predictor is None or run.lands_on_zero(i):
            table = "update" if self.predictor is None else "plugin_update"
            x_next = run.lincomb(table, i, x, d, *reversed(run.history))
            self.remember(run, d)
            return x_next
        return self.plugin_step(run, i, x, d, analytic)

    def remember(self, run: Run, d: Tensor) -> None:
        if self.history:
            run.history.append(d)

    def plugin_step(self, run: Run, i: int, x: Tensor, d: Tensor, analytic: bool) -> Tensor:
        """The AMED-Plugin step: per-sample rows for the midpoint, the midpoint's derivative and the update."""
        sigma, sigma_next = run.value("sigma", i), run.value("sigma_next", i)
        r, scale_dir, scale_time = predict(self.predictor, x, sigma, sigma_next, analytic, self.scale_dir,
                                           self.scale_time)
        run.watch_prediction(i, r, scale_dir, scale_time)
        t_mid = sigma_next**r * sigma ** (1 - r)
        ones = torch.ones_like(t_mid)[:, None]
        past = list(reversed(run.history))
        rows = torch.cat([ones, (t_mid - sigma)[:, None] * run.tables["ab_mid"][i, : 1 + len(past)]], dim=1)
        x_mid = ops.lincomb([x, d, *past], rows)
        self.remember(run, d)
        denoised_mid = run.call_with(x_mid, i, "predicted midpoint", scale_time * t_mid)
        inv = 1 / t_mid
        d_mid = ops.lincomb([x_mid, denoised_mid], torch.stack([inv, -inv], dim=1))
        past = list(reversed(run.history))
        step = scale_dir * (sigma_next - t_mid)
        rows = torch.cat([ones, step[:, None] * run.tables["ab_next"][i, : 1 + len(past)]], dim=1)
        x_next = ops.lincomb([x_mid, d_mid, *past], rows)
        self.remember(run, d_mid)
        return x_next
