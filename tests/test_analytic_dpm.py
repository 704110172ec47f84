"""Analytic-DPM (Bao et al., ICLR 2022): Γ against closed forms, the optimal variance, the optimal trajectory and the
sampler against re-statements of the paper and of its authors' code written here, sample quality on a Gaussian
mixture, the Γ cache, and argument checks."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import fused_diffusion as fd
from fused_diffusion import analytic_dpm, solvers
from fused_diffusion.analytic_dpm import GammaEstimate, estimate_gamma, optimal_timesteps, optimal_variance
from fused_diffusion.solvers.analytic_dpm_sampler import AnalyticDPM, analytic_dpm_timesteps, sample_analytic_dpm

AC = fd.ddpm_alphas_cumprod(1000)


class ExactEps(nn.Module):
    """The exact epsilon model of a Gaussian mixture, from its exact EDM denoiser D: x_edm = x / sqrt(ᾱ_t),
    σ = sqrt((1 - ᾱ_t) / ᾱ_t), ε = (x_edm - D(x_edm, σ)) / σ. `scale` is a parameter to edit in place."""

    def __init__(self, gmm: fd.GaussianMixture, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.gmm = gmm
        self.register_buffer("ac", alphas_cumprod.double())
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        a = self.ac[t].to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))
        x_edm, sigma = x / a.sqrt(), ((1 - a) / a).sqrt()
        return (x_edm - self.gmm(x_edm, sigma.flatten())) / sigma * self.scale.to(x.dtype)


def smooth_eps(x, t):
    """A stand-in network for the formula tests: its x0 estimate leaves [-1, 1] at high noise, so the clamp acts."""
    return torch.tanh(x) * (0.5 + t.to(x.dtype).reshape(-1, *[1] * (x.dim() - 1)) / 2000)


def synthetic_gamma(seed=0, high=1.05):
    """Γ at every timestep, uniform in [0, high): above 1 somewhere (a poor estimate, negative Cov, clipped to 0)."""
    g = torch.rand(1000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * high
    return GammaEstimate(torch.arange(1000), g, torch.zeros(1000, dtype=torch.float64), 100)


# ---------------------------------------------------------------- Γ


def test_gamma_of_one_gaussian_matches_closed_form():
    # x0 ~ N(mu, s^2 I): x_t ~ N(sqrt(a) mu, (a s^2 + 1 - a) I) and E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) /
    # (a s^2 + 1 - a), so Γ_t = E||E[eps | x_t]||^2 / d = (1 - a) / (a s^2 + 1 - a), whatever mu.
    s = 0.5
    gmm = fd.GaussianMixture(torch.tensor([[0.3, -0.2, 0.1]]), torch.tensor([s]), torch.tensor([1.0]))
    data = gmm.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    timesteps = [0, 50, 200, 500, 999]
    est = estimate_gamma(ExactEps(gmm, AC), AC, data, timesteps, samples_per_step=4000, batch_size=4000, data_range=None,
                         generator=torch.Generator().manual_seed(1), cache=False, disable=True)
    a = AC.double()[timesteps]
    exact = (1 - a) / (a * s**2 + 1 - a)
    assert est.timesteps.tolist() == timesteps and est.samples == 4000
    assert (est.stderr > 0).all()
    assert ((est.gamma - exact).abs() <= 4 * est.stderr).all(), (est.gamma, exact, est.stderr)


def test_gamma_of_mixture_matches_independent_estimate(gmm):
    timesteps = torch.tensor([10, 100, 300, 600])
    data = gmm.sample(100_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = estimate_gamma(ExactEps(gmm, AC), AC, data, timesteps, samples_per_step=4000, data_range=None,
                         generator=torch.Generator().manual_seed(1), cache=False, disable=True)
    # independently: fresh exact samples of the mixture (no resampling of a data set), the exact posterior mean of
    # eps written from the denoiser here, 20000 draws per timestep
    g = torch.Generator().manual_seed(2)
    for k, t in enumerate(timesteps.tolist()):
        a = AC.double()[t]
        x0 = gmm.sample(20_000, generator=g, dtype=torch.float64)
        x = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        sigma = ((1 - a) / a).sqrt()
        eps = (x / a.sqrt() - gmm(x / a.sqrt(), sigma.expand(len(x)))) / sigma
        values = eps.square().mean(1)
        mean, stderr = values.mean(), values.std() / math.sqrt(len(values))
        assert abs(est.gamma[k] - mean) <= 4 * math.hypot(est.stderr[k], stderr), (t, est.gamma[k], mean)


def test_gamma_cache_and_invalidation(gmm):
    model = ExactEps(gmm, AC)
    data = gmm.sample(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda m=model, d=data: estimate_gamma(m, AC, d, [5, 500], samples_per_step=8, data_range=None,  # noqa: E731
                                                 disable=True)
    first = run()
    calls = model.calls
    assert calls > 0
    assert run() is first and model.calls == calls  # cached: the model is not called
    assert run(m=model.forward) is not first  # another callable is another key
    calls = model.calls
    with torch.no_grad():
        model.scale.mul_(1.0)  # an in-place edit that leaves the values: the same weights, the same estimate
    assert run() is first and model.calls == calls
    with torch.no_grad():
        model.scale.mul_(1.5)  # new values: the estimate is redone
    second = run()
    assert second is not first and model.calls > calls
    assert run() is second
    assert run(d=data.clone()) is second  # the same data, another tensor: the same estimate
    data.add_(0.01)  # an in-place edit of the data
    assert run() is not second
    calls = model.calls
    estimate_gamma(model, AC, data, [5, 500], samples_per_step=8, cache=False, data_range=None, disable=True)
    assert model.calls > calls


def test_gamma_estimate_save_load(tmp_path, gmm):
    data = gmm.sample(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = estimate_gamma(ExactEps(gmm, AC), AC, data, [3, 30, 300], samples_per_step=4, cache=False,
                         data_range=None, disable=True)
    est.save(tmp_path / "gamma.safetensors")
    back = GammaEstimate.load(tmp_path / "gamma.safetensors")
    assert back.samples == 4
    for name in ("timesteps", "gamma", "stderr"):
        assert torch.equal(getattr(back, name), getattr(est, name))
    assert torch.equal(back.at(torch.tensor([300, 3])), est.gamma[[2, 0]])


# ---------------------------------------------------------------- the optimal variance


def paper_variance(ac, timesteps, gamma, eta, data_range, clip):
    """Theorem 1 of the paper with its skipped steps, r = τ_k > s = τ_{k-1} (the last s the data, ᾱ = 1), in the
    paper's own Γ (the mean square of the score, ms_eps / β̄_r), and Theorem 2's bounds; one step at a time."""
    out = []
    for k, r in enumerate(timesteps):
        a_r = float(ac[r])
        a_s = float(ac[timesteps[k + 1]]) if k + 1 < len(timesteps) else 1.0
        b_r, b_s = 1 - a_r, 1 - a_s
        alpha_rs = a_r / a_s
        lam2 = eta**2 * b_s / b_r * (1 - alpha_rs)
        score_ms = float(gamma[k]) / b_r
        gap = (math.sqrt(b_r / alpha_rs) - math.sqrt(max(b_s - lam2, 0.0))) ** 2
        var = lam2 + gap * (1 - b_r * score_ms)
        if clip:
            upper = lam2 + gap
            if data_range is not None:
                width = (data_range[1] - data_range[0]) / 2
                bounded = (math.sqrt(a_s) - math.sqrt(max(b_s - lam2, 0.0)) * math.sqrt(a_r / b_r)) ** 2 * width**2
                upper = min(upper, lam2 + bounded)
            var = min(max(var, lam2), upper)
        out.append(var)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("eta", [1.0, 0.0, 0.5])
@pytest.mark.parametrize("steps", [10, 100, 1000])
@pytest.mark.parametrize("data_range,clip", [((-1.0, 1.0), True), (None, True), ((-1.0, 1.0), False),
                                             ((0.0, 4.0), True)])
def test_optimal_variance_matches_theorem(eta, steps, data_range, clip):
    timesteps = analytic_dpm_timesteps(1000, steps)
    est = synthetic_gamma(steps)
    got = optimal_variance(AC, timesteps, est, eta, data_range=data_range, clip=clip)
    expected = paper_variance(AC.double(), timesteps.tolist(), est.gamma[timesteps], eta, data_range, clip)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    # the same from Γ given as values at the timesteps
    torch.testing.assert_close(optimal_variance(AC, timesteps, est.gamma[timesteps], eta, data_range=data_range,
                                                clip=clip), got, rtol=0, atol=0)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_optimal_variance_bounds(eta):
    timesteps = analytic_dpm_timesteps(1000, 25)
    a_r = AC.double()[timesteps]
    a_s = torch.cat([AC.double()[timesteps[1:]], torch.ones(1, dtype=torch.float64)])
    b_r, b_s = 1 - a_r, 1 - a_s
    tilde = b_s / b_r * (1 - a_r / a_s)  # the DDPM posterior variance: λ² for η = 1
    lam2 = eta**2 * tilde
    gap = ((b_r * a_s / a_r).sqrt() - (b_s - lam2).clamp_min(0).sqrt()) ** 2
    # Γ = 1: Cov[x0 | x_t] = 0, the lower bound λ² (β̃ for Analytic-DDPM, 0 for Analytic-DDIM)
    ones = torch.ones(len(timesteps), dtype=torch.float64)
    torch.testing.assert_close(optimal_variance(AC, timesteps, ones, eta, data_range=None), lam2, rtol=1e-12, atol=0)
    # Γ = 0: the distribution-free upper bound, unless bounded data lower it
    zeros = torch.zeros_like(ones)
    torch.testing.assert_close(optimal_variance(AC, timesteps, zeros, eta, data_range=None), lam2 + gap,
                               rtol=1e-12, atol=1e-300)
    for g in (synthetic_gamma(1, high=1.5), synthetic_gamma(2, high=0.2)):
        var = optimal_variance(AC, timesteps, g, eta)
        bounded = lam2 + (a_s.sqrt() - ((b_s - lam2).clamp_min(0) * a_r / b_r).sqrt()) ** 2  # ((1 - -1) / 2)^2 = 1
        assert (var >= lam2 * (1 - 1e-12)).all() and (var <= lam2 + gap + 1e-15).all()
        assert (var <= bounded * (1 + 1e-12)).all()
    if eta == 0:
        assert (optimal_variance(AC, timesteps, ones, 0.0) == 0).all()


# ---------------------------------------------------------------- the optimal trajectory


def authors_cost(ac, gamma, s, t):
    """The authors' `_get_fn_m` in the model's timesteps: log(1 - β_{t|s} Γ_t / β̄_t) for the step t -> s, β_{t|s} =
    1 - ᾱ_t / ᾱ_s, Γ the mean square of ε_θ (Theorem 3's J for η = 1, less terms that telescope)."""
    a_s, a_t = float(ac[s]), float(ac[t])
    return math.log(1 - (1 - a_t / a_s) * float(gamma[t]) / (1 - a_t))


def theorem_cost(ac, gamma, eta, s, t):
    """Theorem 3's J(s, t) = log(σ*² / λ²), σ*² from the paper's Theorem 1 (unclipped) and λ² = η² β̃."""
    a_s, a_t = float(ac[s]), float(ac[t])
    lam2 = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    var = paper_variance(ac, [t, s], [gamma[t], gamma[s]], eta, None, False)[0]
    return math.log(var / lam2)


def brute_force(cost, first, last, nodes):
    """(least total cost, its paths) over every increasing path first -> last of `nodes` timesteps."""
    totals = {}
    for middle in itertools.combinations(range(first + 1, last), nodes - 2):
        path = (first, *middle, last)
        totals[path] = sum(cost(s, t) for s, t in zip(path, path[1:]))
    least = min(totals.values())
    return least, [p for p, total in totals.items() if total <= least + 1e-12 * abs(least)]


def test_trajectory_costs_agree():
    """Theorem 3's cost at η = 1 and the authors' differ by log(β̄_t / (α_{t|s} β̄_s)), which telescopes along a path."""
    n = 12
    ac = fd.ddpm_alphas_cumprod(n).double()
    gamma = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for s, t in itertools.combinations(range(n), 2):
        telescoping = math.log((1 - ac[t]) / (ac[t] / ac[s] * (1 - ac[s])))
        assert theorem_cost(ac, gamma, 1.0, s, t) == pytest.approx(authors_cost(ac, gamma, s, t) + telescoping,
                                                                   rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("n,steps", [(10, 3), (10, 4), (12, 3), (12, 4), (12, 5)])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_optimal_timesteps_is_the_least_cost_path(n, steps, seed, eta):
    """The dynamic programme against every trajectory of `steps` timesteps from 0 to n - 1 (the paper's 1 and N):
    random Γ in [0, 1), a linear schedule of n timesteps; η = 1 with the authors' cost, any η with Theorem 3's."""
    ac = fd.ddpm_alphas_cumprod(n, beta_start=1e-2, beta_end=0.3).double()
    gamma = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if eta == 1:
        cost = lambda s, t: authors_cost(ac, gamma, s, t)  # noqa: E731
    else:
        cost = lambda s, t: theorem_cost(ac, gamma, eta, s, t)  # noqa: E731
    least, best = brute_force(cost, 0, n - 1, steps)
    got = optimal_timesteps(gamma, ac, steps, eta=eta)
    assert got.dtype == torch.int64 and len(got) == steps
    assert got[0] == n - 1 and got[-1] == 0 and (got[1:] < got[:-1]).all()
    path = got.flip(0).tolist()
    assert sum(cost(s, t) for s, t in zip(path, path[1:])) == pytest.approx(least, rel=1e-12, abs=1e-12)
    assert tuple(path) in best and len(best) == 1  # random Γ: one least path


def test_optimal_timesteps_end_points_and_sizes():
    gamma = synthetic_gamma(0, high=0.999)
    assert optimal_timesteps(gamma, AC, 1).tolist() == [999]
    assert optimal_timesteps(gamma, AC, 2).tolist() == [999, 0]
    assert optimal_timesteps(gamma, AC, 1000).tolist() == list(range(999, -1, -1))
    for steps in (3, 10, 100):  # N = 1000 with the steps of a sampler: a few K passes over 1000 x 1000 costs
        got = optimal_timesteps(gamma, AC, steps)
        assert len(got) == steps and got[0] == 999 and got[-1] == 0 and (got[1:] < got[:-1]).all()
    # the estimate or its values at every timestep: the same trajectory
    assert torch.equal(optimal_timesteps(gamma.gamma.float(), AC, 10), optimal_timesteps(gamma.gamma, AC, 10))


def test_optimal_timesteps_split_where_gamma_exceeds_one():
    """Γ above 1 from t = 16 of 20: as the authors' `_dp_seg`, the top 2 (20 - 16) = 8 timesteps get
    K - ceil((1 - 0.8 * 8 / 20) K) steps evenly (n = round(20 - 4 k), t = n - 1), the least-cost path the rest over
    t = 0 .. 11."""
    n = 20
    ac = fd.ddpm_alphas_cumprod(n, beta_start=1e-2, beta_end=0.3).double()
    gamma = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.9
    gamma[[16, 18]] = 1.2
    got = optimal_timesteps(gamma, ac, 7).flip(0).tolist()  # ceil(0.68 * 7) = 5 on the path, 2 above
    assert got[5:] == [15, 19]
    least, best = brute_force(lambda s, t: authors_cost(ac, gamma, s, t), 0, 11, 5)
    assert tuple(got[:5]) in best
    assert optimal_timesteps(gamma, ac, 3).flip(0).tolist()[2:] == [19]  # one step above at least
    gamma[9] = 1.01  # the first Γ > 1 in the lower half: no room for the path below
    with pytest.raises(ValueError, match=r"gamma exceeds 1 from timestep 9 on \(3 timesteps"):
        optimal_timesteps(gamma, ac, 7)


# ---------------------------------------------------------------- the sampler


def paper_loop(eps_model, x, steps, gamma, eta, noise_generator, noise_dtype, clip_pixel=1):
    """The authors' reverse_ddpm_ms_eps (η = 1) / reverse_ddim_ms_eps (η < 1) with clip_sigma_idx = 1, restated in
    float64: their index n = t + 1 with betas[0] = 0, even ("linear") steps, x0 clamped to [-1, 1], no noise on the
    last step."""
    cum = np.concatenate([[1.0], AC.double().numpy()])
    betas = np.append(0.0, 1 - cum[1:] / cum[:-1])
    alphas = 1.0 - betas
    cum_alphas = alphas.cumprod()
    cum_betas = 1.0 - cum_alphas
    n_train = len(betas) - 1
    ns, position = [], 1.0
    for _ in range(steps):
        ns.append(round(position))
        position += (n_train - 1) / (steps - 1)
    ms_eps = np.concatenate([[0.0], gamma.numpy()])
    x = x.double()
    for s, r in list(zip([0] + ns, ns))[::-1]:
        skip_alpha = alphas[s + 1 : r + 1].prod()
        skip_beta = 1.0 - skip_alpha
        ca_s, ca_r, cb_s, cb_r = cum_alphas[s], cum_alphas[r], cum_betas[s], cum_betas[r]
        eps = eps_model(x, torch.full((len(x),), r - 1)).double()
        x0 = ca_r**-0.5 * x - (1.0 / ca_r - 1.0) ** 0.5 * eps
        x0 = x0.clamp(-1.0, 1.0)
        sigma2_small = skip_beta * cb_s / cb_r
        cov = np.clip(cb_r / ca_r * (1.0 - ms_eps[r]), 0.0, 1.0)
        if eta == 1:
            x_mean = skip_beta * ca_s**0.5 / cb_r * x0 + skip_alpha**0.5 * cb_s / cb_r * x
            sigma2 = sigma2_small + ca_s * skip_beta**2 / cb_r**2 * cov
        else:
            lamb2 = eta**2 * sigma2_small
            x_mean = ca_s**0.5 * x0 + max(cb_s - lamb2, 0.0) ** 0.5 * eps
            sigma2 = lamb2 + (ca_s**0.5 - ((cb_s - lamb2) * ca_r / cb_r) ** 0.5) ** 2 * cov
        if s != 0:
            if s < ns[1]:
                sigma2 = np.clip(sigma2, 0.0, (clip_pixel * 2.0 / 255.0 * (math.pi / 2.0) ** 0.5) ** 2)
            z = torch.randn(x.shape, generator=noise_generator, dtype=noise_dtype).double()
            x = x_mean + sigma2**0.5 * z
        else:
            x = x_mean
    return x


@pytest.mark.parametrize("eta,dtype,steps", [(1.0, torch.float64, 10), (0.0, torch.float64, 10),
                                             (0.5, torch.float64, 7), (1.0, torch.float32, 10),
                                             (0.0, torch.float32, 7)])
def test_sampler_matches_authors_loop(eta, dtype, steps):
    gamma = synthetic_gamma(3)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = paper_loop(smooth_eps, x, steps, gamma.gamma, eta, torch.Generator().manual_seed(1), dtype)
    got = sample_analytic_dpm(smooth_eps, x.to(dtype), AC, steps, gamma, eta=eta,
                              generator=torch.Generator().manual_seed(1), disable=True)
    assert got.dtype == dtype
    err = ((got.double() - expected).norm() / expected.norm()).item()
    assert err <= (1e-10 if dtype == torch.float64 else 1e-5), err


def test_sampler_unclamped_folds_into_one_lincomb():
    """Unbounded data: one lincomb of [x, eps, z] per step, the same samples as the clamped form with a range wide
    enough never to clamp."""
    gamma = synthetic_gamma(4, high=0.9)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    wide = sample_analytic_dpm(smooth_eps, x, AC, 10, gamma, data_range=(-1e6, 1e6), clip_last_noise=None,
                               generator=torch.Generator().manual_seed(1), disable=True)
    free = sample_analytic_dpm(smooth_eps, x, AC, 10, gamma, data_range=None, clip_last_noise=None,
                               generator=torch.Generator().manual_seed(1), disable=True)
    # the wide range changes the Theorem 2 bound only where Cov exceeds 1e12, which these Γ never reach
    assert ((free - wide).norm() / wide.norm()).item() < 1e-10
    from fused_diffusion.ops import count_op_launches

    with count_op_launches() as launches:
        sample_analytic_dpm(smooth_eps, x, AC, 10, gamma, data_range=None, clip_last_noise=None, disable=True)
    assert launches.count == 10


@pytest.mark.parametrize("eta,clamp", [(0.0, True), (0.0, False), (1.0, False)])
def test_small_variance_is_ddim(eta, clamp):
    """variance='small' is DDIM with λ² = η² β̃: diffusers' DDIM loop (fd.sample_ddim) on its 'leading' grid, whose
    previous timestep t - T // n is the grid's next one."""
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    solver = AnalyticDPM(AC, None, eta, "small", (-1.0, 1.0) if clamp else None, None)
    timesteps = analytic_dpm_timesteps(1000, 10, "leading")
    ours = solvers.sample(solver, smooth_eps, x, timesteps, disable=True, generator=torch.Generator().manual_seed(1),
                          k_diffusion_rng=False)
    ddim = fd.sample_ddim(smooth_eps, x, AC, 10, eta=eta, clip_sample=clamp, generator=torch.Generator().manual_seed(1),
                          disable=True)
    assert ((ours - ddim).norm() / ddim.norm()).item() < 1e-5


def test_callback_sees_each_step():
    seen = []
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    sample_analytic_dpm(smooth_eps, x, AC, 5, synthetic_gamma(), callback=seen.append, disable=True)
    assert [d["i"] for d in seen] == list(range(5))
    assert [int(d["timestep"]) for d in seen] == analytic_dpm_timesteps(1000, 5).tolist()
    assert all(d["denoised"].abs().max() <= 1 for d in seen)  # the clamped x0 estimate


def test_timesteps_are_the_papers_even_trajectory():
    assert analytic_dpm_timesteps(1000, 10).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    # the paper's float stride accumulated on its index t + 1 and rounded half to even: 500.5 -> 500, t = 499, where
    # diffusers' 'linspace' rounds 499.5 -> 500
    assert analytic_dpm_timesteps(1000, 3).tolist() == [999, 499, 0]
    assert analytic_dpm_timesteps(1000, 3, "linspace").tolist() == [999, 500, 0]
    assert analytic_dpm_timesteps(1000, 1).tolist() == [999]
    assert analytic_dpm_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]


@pytest.fixture(scope="module")
def mixture_run():
    """The exact model of a Gaussian mixture, its Γ (100 draws), 5000 exact samples and 5000 noises (float64), shared
    by the sampling tests below: (model, gamma, reference, noise)."""
    gmm = fd.GaussianMixture.random(8, 2, seed=2, spread=2.0)
    model = ExactEps(gmm, AC)
    data = gmm.sample(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gamma = estimate_gamma(model, AC, data, samples_per_step=100, batch_size=5000, data_range=None,
                           generator=torch.Generator().manual_seed(1), cache=False, disable=True)
    reference = gmm.sample(5000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    noise = torch.randn(5000, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return model, gamma, reference, noise


def test_analytic_variance_beats_ddpm_variance_on_mixture(mixture_run):
    """Few steps on a Gaussian mixture with its exact model: the optimal variance brings the samples closer to the
    data than DDPM's β̃ in the same loop. Frechet distance of 5000 samples in data space against 5000 exact ones,
    measured (float64, seeds as below): 10 steps 0.026 vs 0.24, 25 steps 0.0089 vs 0.039 (DDPM's β: 0.066 / 0.011;
    5000 exact samples against the reference: 0.0035)."""
    model, gamma, reference, noise = mixture_run
    distance = fd.metrics.frechet_distance_of_features
    for steps in (10, 25):
        analytic = sample_analytic_dpm(model, noise, AC, steps, gamma, data_range=None, clip_last_noise=None,
                                       generator=torch.Generator().manual_seed(8), disable=True)
        ddpm = solvers.sample(AnalyticDPM(AC, None, 1.0, "small", None, None), model, noise,
                              analytic_dpm_timesteps(1000, steps), disable=True,
                              generator=torch.Generator().manual_seed(8), k_diffusion_rng=False)
        ours, theirs = distance(analytic, reference), distance(ddpm, reference)
        assert ours < 0.5 * theirs, (steps, ours, theirs)


def test_sampling_on_the_optimal_trajectory(mixture_run):
    """timestep_spacing="optimal" samples the Gaussian mixture on optimal_timesteps (the AnalyticDPM solver on them,
    the callback sees them) and is far closer to the data than DDPM's β̃ on even timesteps. Measured (float64, seeds as
    below, Γ from 100 draws, above 1 from t = 536: the top 928 timesteps even): Frechet distance 0.056 at 10 steps
    (0.026 on even timesteps, DDPM's β̃ 0.24)."""
    model, gamma, reference, noise = mixture_run
    timesteps = optimal_timesteps(gamma, AC, 10)
    seen = []
    optimal = sample_analytic_dpm(model, noise, AC, 10, gamma, timestep_spacing="optimal", data_range=None,
                                  clip_last_noise=None, generator=torch.Generator().manual_seed(8), disable=True,
                                  callback=lambda d: seen.append(int(d["timestep"])))
    assert seen == timesteps.tolist()
    solver = AnalyticDPM(AC, gamma, 1.0, "analytic", None, None)
    assert torch.equal(optimal, solvers.sample(solver, model, noise, timesteps, disable=True, k_diffusion_rng=False,
                                               generator=torch.Generator().manual_seed(8)))
    ddpm = solvers.sample(AnalyticDPM(AC, None, 1.0, "small", None, None), model, noise,
                          analytic_dpm_timesteps(1000, 10), disable=True, generator=torch.Generator().manual_seed(8),
                          k_diffusion_rng=False)
    distance = fd.metrics.frechet_distance_of_features
    assert distance(optimal, reference) < 0.5 * distance(ddpm, reference)


# ---------------------------------------------------------------- bad input


def _gamma_missing_one():
    return GammaEstimate(torch.tensor([0, 111, 222, 333, 444, 555, 666, 777, 999]), torch.full((9,), 0.5,
                         dtype=torch.float64), torch.zeros(9, dtype=torch.float64), 10)


@pytest.mark.parametrize("call,error,match", [
    (lambda: estimate_gamma(3, AC, torch.zeros(4, 2)), TypeError, "eps_model must be callable"),
    (lambda: estimate_gamma(smooth_eps, AC, [[0.0]]), TypeError, "data must be a floating-point tensor"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.zeros(4, 2, dtype=torch.long)), TypeError, "data must be"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.zeros(4)), ValueError, r"data must be .* got shape \(4,\)"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.tensor([[0.0], [math.nan]])), ValueError, "data contains NaN"),
    (lambda: estimate_gamma(smooth_eps, AC.double() * 2, torch.zeros(4, 2)), ValueError, "alphas_cumprod"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.zeros(4, 2), [1000]), ValueError,
     r"timesteps\[0\] = 1000 must be an integer in \[0, 999\]"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.zeros(4, 2), torch.tensor([1.5])), ValueError, "integer"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.zeros(4, 2), "all"), TypeError, "timesteps must be"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.zeros(4, 2), samples_per_step=1), ValueError,
     "samples_per_step must be an integer >= 2, got 1"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.zeros(4, 2), batch_size=2.0), TypeError, "batch_size"),
    (lambda: estimate_gamma(smooth_eps, AC, torch.zeros(4, 2), generator=0), TypeError, "generator"),
    (lambda: estimate_gamma(lambda x, t: x[:, :1], AC, torch.zeros(4, 2), [3], cache=False), ValueError,
     r"eps_model returned .*shape \(100, 1\).* for x of shape \(100, 2\); expected a floating-point tensor of the same shape"),
    (lambda: estimate_gamma(lambda x, t: x * torch.where(t > 5, math.nan, 1.0)[:, None], AC, torch.zeros(4, 2),
                            [3, 7, 9], samples_per_step=2, cache=False, disable=True),
     FloatingPointError, r"non-finite values at timesteps \[7, 9\]"),
    (lambda: optimal_variance(AC, [0, 10], torch.ones(2)), ValueError, "timesteps must be strictly decreasing"),
    (lambda: optimal_variance(AC, [10, 0], torch.ones(3)), ValueError, r"one value per timestep, shape \(2,\)"),
    (lambda: optimal_variance(AC, [10, 0], torch.tensor([1.0, math.nan])), ValueError,
     r"gamma must be finite and >= 0 \(a mean square\), got gamma\[1\] = nan at timestep 0"),
    (lambda: optimal_variance(AC, [10, 0], [0.5, 0.5]), TypeError, "gamma must be a GammaEstimate or a tensor"),
    (lambda: optimal_variance(AC, [10, 0], torch.ones(2), eta=1.5), ValueError, "eta must be in"),
    (lambda: optimal_variance(AC, [10, 0], torch.ones(2), eta="1"), TypeError, "eta must be a real number"),
    (lambda: optimal_variance(AC, [10, 0], torch.ones(2), data_range=(1, -1)), ValueError, "low < high"),
    (lambda: optimal_variance(AC, [10, 0], torch.ones(2), data_range=1.0), TypeError, "data_range must be"),
    (lambda: optimal_variance(AC, [10, 0], torch.ones(2), clip="yes"), TypeError, "clip must be a bool"),
    (lambda: optimal_variance(AC, [10, 0], _gamma_missing_one()), ValueError, r"does not cover timesteps \[10\]"),
    (lambda: GammaEstimate(torch.arange(3), torch.tensor([0.1, -0.1, 0.1]), torch.zeros(3), 5), ValueError,
     r"gamma must be finite and >= 0, got gamma\[1\] = -0.1\d* at timestep 1"),
    (lambda: GammaEstimate(torch.arange(3), torch.tensor([0.1, math.inf, 0.1]), torch.zeros(3), 5), ValueError,
     "gamma must be finite"),
    (lambda: GammaEstimate(torch.tensor([0, 2, 1]), torch.ones(3), torch.zeros(3), 5), ValueError,
     "timesteps must be strictly increasing"),
    (lambda: GammaEstimate(torch.arange(3), torch.ones(2), torch.zeros(3), 5), ValueError, "one value per timestep"),
    (lambda: GammaEstimate(torch.arange(3), torch.ones(3), torch.zeros(3), 0), ValueError, "samples must be"),
    (lambda: sample_analytic_dpm(smooth_eps, torch.zeros(2, 3), AC, 10, _gamma_missing_one()), ValueError,
     r"gamma does not cover timesteps \[888\] \(1 of the 10 used\)"),
    (lambda: sample_analytic_dpm(smooth_eps, torch.zeros(2, 3), AC, 10, None), TypeError,
     "gamma must be a fd.analytic_dpm.GammaEstimate"),
    (lambda: sample_analytic_dpm(smooth_eps, torch.zeros(2, 3), AC, 0, synthetic_gamma()), ValueError,
     "steps must be an integer >= 1, got 0"),
    (lambda: sample_analytic_dpm(smooth_eps, torch.zeros(2, 3), AC, 1001, synthetic_gamma()), ValueError,
     r"steps must be in \[1, 1000\]"),
    (lambda: sample_analytic_dpm(smooth_eps, torch.zeros(2, 3), AC, 10, synthetic_gamma(), timestep_spacing="even"),
     ValueError, "timestep_spacing must be one of 'linear', 'leading', 'trailing', 'linspace', 'optimal', got 'even'"),
    (lambda: sample_analytic_dpm(smooth_eps, torch.zeros(2, 3), AC, 10, synthetic_gamma(), data_range=None),
     ValueError, "with data_range=None .* pass clip_last_noise=None"),
    (lambda: sample_analytic_dpm(smooth_eps, torch.zeros(2, 3), AC, 10, synthetic_gamma(), clip_last_noise=0),
     ValueError, "clip_last_noise must be > 0"),
    (lambda: sample_analytic_dpm(smooth_eps, [0.0], AC, 10, synthetic_gamma()), TypeError, "x must be a torch.Tensor"),
    (lambda: sample_analytic_dpm(smooth_eps, torch.zeros(2, 3), AC, 10, _gamma_missing_one(),
                                 timestep_spacing="optimal"), ValueError, r"gamma does not cover timesteps"),
    (lambda: optimal_timesteps(synthetic_gamma(), AC, 0), ValueError, "steps must be an integer >= 1, got 0"),
    (lambda: optimal_timesteps(synthetic_gamma(), AC, 2.0), TypeError, "steps must be an integer >= 1, got 2.0"),
    (lambda: optimal_timesteps(synthetic_gamma(), AC, 1001), ValueError, r"steps must be in \[1, 1000\]"),
    (lambda: optimal_timesteps(torch.full((999,), 0.5), AC, 10), ValueError,
     r"gamma must be a GammaEstimate or one value per timestep, shape \(1000,\), got shape \(999,\)"),
    (lambda: optimal_timesteps(torch.full((1000,), -0.5), AC, 10), ValueError, r"gamma must be finite and >= 0"),
    (lambda: optimal_timesteps([0.5] * 1000, AC, 10), TypeError, "gamma must be a GammaEstimate or a tensor"),
    (lambda: optimal_timesteps(_gamma_missing_one(), AC, 10), ValueError,
     r"gamma does not cover timesteps \[1, 2, .*\(991 of the 1000 used\)"),
    (lambda: optimal_timesteps(GammaEstimate(torch.arange(1000), torch.full((1000,), 0.5), torch.zeros(1000), 10,
                                             analytic_dpm.schedule_digest(fd.ddpm_alphas_cumprod(1000, beta_end=0.03))),
                               AC, 10), ValueError, "gamma was estimated on another alphas_cumprod"),
    (lambda: optimal_timesteps(synthetic_gamma(), AC.double() * 2, 10), ValueError, "alphas_cumprod"),
    (lambda: optimal_timesteps(synthetic_gamma(), AC, 10, eta=0.0), ValueError,
     r"eta must be in \(0, 1\]: the KL bound of Theorem 3 is infinite for DDIM's deterministic steps"),
    (lambda: optimal_timesteps(synthetic_gamma(), AC, 10, eta=1.5), ValueError, r"eta must be in \[0, 1\]"),
    (lambda: AnalyticDPM(AC, synthetic_gamma(), variance="small"), ValueError, "gamma is read by variance='analytic'"),
    (lambda: AnalyticDPM(AC, variance="exact"), ValueError, "variance must be one of 'analytic'"),
    (lambda: AnalyticDPM(AC, eta=0.5, variance="large"), ValueError, "variance='large' .* eta=1; got eta=0.5"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_schedule_for_solver():
    solver = AnalyticDPM(AC, synthetic_gamma())
    with pytest.raises(ValueError, match="timesteps must be strictly decreasing"):
        solvers.sample(solver, smooth_eps, torch.zeros(2, 3), torch.tensor([0, 500]), disable=True)
    with pytest.raises(TypeError, match="timesteps must be a torch.Tensor"):
        solvers.sample(solver, smooth_eps, torch.zeros(2, 3), [500, 0], disable=True)


def test_load_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is a safetensors file but not an Analytic-DPM Γ estimate file written by"):
        GammaEstimate.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        GammaEstimate.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file"):
        GammaEstimate.load(tmp_path / "missing.safetensors")


def test_module_exports():
    assert analytic_dpm.estimate_gamma is estimate_gamma and analytic_dpm.optimal_timesteps is optimal_timesteps
    assert solvers.AnalyticDPM is AnalyticDPM and solvers.sample_analytic_dpm is sample_analytic_dpm


@pytest.mark.gpu
@pytest.mark.parametrize("eta,variance", [(1.0, "analytic"), (0.0, "analytic"), (1.0, "large"), (0.0, "small")])
def test_cuda_graph_equals_eager(eta, variance):
    """The ancestral loop inside fd.Sampler's graph equals the same sampler run eagerly with the same seed."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gmm = fd.GaussianMixture.random(3, 4, seed=0, spread=1.0)  # its own copy: .cuda() moves it in place
    model = ExactEps(gmm, AC).cuda()
    solver = AnalyticDPM(AC, synthetic_gamma() if variance == "analytic" else None, eta, variance)
    timesteps = analytic_dpm_timesteps(1000, 10).cuda()
    noise = torch.randn(64, 4, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    graphed = fd.Sampler(model, solver, timesteps)
    eager = fd.Sampler(model, solver, timesteps, cuda_graph=False)
    torch.manual_seed(7)
    first = graphed(noise)
    torch.manual_seed(7)
    torch.testing.assert_close(first, eager(noise), rtol=1e-4, atol=1e-4)
    assert graphed.captures == 1
