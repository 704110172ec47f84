"""Analytic-DPM (Bao, Li, Zhu, Zhang, ICLR 2022, "Analytic-DPM: an Analytic Estimate of the Optimal Reverse Variance
in Diffusion Probabilistic Models"): the optimal variance of each reverse step of a pretrained epsilon model is known
in closed form given one number per timestep,

    Γ_n = E_{q(x_n)} ||ε_θ(x_n, n)||² / d,

which `estimate_gamma` measures once per model and schedule by Monte Carlo over the training data (cached in memory,
and on disk with `GammaEstimate.save` / `load`). `optimal_variance` turns it into the reverse variances of a skipped
timestep sequence (Theorem 1, with the Theorem 2 bounds), `optimal_timesteps` chooses the skipped sequence itself (the
optimal trajectory, Section 4: the least-cost path of the Theorem 3 decomposition), and `fd.sample_analytic_dpm`
(solvers/analytic_dpm_sampler.py) samples with them.

Timesteps are the model's own indices t = 0 .. T-1 (diffusers' convention, ᾱ_t = alphas_cumprod[t]); the paper's
index is n = t + 1, its ᾱ_0 = 1 being the data. Γ here is the paper code's `ms_eps` (the mean square of ε_θ); the
paper's own Γ_n is the mean square of the score, ms_eps / β̄_n.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import numbers
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import files
from .models import unwrap_output
from .schedules import check_alphas_cumprod
from .checks import check_bool, check_count, check_eta, check_real, describe

@dataclass(eq=False)
class GammaEstimate:
    """Γ_t = E||ε_θ(x_t, t)||² / d at `timesteps` (increasing int64), with the Monte-Carlo standard error of each
    value, the number of samples per timestep it was averaged over, and a digest of the alphas_cumprod it was
    estimated on (`schedule_digest`; None when unknown), which `optimal_variance` compares with its own."""

    timesteps: Tensor
    gamma: Tensor
    stderr: Tensor
    samples: int
    schedule: str | None = None

    def __post_init__(self) -> None:
        self.timesteps = check_timesteps("timesteps", self.timesteps, order="increasing")
        for name in ("gamma", "stderr"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {describe(value)}")
            value = value.detach().to("cpu", torch.float64)
            if value.shape != self.timesteps.shape:
                raise ValueError(f"{name} must have one value per timestep, shape {tuple(self.timesteps.shape)}, "
                                 f"got shape {tuple(value.shape)}")
            bad = ~(torch.isfinite(value) & (value >= 0))  # a mean square and its error: finite, never negative
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(f"{name} must be finite and >= 0, got {name}[{i}] = {value[i].item()} at timestep "
                                 f"{int(self.timesteps[i])}")
            setattr(self, name, value)
        self.samples = check_count("samples", self.samples)
        if self.schedule is not None and not isinstance(self.schedule, str):
            raise TypeError(f"schedule must be a digest (str, from schedule_digest) or None, got {describe(self.schedule)}")

    def at(self, timesteps: Tensor | Sequence[int]) -> Tensor:
        """Γ at `timesteps` (float64), or an error naming the timesteps this estimate does not cover."""
        wanted = check_timesteps("timesteps", timesteps)
        index = torch.searchsorted(self.timesteps, wanted).clamp_max(len(self.timesteps) - 1)
        missing = wanted[self.timesteps[index] != wanted]
        if len(missing):
            raise ValueError(
                f"gamma does not cover timesteps {_list(missing.unique())} ({len(missing.unique())} of the "
                f"{len(wanted.unique())} used); it holds Γ at {_list(self.timesteps)}: estimate it with "
                "estimate_gamma(..., timesteps=None) (every training timestep) or with these timesteps included")
        return self.gamma[index]

    def save(self, path: str | Path) -> None:
        """Writes the estimate as a safetensors file."""
        files.save(path, {"timesteps": self.timesteps, "gamma": self.gamma, "stderr": self.stderr},
                   files.GAMMA_ESTIMATE, samples=self.samples, schedule=self.schedule)

    @classmethod
    def load(cls, path: str | Path) -> "GammaEstimate":
        """Reads an estimate written by `save`."""
        tensors, metadata = files.read(path, files.GAMMA_ESTIMATE)
        try:
            return cls(tensors["timesteps"], tensors["gamma"], tensors["stderr"], metadata["samples"],
                       metadata.get("schedule"))
        except (TypeError, ValueError) as e:
            raise files.damaged(path, files.GAMMA_ESTIMATE, f"{type(e).__name__}: {e}") from None


def check_timesteps(name: str, timesteps: object, num_train_timesteps: int | None = None,
                    order: str | None = None) -> Tensor:
    """Integer timesteps (a 1-D tensor or a sequence of ints) as a CPU int64 tensor: non-empty, >= 0, below
    `num_train_timesteps` when given, and strictly "increasing" or "decreasing" when `order` says so."""
    if isinstance(timesteps, Tensor):
        values = timesteps.detach().to("cpu")  # sync-ok: validated once, before any work
        if values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
    elif isinstance(timesteps, (list, tuple, range)) and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in timesteps):
        values = torch.tensor(list(timesteps), dtype=torch.int64)
    else:
        raise TypeError(f"{name} must be a 1-D tensor or a sequence of integer timesteps, got {describe(timesteps)}")
    if values.dim() != 1 or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(values.shape)}")
    as_float = values.to(torch.float64)
    top = math.inf if num_train_timesteps is None else num_train_timesteps - 1
    bad = ~((as_float >= 0) & (as_float <= top) & (as_float == as_float.round()))  # NaN is bad too
    if bad.any():
        i = int(bad.nonzero()[0])
        where = "" if num_train_timesteps is None else f" in [0, {num_train_timesteps - 1}]"
        raise ValueError(f"{name}[{i}] = {values[i].item()} must be an integer{where}")
    values = as_float.long()
    if order is not None:
        wrong = values[1:] <= values[:-1] if order == "increasing" else values[1:] >= values[:-1]
        if wrong.any():
            i = int(wrong.nonzero()[0])
            raise ValueError(f"{name} must be strictly {order}: {name}[{i}] = {int(values[i])}, "
                             f"{name}[{i + 1}] = {int(values[i + 1])}")
    return values


def check_data_range(data_range: object) -> tuple[float, float] | None:
    """None (unbounded data) or (low, high) with low < high."""
    if data_range is None:
        return None
    if not isinstance(data_range, (tuple, list)) or len(data_range) != 2:
        raise TypeError(f"data_range must be None or a pair (low, high), got {describe(data_range)}")
    low, high = check_real("data_range[0]", data_range[0]), check_real("data_range[1]", data_range[1])
    if not low < high:
        raise ValueError(f"data_range must have low < high, got ({low}, {high})")
    return low, high


def _list(values: Tensor, limit: int = 12) -> str:
    """Integer timesteps for a message: a range when contiguous, else the first few."""
    items = values.tolist()
    if len(items) > 2 and items == list(range(items[0], items[-1] + 1)):
        return f"{items[0]}..{items[-1]}"
    return str(items) if len(items) <= limit else f"[{', '.join(map(str, items[:limit]))}, ...]"


def optimal_variance(alphas_cumprod: Tensor, timesteps: Tensor | Sequence[int], gamma: GammaEstimate | Tensor,
                     eta: float = 1.0, *, data_range: tuple[float, float] | None = (-1.0, 1.0),
                     clip: bool = True) -> Tensor:
    """The optimal reverse variance of each step of a skipped sampling run (float64, computed on the host).

    `timesteps` are the run's decreasing timesteps t_1 > ... > t_K; step k goes from r = t_k to s = t_{k+1}, the last
    step to the data (ᾱ_s = 1). `gamma` is a GammaEstimate, or Γ at `timesteps` (one value each). The reverse
    process is DDIM's family with λ² = η² β̃, β̃ = (β̄_s / β̄_r)(1 - ᾱ_r / ᾱ_s) the DDPM posterior variance
    (η = 1: the paper's Analytic-DDPM; η = 0: Analytic-DDIM). Theorem 1, on a skipped sequence τ_1 < ... < τ_K:

        σ*² = λ² + (sqrt(β̄_r / α_{r|s}) - sqrt(β̄_s - λ²))² (1 - Γ_r),   α_{r|s} = ᾱ_r / ᾱ_s, β̄ = 1 - ᾱ,

    computed as λ² + (sqrt(ᾱ_s) - sqrt((β̄_s - λ²) ᾱ_r / β̄_r))² Cov_r with Cov_r = (β̄_r / ᾱ_r)(1 - Γ_r), the
    estimate of E tr Cov[x_0 | x_r] / d. With `clip` (Theorem 2) Cov_r is clipped into [0, β̄_r / ᾱ_r], i.e. σ² into
    [λ², λ² + (sqrt(β̄_r / α_{r|s}) - sqrt(β̄_s - λ²))²], and for data in [a, b] (`data_range`, None: unbounded)
    Cov_r further to at most ((b - a) / 2)², as the authors' code clips it to 1 for data in [-1, 1]. The last
    step's value (the variance of p(x_0 | x_{t_K}), the paper's likelihood decoder) is returned too; sampling returns
    that step's mean instead.
    """
    ac = check_alphas_cumprod(alphas_cumprod).detach().to("cpu", torch.float64)
    t = check_timesteps("timesteps", timesteps, len(ac), order="decreasing")
    eta = check_eta(eta, ddim=True)
    data_range = check_data_range(data_range)
    g = _gamma_at(gamma, t, ac)
    check_bool("clip", clip)

    a_r = ac[t]
    a_s = torch.cat([ac[t[1:]], a_r.new_ones(1)])
    cov = (1 - a_r) / a_r * (1 - g)
    if clip:
        upper = (1 - a_r) / a_r
        if data_range is not None:
            upper = upper.clamp_max(((data_range[1] - data_range[0]) / 2) ** 2)
        cov = torch.minimum(cov.clamp_min(0), upper)
    return _reverse_variances(a_r, a_s, cov, eta)[1]


def _reverse_variances(a_r: Tensor, a_s: Tensor, cov: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(λ², σ²) of the reverse step r -> s < r (elementwise, ᾱ_r = a_r, ᾱ_s = a_s): DDIM's λ² = η² β̃ and Theorem 1's
    σ² = λ² + (sqrt(ᾱ_s) - sqrt((β̄_s - λ²) ᾱ_r / β̄_r))² Cov_r, Cov_r the estimate of E tr Cov[x_0 | x_r] / d."""
    b_r, b_s = 1 - a_r, 1 - a_s
    lambda2 = eta**2 * b_s / b_r * (1 - a_r / a_s)
    coeff = (a_s.sqrt() - ((b_s - lambda2).clamp_min(0) * a_r / b_r).sqrt()) ** 2
    return lambda2, lambda2 + coeff * cov


def _gamma_at(gamma: GammaEstimate | Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Γ at `timesteps` (float64) from a GammaEstimate made on `alphas_cumprod`, or from a tensor of one value each."""
    if isinstance(gamma, GammaEstimate):
        if gamma.schedule is not None and gamma.schedule != schedule_digest(alphas_cumprod):
            raise ValueError("gamma was estimated on another alphas_cumprod (another training schedule): estimate Γ "
                             "with this model's alphas_cumprod")
        return gamma.at(timesteps)
    if not isinstance(gamma, Tensor):
        raise TypeError(f"gamma must be a GammaEstimate or a tensor of Γ at the timesteps, got {describe(gamma)}")
    if not gamma.is_floating_point():
        raise TypeError(f"gamma must be a real floating-point tensor, got dtype {gamma.dtype}")
    g = gamma.detach().to("cpu", torch.float64)
    if g.shape != timesteps.shape:
        raise ValueError(f"gamma must be a GammaEstimate or one value per timestep, shape {tuple(timesteps.shape)}, "
                         f"got shape {tuple(g.shape)}")
    bad = ~(torch.isfinite(g) & (g >= 0))  # a mean square: finite, never negative (as GammaEstimate)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"gamma must be finite and >= 0 (a mean square), got gamma[{i}] = {g[i].item()} at "
                         f"timestep {int(timesteps[i])}")
    return g


def optimal_timesteps(gamma: GammaEstimate | Tensor, alphas_cumprod: Tensor, steps: int, *,
                      eta: float = 1.0) -> Tensor:
    """Analytic-DPM's optimal trajectory (Section 4): the `steps` timesteps of a skipped run whose KL bound, with the
    optimal variances, is least. Returned decreasing, t_1 = T - 1 > ... > t_K = 0 as int64, in the model's own
    0-based timesteps: the convention of `fd.sample_analytic_dpm` and `fd.solvers.AnalyticDPM` (the paper's
    1 = τ_1 < ... < τ_K = N with n = t + 1, its end points fixed as in the paper; one step: [T - 1]).

    Theorem 3 (the decomposed optimal KL): L*_vb(τ) = d/2 Σ_{k=2}^{K} J(τ_{k-1}, τ_k) + c, c independent of τ, with

        J(s, t) = log(σ*²_{s|t} / λ²_{s|t}),

    the Theorem 1 variance of the step t -> s over DDIM's λ² = η² β̃. For DDPM (η = 1) this is the authors'
    log(1 - β_{t|s} Γ_t / β̄_t) (`_get_fn_m`, β_{t|s} = 1 - ᾱ_t / ᾱ_s) plus terms that telescope along any path
    from 1 to N, so the same trajectory. The least-cost path over the K - 1 pairs is the authors' dynamic programme
    (`_solve_fn_dp`): K - 1 vectorised passes over the T x T costs, O(K T²). `gamma`: a GammaEstimate covering
    every training timestep, or a tensor of Γ at t = 0 .. T - 1 (the paper code's `ms_eps`, as everywhere here), used
    as estimated (no Theorem 2 clip, as in the authors' cost). `eta` in (0, 1]: the bound is infinite for DDIM's
    deterministic steps (η = 0), and the authors' code chooses one trajectory, the DDPM one, for every sampler.

    Γ is at most 1 for the exact ε (Cov >= 0); an estimate above 1 (Monte-Carlo noise where 1 - Γ is near its
    standard error, at large t) makes the cost meaningless or undefined there. As the authors' `_dp_seg` does, with
    t_1 the first timestep where Γ > 1, the top 2 (T - t_1) timesteps (a fraction r of all) get K - ceil((1 - 0.8 r) K)
    of the steps (at least one) evenly spaced, and the least-cost path places the others below them, from 0 to the
    highest timestep below. Where that leaves no room (t_1 <= T / 2) the estimate is too noisy for the bound and an
    error says so.
    """
    ac = check_alphas_cumprod(alphas_cumprod).detach().to("cpu", torch.float64)
    num_train_timesteps = len(ac)
    g = _gamma_at(gamma, torch.arange(num_train_timesteps), ac)
    steps = check_count("steps", steps)
    if steps > num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}] (the number of training timesteps), got {steps}")
    eta = check_eta(eta, ddim=True)
    if eta == 0:
        raise ValueError("eta must be in (0, 1]: the KL bound of Theorem 3 is infinite for DDIM's deterministic steps "
                         "(λ = 0); the authors use the DDPM trajectory (eta=1) for Analytic-DDIM too")
    if steps == num_train_timesteps:  # every timestep
        return torch.arange(num_train_timesteps - 1, -1, -1)
    if steps <= 2:  # the end points only
        return torch.tensor([num_train_timesteps - 1, 0][:steps], dtype=torch.int64)
    path_end, path_steps, top = _split_noisy_top(g, steps)
    a_s, a_t = ac[:path_end, None], ac[None, :path_end]  # cost[s, t]: the reverse step t -> s
    lambda2, variance = _reverse_variances(a_t, a_s, (1 - a_t) / a_t * (1 - g[None, :path_end]), eta)
    cost = (variance / lambda2).log()
    cost = cost.masked_fill(~torch.ones_like(cost, dtype=torch.bool).triu(1), math.inf)  # only s < t
    path = _least_cost_path(cost, path_steps)
    return torch.cat([path, torch.tensor(top, dtype=torch.int64)]).flip(0)


def _split_noisy_top(gamma: Tensor, steps: int) -> tuple[int, int, list[int]]:
    """The authors' split (`_split`, `_dp_seg`) of a trajectory where Γ exceeds 1: (the number of timesteps the
    least-cost path covers, the steps it places, the even timesteps above it, increasing); everything to the path when
    Γ <= 1 throughout."""
    num_train_timesteps = len(gamma)
    over = (gamma > 1).nonzero()
    if len(over) == 0:
        return num_train_timesteps, steps, []
    first_over = int(over[0])
    noisy = 2 * (num_train_timesteps - first_over)
    path_end = num_train_timesteps - noisy
    if path_end < 2:
        raise ValueError(
            f"gamma exceeds 1 from timestep {first_over} on ({len(over)} timesteps; Γ <= 1 for the exact ε): the "
            f"optimal trajectory's cost is undefined there, and the authors' split (even steps over the top "
            f"{noisy} timesteps, twice those from the first Γ > 1, the least-cost path below them) needs the first "
            f"Γ > 1 at t >= {num_train_timesteps // 2 + 1}. Estimate Γ with more samples_per_step")
    path_steps = min(math.ceil((1 - 0.8 * noisy / num_train_timesteps) * steps), path_end)
    top_steps = min(max(steps - path_steps, 1), noisy)
    path_steps = max(steps - top_steps, 2)  # the path's own end points
    top_steps = steps - path_steps
    stride = noisy / top_steps
    # rounded as the authors' code (half to even) on the paper's index n = t + 1
    top = [round(num_train_timesteps - stride * k) - 1 for k in reversed(range(top_steps))]
    return path_end, path_steps, top


def _least_cost_path(cost: Tensor, nodes: int) -> Tensor:
    """The increasing path 0 = p_1 < ... < p_nodes = M - 1 with the least Σ cost[p_{k-1}, p_k] (cost [M, M], inf where
    no step goes), by dynamic programming: least[t] is the least cost of a path from 0 to t with k nodes, each pass
    adds a node, K - 1 passes of O(M²)."""
    size = cost.shape[0]
    least = torch.full((size,), math.inf, dtype=cost.dtype)
    least[0] = 0
    cost_to = cost.t().contiguous()  # cost_to[t, s] = cost[s, t]: each row one target, reduced along its memory
    previous = []
    for _ in range(nodes - 1):
        least, argmin = (least[None, :] + cost_to).min(1)
        previous.append(argmin)
    path = [size - 1]
    for argmin in reversed(previous):
        path.append(int(argmin[path[-1]]))
    return torch.tensor(path[::-1], dtype=torch.int64)


# estimate_gamma's in-memory cache: key -> (is the key's model and data still the same objects, estimate)
_CACHE: dict[Hashable, tuple[Callable[[], bool], GammaEstimate]] = {}


def clear_cache() -> None:
    """Forgets every cached Γ estimate."""
    _CACHE.clear()


@torch.no_grad()
def estimate_gamma(eps_model: Callable[..., Any], alphas_cumprod: Tensor, data: Tensor,
                   timesteps: Tensor | Sequence[int] | None = None, *, samples_per_step: int = 100,
                   batch_size: int = 500, generator: torch.Generator | None = None, cache: bool = True,
                   data_range: tuple[float, float] | None = (-1.0, 1.0), disable: bool | None = None) -> GammaEstimate:
    """Γ_t = E_{q(x_t)} ||ε_θ(x_t, t)||² / d by Monte Carlo (the expectation in Analytic-DPM's Theorem 1, as the
    authors' code estimates it, `ms_eps`): per timestep, `samples_per_step` draws x_t = sqrt(ᾱ_t) x_0 +
    sqrt(1 - ᾱ_t) ε with x_0 drawn with replacement from `data` (training samples [N, ...], on the model's device)
    and ε standard normal, both from `generator`. The model is called as eps_model(x, t[B]) with integer timesteps
    (fd.sample_ddim's convention), in batches of `batch_size` that may mix timesteps. `timesteps`: those to
    estimate (default: all T training timesteps; a sampler needs the ones it visits). The authors average over the whole training set once per
    timestep; the returned standard errors say whether `samples_per_step` is enough.

    `data` must lie in `data_range` (default [-1, 1], the range an image model is trained on; None: unbounded,
    e.g. latents): [0, 255] or [0, 1] pixels would give a Γ of another data set (above 1 at small t, impossible for
    an epsilon model on its own data), so they are refused.

    Once per model and schedule: the result is cached in memory, keyed by the model object, a digest of the
    contents of its parameters and buffers (so every weight edit counts, in place, through `.data` or by replacing
    a tensor; one pass over the weights per call), its structure as fd.Sampler sees it (hooks such as DeepCache or
    Skip-Tuning, patched forwards) and its train / eval flags, alphas_cumprod's values, the timesteps, the sample count and a
    digest of the data's contents. A second call with the same key returns the cached object without calling the
    model, whatever its generator or batch_size. A model that is a plain function around a module cannot be
    watched for weight edits: pass the module (or its bound method), or `cache=False`.
    """
    if not callable(eps_model):
        raise TypeError(f"eps_model must be callable, eps_model(x, t[B]) -> eps, got {describe(eps_model)}")
    ac = check_alphas_cumprod(alphas_cumprod).detach().to("cpu", torch.float64)
    if not isinstance(data, Tensor) or not data.is_floating_point():
        raise TypeError(f"data must be a floating-point tensor of training samples [N, ...], got {describe(data)}")
    if data.dim() < 2 or data.shape[0] == 0 or data[0].numel() == 0:
        raise ValueError(f"data must be a non-empty batch of samples [N, ...], got shape {tuple(data.shape)}")
    if not torch.isfinite(data).all():  # sync-ok: the data is read once, before any model call
        raise ValueError("data contains NaN or inf")
    data_range = check_data_range(data_range)
    if data_range is not None:
        low, high = (float(v) for v in torch.aminmax(data))  # sync-ok: once, before any model call
        if low < data_range[0] or high > data_range[1]:
            raise ValueError(f"data holds values in [{low:g}, {high:g}], outside data_range={data_range}, the range "
                             "the model was trained on: scale it as in training (for [0, 255] pixels data / 127.5 - "
                             "1, for [0, 1] data * 2 - 1), or pass the range it has (data_range=None: unbounded)")
    t = torch.arange(len(ac)) if timesteps is None else check_timesteps("timesteps", timesteps, len(ac))
    t = t.unique()  # sorted, once each
    samples = check_count("samples_per_step", samples_per_step, minimum=2)  # two at least: a standard error
    batch_size = check_count("batch_size", batch_size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
    check_bool("cache", cache)

    key, alive = _cache_key(eps_model, ac, t, samples, data) if cache else (None, None)
    hit = _CACHE.get(key) if alive is not None else None
    if hit is not None and hit[0]():
        return hit[1]
    values = _mean_squares(eps_model, ac, data, t.repeat_interleave(samples), batch_size, generator, disable)
    values = values.view(len(t), samples)
    bad = ~torch.isfinite(values).all(1)
    if bad.any():
        raise FloatingPointError(f"eps_model returned non-finite values at timesteps {_list(t[bad])}")
    estimate = GammaEstimate(t, values.mean(1), values.std(1) / math.sqrt(samples), samples, schedule_digest(ac))
    if alive is not None:
        for stale in [k for k, (still, _) in _CACHE.items() if not still()]:
            del _CACHE[stale]
        _CACHE[key] = (alive, estimate)
    return estimate


def _mean_squares(eps_model: Callable[..., Any], ac: Tensor, data: Tensor, pairs: Tensor, batch_size: int,
                  generator: torch.Generator | None, disable: bool | None) -> Tensor:
    """||ε_θ(x_t, t)||² / d (float64, on the host) for one fresh draw per entry of `pairs` (a timestep each)."""
    device, shape = data.device, data.shape[1:]
    draw_device = generator.device if generator is not None else device
    out = torch.empty(len(pairs), dtype=torch.float64, device=device)
    for start in tqdm(range(0, len(pairs), batch_size), disable=disable, desc="Γ"):
        t = pairs[start : start + batch_size]
        index = torch.randint(len(data), (len(t),), generator=generator, device=draw_device).to(device)
        noise = torch.randn((len(t), *shape), generator=generator, dtype=data.dtype, device=draw_device).to(device)
        a = ac[t].reshape(-1, *[1] * len(shape))
        x = (a.sqrt().to(device, data.dtype) * data[index] + (1 - a).sqrt().to(device, data.dtype) * noise)
        eps = unwrap_output(eps_model(x, t.to(device)))
        if not isinstance(eps, Tensor) or eps.shape != x.shape or not eps.is_floating_point():
            raise ValueError(f"eps_model returned {describe(eps)} for x of shape {tuple(x.shape)}; expected a "
                             "floating-point tensor of the same shape (an epsilon prediction)")
        out[start : start + len(t)] = eps.detach().to(torch.float64).flatten(1).square().mean(1)
    return out.cpu()  # sync-ok: once, after the estimate


def schedule_digest(alphas_cumprod: Tensor) -> str:
    """A short digest of a training schedule's values (float64), naming it in a Γ estimate and its file."""
    return _digest([alphas_cumprod.detach().to("cpu", torch.float64)])


def _digest(tensors: Sequence[Tensor]) -> str:
    """A digest of the tensors' contents (bytes, shapes and dtypes), read once on the host."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        digest.update(repr((tuple(tensor.shape), tensor.dtype)).encode())
        host = tensor.detach().to("cpu").contiguous()  # sync-ok: once per estimate_gamma call
        digest.update(host.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cache_key(eps_model: Callable[..., Any], ac: Tensor, t: Tensor, samples: int,
               data: Tensor) -> tuple[Hashable, Callable[[], bool] | None]:
    """(key, a check that the key's model is still the object it was made for), or (key, None) when the model takes
    no weak reference (then nothing is cached)."""
    method = inspect.ismethod(eps_model)
    owner = eps_model.__self__ if method else eps_model
    identity = (id(owner), id(eps_model.__func__)) if method else id(eps_model)
    weights = None
    if isinstance(owner, nn.Module):  # the weights' contents, and what else changes the outputs: hooks, train / eval
        from .engine.watch import LoopWatch

        weights = (_digest([*owner.parameters(), *owner.buffers()]), LoopWatch(owner).structure,
                   tuple(m.training for m in owner.modules()))
    key = (identity, weights, ac.numpy().tobytes(), t.numpy().tobytes(), samples, _digest([data]), data.device)
    try:
        model_ref = weakref.WeakMethod(eps_model) if method else weakref.ref(eps_model)
    except TypeError:
        return key, None
    # an id names one object only while it lives: the key holds while the model is alive
    return key, lambda: model_ref() is not None
