"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models")
with data prediction, as diffusers' UniPCMultistepScheduler (predict_x0=True, solver_type "bh1"/"bh2",
final_sigmas_type "zero"), in this library's EDM space: x = x0 + sigma eps, the model returns D(x, sigma)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from ..checks import check_bool, check_count, describe
from .base import Solver
from .run import Run

VARIANTS = ("bh1", "bh2")


class UniPC(Solver):
    """UniPC-p with data prediction: the paper's predictor UniP-p and corrector UniC-p in their B(h) forms. With
    lambda = -log sigma (VP's log(alpha_t / sigma_t) for the EDM sigma), h = lambda_t - lambda_s = log(sigma_s /
    sigma_t), hh = -h (the data-prediction sign) and the divided differences D1_k = (D_{s_k} - D_s) / r_k over the
    earlier points s_k, r_k = (lambda_{s_k} - lambda_s) / h (negative), the updates are (the paper's VP forms divided
    by alpha_t, since x_vp = x / sqrt(1 + sigma^2)):

        UniP-p:  x_t   = (sigma_t/sigma_s) x_s - expm1(hh) D_s - B(h) sum_{k<p} rho_k D1_k
        UniC-p:  x_t^c = (sigma_t/sigma_s) x_s - expm1(hh) D_s - B(h) (sum_{k<p} rho^c_k D1_k + rho^c_p (D_t - D_s))

    with B(h) = hh ("bh1", the paper's B_1(h) = h) or expm1(hh) ("bh2", B_2(h) = e^h - 1), and rho solving the
    order conditions sum_k rho_k r_k^(q-1) = b_q, b_q = q! hh phi_{q+1}(hh) / B(h) (phi the exponential-integrator
    phi functions; q = 1..p - 1 for UniP with the r_k, q = 1..p for UniC with the r_k and r_p = 1). UniP-2 takes
    rho = 1/2 and UniC-1 rho^c = 1/2 instead, as the paper's code and diffusers (UniP-2 with bh2 is then
    DPM-Solver++(2M)). UniC-p raises UniP-p's order of accuracy by one without an extra model call: D_t is the
    output at the predicted point, which the next UniP reads too.

    A step i: D_i = D(x_i, sigma_i) at the predicted point x_i (reported to the callback with D_i); for i > 0 with the
    corrector on, x_i becomes UniC from x_{i-1} (the corrected one) with step i - 1's order; then UniP of order
    p_i = min(order, i + 1, and n - i with lower_order_final) goes to sigma_{i+1}. Each is one lincomb, UniC on
    [x_{i-1}, D_i, D_{i-1}, ..., D_{i-p_{i-1}}] and UniP on [x_i, D_i, D_{i-1}, ..., D_{i-p_i+1}], reading its row of
    a host float64 table (the small linear solves for rho made there, once per schedule). The step to sigma = 0
    returns D_i: what diffusers' order-1 bh2 step to 0 gives exactly (its order-1 bh1 step there computes
    0 * inf = NaN, and a step of order >= 2 to 0 divides by r_k = 0: NaN, inf or a singular solve), so the corrector
    of that step, which cannot change its result, is not run.

    `disable_corrector` has diffusers' meaning: an index j leaves the point that step j predicts (x_{j+1})
    uncorrected. `corrector=False` disables UniC everywhere (UniP alone, order p).
    """

    name, label, paper = "unipc", "UniPC", "Zhao et al. 2023 (UniPC)"

    def __init__(self, order: int = 2, variant: str = "bh2", corrector: bool = True,
                 disable_corrector: Iterable[int] = (), lower_order_final: bool = True):
        self.order = check_count("order", order)
        if self.order > 3:
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if not isinstance(variant, str) or variant not in VARIANTS:
            raise ValueError(f"variant must be 'bh1' or 'bh2' (B(h) = h or expm1(h)), got {variant!r}")
        self.variant = variant
        self.corrector = check_bool("corrector", corrector)
        self.disable_corrector = check_step_indices("disable_corrector", disable_corrector)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        # UniC of step i reads D_{i-1} .. D_{i-p}; UniP reads D_{i-1} .. D_{i-p+1}
        self.history = self.order if self.corrector else self.order - 1

    def order_at(self, i: int, n: int) -> int:
        """UniP's order at step i of n: warm-up 1, 2, ... as outputs accumulate; with lower_order_final at most the
        number of steps left (diffusers' rule, whatever the final sigma)."""
        order = min(self.order, i + 1)
        return min(order, n - i) if self.lower_order_final else order

    def corrects(self, i: int) -> bool:
        """Whether step i runs UniC on its point (the result of step i - 1's predictor)."""
        return self.corrector and i > 0 and i - 1 not in self.disable_corrector

    def check_schedule(self, sigmas: Tensor) -> None:
        super().check_schedule(sigmas)
        host = sigmas.detach().to("cpu", torch.float64)  # sync-ok: validated once, before the loop
        repeats = host[1:] == host[:-1]
        if repeats.any():
            i = int(repeats.nonzero()[0])
            raise ValueError(f"unipc needs strictly decreasing sigmas: sigmas[{i}] = sigmas[{i + 1}] = "
                             f"{host[i].item()} is a step of h = 0, where UniPC's coefficients are 0/0 (diffusers "
                             "returns NaN there)")

    def tables(self, sigmas: Tensor) -> dict[str, Tensor]:
        n = len(sigmas) - 1
        s = sigmas.tolist()
        predictor = torch.zeros(n, self.order + 1, dtype=torch.float64)
        corrector = torch.zeros(n, self.order + 2, dtype=torch.float64)
        for i in range(n):
            if s[i + 1] == 0:
                continue  # the step to 0 returns D (only the last step can go to 0)
            predictor[i, : self.order_at(i, n) + 1] = unipc_row(s[i], s[i + 1], s[:i][::-1], self.order_at(i, n),
                                                                self.variant, correct=False)
            if self.corrects(i):
                order = self.order_at(i - 1, n)
                corrector[i, : order + 2] = unipc_row(s[i - 1], s[i], s[: i - 1][::-1], order, self.variant,
                                                      correct=True)
        return {"sigma": sigmas[:-1], "predictor": predictor, "corrector": corrector}

    def step(self, run: Run, i: int, x: Tensor) -> Tensor:
        denoised = run.call(x, i, "sigma")
        run.report(i, x, denoised)
        if run.lands_on_zero(i):
            return denoised
        earlier = list(run.history)[::-1]  # D_{i-1}, D_{i-2}, ...
        if self.corrects(i):
            x = run.lincomb("corrector", i, run.unipc_x, denoised, *earlier[: self.order_at(i - 1, run.n_steps)])
        # the (corrected) point UniC of the next step starts from; a run's own attribute, set before it is read
        run.unipc_x = x
        x = run.lincomb("predictor", i, x, denoised, *earlier[: self.order_at(i, run.n_steps) - 1])
        run.history.append(denoised)
        return x


def unipc_row(sigma_s: float, sigma_t: float, earlier: list[float], order: int, variant: str,
              correct: bool) -> Tensor:
    """One update's lincomb row from sigma_s to sigma_t (> 0), float64, as diffusers' multistep_uni_p_bh_update
    (correct=False: on [x_s, D_s, D_1, ..., D_{order-1}]) and multistep_uni_c_bh_update (correct=True: on
    [x_s, D_t, D_s, D_1, ..., D_{order-1}]), D_k the output at earlier[k - 1] (newest first)."""
    h = math.log(sigma_s / sigma_t)  # lambda_t - lambda_s
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks = [math.log(sigma_s / sigma_k) / h for sigma_k in earlier[: order - 1]]  # (lambda_k - lambda_s) / h
    # b_q = q! hh phi_{q+1}(hh) / B(h) by diffusers' recursion on hh phi_{q+1}(hh) (the rounding of its float64 run)
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for q in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= q + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r = torch.tensor(rks + [1.0], dtype=torch.float64)
    vandermonde = torch.stack([r ** (q - 1) for q in range(1, order + 1)])
    b = torch.tensor(b, dtype=torch.float64)
    if correct:
        rhos = [0.5] if order == 1 else torch.linalg.solve(vandermonde, b).tolist()
        rhos_d1, rho_t = rhos[:-1], rhos[-1]
    else:
        if order <= 2:
            rhos_d1 = [0.5] * (order - 1)
        else:
            rhos_d1 = torch.linalg.solve(vandermonde[:-1, :-1], b[:-1]).tolist()
        rho_t = 0.0
    # x - expm1(-h) D_s - B(h) (sum_k rho_k (D_k - D_s) / r_k + rho_t (D_t - D_s)) as weights on the inputs
    weight_s = -h_phi_1 + b_h * sum(rho / rk for rho, rk in zip(rhos_d1, rks)) + b_h * rho_t
    earlier_weights = [-b_h * rho / rk for rho, rk in zip(rhos_d1, rks)]
    head = [sigma_t / sigma_s, -b_h * rho_t] if correct else [sigma_t / sigma_s]
    return torch.tensor(head + [weight_s] + earlier_weights, dtype=torch.float64)


def check_step_indices(name: str, value: object) -> tuple[int, ...]:
    """A collection of step indices (integers >= 0) as a sorted tuple; a string or a single number is refused."""
    items = None
    if not isinstance(value, (str, bytes)) and isinstance(value, Iterable):
        try:
            items = list(value)
        except TypeError:  # a 0-dim array
            pass
    if items is None:
        raise TypeError(f"{name} must be a list or tuple of step indices (integers >= 0), got {describe(value)}")
    return tuple(sorted({check_count(f"{name}[{k}]", item, minimum=0) for k, item in enumerate(items)}))
