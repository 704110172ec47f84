"""k-diffusion 0.1.1's samplers on the fused ops: each against an independent re-statement of k-diffusion's update
rules (fused_diffusion/testing/reference_samplers.py), the random stream it draws from, repeated sigmas, convergence
on the analytic Gaussian mixture, launches per stage, graph mode and errors."""
import sys
import warnings

import pytest
import torch

import fused_diffusion as fd
from fused_diffusion.ops import count_op_launches
from fused_diffusion.solvers.step_noise import advance_like_randn

from fused_diffusion.testing import reference_samplers as ref
from mixture import SIGMA_MAX, SIGMA_MIN, on, rel_err

torchsde = pytest.importorskip("torchsde")  # the SDE samplers' default Brownian-tree noise


@pytest.fixture(autouse=True)
def _quiet_torchsde():
    # torchsde rounds the tree's ends to 1e-6 and warns when k-diffusion queries float32 sigmas just past them
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
        yield


def sigmas(n, dtype=torch.float64):
    return fd.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX).to(dtype)


# (id, ours, reference, options): every sampler over a sigma schedule, the stochastic ones with their default noise
SCHEDULE_SAMPLERS = [
    ("dpm_2_ancestral", fd.sample_dpm_2_ancestral, ref.dpm_2_ancestral, {}),
    ("dpm_2_ancestral_eta", fd.sample_dpm_2_ancestral, ref.dpm_2_ancestral, dict(eta=0.5, s_noise=1.01)),
    ("dpm_2_ancestral_eta0", fd.sample_dpm_2_ancestral, ref.dpm_2_ancestral, dict(eta=0.0)),
    ("dpm_2_ancestral_eta3", fd.sample_dpm_2_ancestral, ref.dpm_2_ancestral, dict(eta=3.0)),  # sigma_down = 0
    ("lms", fd.sample_lms, ref.lms, {}),
    ("lms_order2", fd.sample_lms, ref.lms, dict(order=2)),
    ("dpmpp_2s_ancestral", fd.sample_dpmpp_2s_ancestral, ref.dpmpp_2s_ancestral, {}),
    ("dpmpp_2s_ancestral_eta0", fd.sample_dpmpp_2s_ancestral, ref.dpmpp_2s_ancestral, dict(eta=0.0)),
    ("dpmpp_2s_ancestral_eta3", fd.sample_dpmpp_2s_ancestral, ref.dpmpp_2s_ancestral, dict(eta=3.0)),
    ("dpmpp_sde", fd.sample_dpmpp_sde, ref.dpmpp_sde, {}),
    ("dpmpp_sde_r", fd.sample_dpmpp_sde, ref.dpmpp_sde, dict(eta=0.5, s_noise=1.01, r=1 / 3)),
    ("dpmpp_sde_eta0", fd.sample_dpmpp_sde, ref.dpmpp_sde, dict(eta=0.0)),
    ("dpmpp_2m_sde", fd.sample_dpmpp_2m_sde, ref.dpmpp_2m_sde, {}),
    ("dpmpp_2m_sde_heun", fd.sample_dpmpp_2m_sde, ref.dpmpp_2m_sde, dict(eta=0.7, s_noise=1.01, solver_type="heun")),
    ("dpmpp_2m_sde_eta0", fd.sample_dpmpp_2m_sde, ref.dpmpp_2m_sde, dict(eta=0.0)),
    ("dpmpp_3m_sde", fd.sample_dpmpp_3m_sde, ref.dpmpp_3m_sde, {}),
    ("dpmpp_3m_sde_eta", fd.sample_dpmpp_3m_sde, ref.dpmpp_3m_sde, dict(eta=0.5, s_noise=1.01)),
    ("dpmpp_3m_sde_eta0", fd.sample_dpmpp_3m_sde, ref.dpmpp_3m_sde, dict(eta=0.0)),
    ("euler_ancestral_eta0", fd.sample_euler_ancestral, ref.euler_ancestral, dict(eta=0.0)),
    ("euler", fd.sample_euler, ref.euler, {}),
    ("heun", fd.sample_heun, ref.heun, {}),
    ("dpm_2", fd.sample_dpm_2, ref.dpm_2, {}),
]
IDS = [case[0] for case in SCHEDULE_SAMPLERS]


def same_run(first, second):
    """Both runs from the same global seed: their results, and whether the global generator ended in one state."""
    torch.manual_seed(123)
    a = first()
    state = torch.get_rng_state()
    torch.manual_seed(123)
    b = second()
    return a, b, torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name,ours,theirs,options", SCHEDULE_SAMPLERS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("end", ["zero", "above_zero"])
def test_matches_k_diffusion_and_its_random_stream(backend, gmm, noise, name, ours, theirs, options, dtype, end):
    """Same result and the same draws from the global generator (the Brownian tree's seed included)."""
    _, device = backend
    gmm = on(gmm, device)
    s = sigmas(7, dtype).to(device)
    s = s[:-1] if end == "above_zero" else s
    x = noise.to(device, dtype)
    expected, got, same_stream = same_run(lambda: theirs(gmm, x, s, **options),
                                          lambda: ours(gmm, x, s, disable=True, **options))
    assert got.dtype == dtype and got.shape == x.shape
    assert rel_err(got, expected) < (1e-10 if dtype == torch.float64 else 1e-5)
    assert same_stream


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 10])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_dpm_fast_matches_k_diffusion(gmm, noise, n, dtype, eta):
    x = noise.to(dtype)
    expected, got, same_stream = same_run(lambda: ref.dpm_fast(gmm, x, SIGMA_MIN, SIGMA_MAX, n, eta=eta),
                                          lambda: fd.sample_dpm_fast(gmm, x, SIGMA_MIN, SIGMA_MAX, n, eta=eta, disable=True))
    assert rel_err(got, expected) < (1e-10 if dtype == torch.float64 else 1e-5)
    assert same_stream


@pytest.mark.parametrize("options", [{}, dict(order=2), dict(eta=0.5, s_noise=1.01), dict(h_init=3.0, rtol=0.02),
                                     dict(pcoeff=0.2, icoeff=0.5, dcoeff=0.1, accept_safety=0.9)],
                         ids=["default", "order2", "eta", "rejects", "pid"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dpm_adaptive_matches_k_diffusion(gmm, noise, options, dtype):
    x = noise.to(dtype)
    (expected, their_info), (got, info), same_stream = same_run(
        lambda: ref.dpm_adaptive(gmm, x, SIGMA_MIN, SIGMA_MAX, return_info=True, **options),
        lambda: fd.sample_dpm_adaptive(gmm, x, SIGMA_MIN, SIGMA_MAX, return_info=True, disable=True, **options))
    assert info == their_info
    # float32: the step sizes follow the error estimate, a difference of two nearly equal float32 solutions, so
    # rounding moves the grid itself a little
    assert rel_err(got, expected) < (1e-10 if dtype == torch.float64 else 2e-3)
    assert same_stream


def test_rejected_steps_are_exercised(gmm, noise):
    _, info = fd.sample_dpm_adaptive(gmm, noise, SIGMA_MIN, SIGMA_MAX, h_init=3.0, rtol=0.02, return_info=True,
                                     disable=True)
    assert info["n_reject"] > 0 and info["nfe"] == 3 * info["steps"]


class TestRandomStream:
    """A seeded script sampling several batches reproduces k-diffusion batch for batch; k_diffusion_rng=False and
    fd.Sampler skip the draws whose values are never used."""

    @pytest.mark.parametrize("ours,theirs", [(fd.sample_euler, ref.euler), (fd.sample_heun, ref.heun),
                                             (fd.sample_dpm_2, ref.dpm_2)], ids=["euler", "heun", "dpm_2"])
    def test_second_batch_matches(self, gmm, noise, ours, theirs):
        s = sigmas(6)

        def script(sampler):
            torch.manual_seed(0)
            first = sampler(gmm, torch.randn_like(noise) * SIGMA_MAX, s)
            return first, sampler(gmm, torch.randn_like(noise) * SIGMA_MAX, s)

        expected = script(theirs)
        got = script(lambda *a: ours(*a, disable=True))
        for a, b in zip(got, expected):
            assert rel_err(a, b) < 1e-12

    @pytest.mark.parametrize("sampler,options", [
        (fd.sample_euler, {}), (fd.sample_heun, {}), (fd.sample_dpm_2, {}), (fd.sample_euler_ancestral, dict(eta=0.0)),
        (fd.sample_dpm_2_ancestral, dict(eta=0.0)), (fd.sample_dpmpp_2s_ancestral, dict(eta=0.0)),
        (fd.sample_dpmpp_sde, dict(eta=0.0)), (fd.sample_dpmpp_2m_sde, dict(eta=0.0)),
        (fd.sample_dpmpp_3m_sde, dict(eta=0.0)),
    ], ids=lambda v: getattr(v, "__name__", ""))
    def test_unused_draws_counted_and_skippable(self, gmm, noise, sampler, options):
        s = sigmas(5)
        torch.manual_seed(0)
        before = torch.get_rng_state()
        with_draws = sampler(gmm, noise, s, disable=True, **options)
        assert not torch.equal(before, torch.get_rng_state())  # k-diffusion's stream advanced
        torch.manual_seed(0)
        without = sampler(gmm, noise, s, disable=True, k_diffusion_rng=False, **options)
        assert torch.equal(before, torch.get_rng_state())  # nothing drawn
        assert torch.equal(with_draws, without)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("shape", [(16,), (17,), (2, 3, 5, 7), (1, 4, 8, 8), (3, 4, 33, 31)])
    @pytest.mark.parametrize("seeded", [False, True], ids=["global", "generator"])
    def test_discarded_draw_advances_like_randn(self, shape, dtype, seeded):
        """The uniforms that stand in for a discarded draw leave the generator where randn would."""
        def state_after(draw):
            generator = torch.Generator().manual_seed(3) if seeded else None
            torch.manual_seed(3)
            draw(generator)
            return (generator or torch.default_generator).get_state()

        expected = state_after(lambda g: torch.randn(shape, dtype=dtype, generator=g))
        assert torch.equal(state_after(lambda g: advance_like_randn(torch.Size(shape), dtype, g)), expected)

    def test_draw_count_equals_k_diffusion(self, gmm, noise):
        """Counted through a noise sampler: the calls k-diffusion makes, no more."""
        s = sigmas(6)
        for ours, theirs in [(fd.sample_dpm_2_ancestral, ref.dpm_2_ancestral), (fd.sample_dpmpp_sde, ref.dpmpp_sde),
                             (fd.sample_dpmpp_2s_ancestral, ref.dpmpp_2s_ancestral),
                             (fd.sample_euler_ancestral, ref.euler_ancestral)]:
            calls = {"ours": [], "theirs": []}

            def counting(who):
                return lambda a, b: calls[who].append((float(a), float(b))) or torch.ones_like(noise)

            ours(gmm, noise, s, noise_sampler=counting("ours"), disable=True)
            theirs(gmm, noise, s, noise_sampler=counting("theirs"))
            assert calls["ours"] == calls["theirs"] and calls["ours"]


class TestRepeatedSigma:
    """k-diffusion accepts a schedule that repeats a sigma (a step of length 0)."""

    SCHEDULE = torch.tensor([20.0, 5.0, 5.0, 1.0, 0.1, 0.0], dtype=torch.float64)

    @pytest.mark.parametrize("ours,theirs,options", [
        (fd.sample_euler, ref.euler, {}), (fd.sample_heun, ref.heun, {}), (fd.sample_dpm_2, ref.dpm_2, {}),
        (fd.sample_euler_ancestral, ref.euler_ancestral, {}), (fd.sample_dpm_2_ancestral, ref.dpm_2_ancestral, {}),
        (fd.sample_dpmpp_2s_ancestral, ref.dpmpp_2s_ancestral, {}),
    ], ids=lambda v: getattr(v, "__name__", ""))
    def test_single_step_samplers_as_k_diffusion(self, gmm, noise, ours, theirs, options):
        expected, got, same_stream = same_run(lambda: theirs(gmm, noise, self.SCHEDULE),
                                              lambda: ours(gmm, noise, self.SCHEDULE, disable=True))
        assert rel_err(got, expected) < 1e-10 and same_stream

    def test_sde_with_gaussian_noise_as_k_diffusion(self, gmm, noise):
        expected, got, _ = same_run(
            lambda: ref.dpmpp_sde(gmm, noise, self.SCHEDULE, noise_sampler=ref.default_noise_sampler(noise)),
            lambda: fd.sample_dpmpp_sde(gmm, noise, self.SCHEDULE, noise_sampler=fd.default_noise_sampler(noise),
                                        disable=True))
        assert rel_err(got, expected) < 1e-10

    def test_brownian_increment_over_an_empty_interval_is_refused(self, gmm, noise):
        with pytest.raises(ValueError, match="empty interval.*default_noise_sampler"):
            fd.sample_dpmpp_sde(gmm, noise, self.SCHEDULE, disable=True)  # k-diffusion returns NaN

    @pytest.mark.parametrize("sampler,options", [(fd.sample_dpmpp_2m, {}), (fd.sample_lms, {}),
                                                 (fd.sample_dpmpp_2m_sde, dict(eta=0.0)),
                                                 (fd.sample_dpmpp_3m_sde, dict(eta=0.0))],
                             ids=["dpmpp_2m", "lms", "dpmpp_2m_sde", "dpmpp_3m_sde"])
    def test_multistep_samplers_refuse_where_k_diffusion_returns_nan(self, gmm, noise, sampler, options):
        with pytest.raises(ValueError, match=r"step \d \(schedule values 5, 5\)|step \d \(schedule values 5, 1\)"):
            sampler(gmm, noise, self.SCHEDULE, disable=True, **options)

    def test_repeat_before_the_final_zero_is_fine_for_dpmpp_2m(self, gmm, noise):
        schedule = torch.tensor([20.0, 5.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        got = fd.sample_dpmpp_2m(gmm, noise, schedule, disable=True)
        assert rel_err(got, ref.dpmpp_2m(gmm, noise, schedule)) < 1e-10

    def test_increasing_schedule_still_refused(self, gmm, noise):
        with pytest.raises(ValueError, match=r"must be decreasing: sigmas\[1\] = 5.0 < sigmas\[2\] = 6.0"):
            fd.sample_euler(gmm, noise, torch.tensor([20.0, 5.0, 6.0, 0.0]), disable=True)


@pytest.mark.parametrize(
    "name,sampler,order,steps,end",
    [
        ("lms", fd.sample_lms, 4.0, [64, 128, 256], "sigma_min"),
        ("lms_order3", lambda *a, **k: fd.sample_lms(*a, order=3, **k), 3.0, [64, 128, 256], "sigma_min"),
        ("dpmpp_2m_sde_eta0", lambda *a, **k: fd.sample_dpmpp_2m_sde(*a, eta=0.0, **k), 2.0, [32, 64, 128], "zero"),
        # third order per step, but its first-order and second-order start steps bound the global order by 2
        ("dpmpp_3m_sde_eta0", lambda *a, **k: fd.sample_dpmpp_3m_sde(*a, eta=0.0, **k), 2.0, [64, 128, 256], "zero"),
        ("dpm_fast", None, 3.0, [60, 120, 240], "sigma_min"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_ode_convergence_order(gmm, noise, name, sampler, order, steps, end):
    """Measured order on the probability-flow ODE: against the exact solution down to sigma_min (then, for schedules
    ending in 0, the final step to 0 every such solver takes, x -> D)."""
    exact = gmm.ode_solution(noise, SIGMA_MAX, SIGMA_MIN)
    if end == "zero":
        exact = gmm(exact, torch.full((len(noise),), SIGMA_MIN, dtype=noise.dtype))
    errors = []
    for n in steps:
        if name == "dpm_fast":
            got = fd.sample_dpm_fast(gmm, noise, SIGMA_MIN, SIGMA_MAX, n, disable=True)
        else:
            s = sigmas(n)
            got = sampler(gmm, noise, s if end == "zero" else s[:-1], disable=True)
        errors.append(rel_err(got, exact))
    # LMS's lower-order start steps keep its measured slope near 3.6 at these step counts
    assert abs(ref.log_slope(steps, errors) - order) < 0.45, errors


@pytest.mark.parametrize("sampler,options", [
    (fd.sample_euler_ancestral, {}), (fd.sample_dpm_2_ancestral, {}), (fd.sample_dpmpp_2s_ancestral, {}),
    (fd.sample_dpmpp_sde, {}), (fd.sample_dpmpp_2m_sde, {}), (fd.sample_dpmpp_2m_sde, dict(solver_type="heun")),
    (fd.sample_dpmpp_3m_sde, {}),
], ids=["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
        "dpmpp_2m_sde_heun", "dpmpp_3m_sde"])
def test_sde_samples_follow_the_mixture(sampler, options):
    """The samples' distribution against the mixture's exact one: 48 steps bring the Frechet distance to 4000 exact
    samples near the sampling noise (0.0004 between two exact sets, 0.001-0.003 measured for these samplers), far
    below what too little noise (s_noise = 0.5) gives (0.12-0.16)."""
    gmm = fd.GaussianMixture.random(3, 2, seed=3, spread=2.0)
    n = 4000
    generator = torch.Generator().manual_seed(0)
    exact = gmm.sample(n, generator, torch.float64)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64) * SIGMA_MAX
    s = fd.get_sigmas_karras(48, 0.02, SIGMA_MAX).double()
    torch.manual_seed(0)
    samples = sampler(gmm, noise, s, disable=True, **options)
    distance = fd.metrics.frechet_distance_of_features(samples, exact)
    starved = fd.metrics.frechet_distance_of_features(
        sampler(gmm, noise, s, disable=True, **{**options, "s_noise": 0.5}), exact)
    assert distance < 0.005 and starved > 20 * distance, (distance, starved)


@pytest.mark.parametrize("sampler,options,launches_per_step", [
    (fd.sample_dpm_2_ancestral, {}, 2),
    (fd.sample_lms, {}, 2),
    (fd.sample_dpmpp_2s_ancestral, {}, 2),
    (fd.sample_dpmpp_sde, {}, 2),
    (fd.sample_dpmpp_2m_sde, {}, 1),
    (fd.sample_dpmpp_3m_sde, {}, 1),
])
def test_one_launch_per_stage_noise_included(backend, gmm, noise, sampler, options, launches_per_step):
    """n steps of a schedule ending in 0: every step but the last (which returns D) makes `launches_per_step` fused
    launches, the noise an input of the update; LMS's last step is a regular one."""
    n = 6
    _, device = backend
    x = noise.to(device, torch.float32)
    is_lms = sampler is fd.sample_lms
    noise_option = {} if is_lms else dict(noise_sampler=fd.default_noise_sampler(x))
    with count_op_launches() as launches:
        sampler(on(gmm, device), x, sigmas(n, torch.float32).to(device), disable=True, **noise_option, **options)
    last = launches_per_step if is_lms else 0
    assert launches.count == (n - 1) * launches_per_step + last


@pytest.mark.parametrize("n,launches", [(3, 2 + 1), (6, 3 + 2 + 1), (7, 3 + 3 + 1), (10, 3 * 3 + 1)])
def test_dpm_fast_one_launch_per_stage(gmm, noise, n, launches):
    """A DPM-Solver-k step makes k lincombs (k - 1 intermediate points and the update, noise included)."""
    with count_op_launches() as counted:
        fd.sample_dpm_fast(gmm, noise.float(), SIGMA_MIN, SIGMA_MAX, n, eta=0.5, disable=True)
    assert counted.count == launches


def test_lms_weights_integrate_the_lagrange_polynomial():
    """Gauss-Legendre weights against scipy's adaptive quadrature of the same basis polynomials (k-diffusion's)."""
    from fused_diffusion.solvers.lms import lagrange_weights

    s = sigmas(9)
    for i in range(8):
        order = min(i + 1, 4)
        ours = lagrange_weights(s, i, order)
        theirs = torch.tensor([ref.lms_coeff(order, s.numpy(), i, j) for j in range(order)], dtype=torch.float64)
        assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-14)


class TestBrownianTree:
    def test_equals_k_diffusion_sampler(self):
        x = torch.zeros(3, 4, dtype=torch.float64)
        ours = fd.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=5)
        theirs = ref.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=5)
        for a, b in [(10.0, 3.0), (3.0, 0.1), (0.5, 7.0)]:
            assert torch.equal(ours(torch.tensor(a), torch.tensor(b)), theirs(torch.tensor(a), torch.tensor(b)))

    def test_per_item_seeds_do_not_depend_on_the_batch(self):
        x = torch.zeros(2, 5, dtype=torch.float64)
        pair = fd.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=[1, 2])(torch.tensor(10.0), torch.tensor(1.0))
        alone = fd.BrownianTreeNoiseSampler(x[:1], 0.1, 10.0, seed=[2])(torch.tensor(10.0), torch.tensor(1.0))
        assert torch.equal(pair[1], alone[0])

    def test_increments_are_unit_normal_and_additive(self):
        x = torch.zeros(20000, dtype=torch.float64)
        sampler = fd.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=0)
        a, b = sampler(torch.tensor(10.0), torch.tensor(4.0)), sampler(torch.tensor(4.0), torch.tensor(1.0))
        whole = sampler(torch.tensor(10.0), torch.tensor(1.0))
        assert abs(a.std().item() - 1) < 0.03 and abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.03
        # W(10) - W(1) = sum of the parts, up to torchsde's tolerance on query times (1e-6)
        torch.testing.assert_close(whole * 9**0.5, a * 6**0.5 + b * 3**0.5, atol=1e-6, rtol=0)

    def test_missing_torchsde_says_what_to_install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "torchsde", None)
        with pytest.raises(ImportError, match="pip install torchsde.*default_noise_sampler"):
            fd.sample_dpmpp_2m_sde(lambda x, s: x, torch.ones(2, 3), sigmas(3, torch.float32), disable=True)


class TestSampler:
    """fd.Sampler runs every capturable sampler; noise there is Gaussian from the generator (no Brownian tree)."""

    gmm = fd.GaussianMixture.random(3, 4, seed=0)
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20

    @pytest.mark.parametrize("solver,options", [
        ("dpm_2_ancestral", {}), ("lms", {}), ("dpmpp_2s_ancestral", {}), ("dpmpp_sde", {}), ("dpmpp_2m_sde", {}),
        ("dpmpp_2m_sde", dict(solver_type="heun")), ("dpmpp_3m_sde", {}), ("dpm_fast", dict(nfe=10)),
    ])
    def test_eager_sampler_equals_sample_function_with_gaussian_noise(self, solver, options):
        schedule = torch.tensor([SIGMA_MAX, SIGMA_MIN]) if solver == "dpm_fast" else sigmas(6)
        sampler = fd.Sampler(self.gmm, solver, schedule, **options)
        torch.manual_seed(3)
        got = sampler(self.noise)
        torch.manual_seed(3)
        gaussian = dict(k_diffusion_rng=False, noise_sampler=fd.default_noise_sampler(self.noise))
        if solver == "dpm_fast":
            expected = fd.sample_dpm_fast(self.gmm, self.noise, SIGMA_MIN, SIGMA_MAX, 10, disable=True, **gaussian)
        else:
            expected = getattr(fd, f"sample_{solver}")(self.gmm, self.noise, schedule, disable=True, **options,
                                                       **({} if solver == "lms" else gaussian))
        assert rel_err(got, expected) < 1e-12

    def test_dpm_adaptive_is_eager_only(self):
        with pytest.raises(ValueError, match="dpm_adaptive.*eager.*dpm_fast"):
            fd.Sampler(self.gmm, "dpm_adaptive", sigmas(6))

    def test_options_a_solver_does_not_take_are_named(self):
        with pytest.raises(TypeError, match=r"'dpmpp_2m' takes the options none; got \['eta'\]"):
            fd.Sampler(self.gmm, "dpmpp_2m", sigmas(6), eta=1.0)
        with pytest.raises(TypeError, match=r"takes the options \['eta', 's_noise', 'solver_type'\]; got \['r'\]"):
            fd.Sampler(self.gmm, "dpmpp_2m_sde", sigmas(6), r=0.5)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="dpm_fast needs nfe"):
            fd.Sampler(self.gmm, "dpm_fast", torch.tensor([SIGMA_MAX, SIGMA_MIN]))
        with pytest.raises(ValueError, match=r"\[sigma_max, sigma_min\]"):
            fd.Sampler(self.gmm, "dpm_fast", sigmas(6), nfe=6)
        with pytest.raises(ValueError, match="solver_type must be 'midpoint' or 'heun', got 'rk4'"):
            fd.sample_dpmpp_2m_sde(self.gmm, self.noise, sigmas(6), solver_type="rk4", disable=True)
        with pytest.raises(ValueError, match="order must be an integer from 1 to 5, got 6"):
            fd.sample_lms(self.gmm, self.noise, sigmas(6), order=6, disable=True)
        with pytest.raises(ValueError, match="order must be 2 or 3, got 4"):
            fd.sample_dpm_adaptive(self.gmm, self.noise, SIGMA_MIN, SIGMA_MAX, order=4, disable=True)
        with pytest.raises(ValueError, match="sigma_min must be > 0, got 0.0"):
            fd.sample_dpm_fast(self.gmm, self.noise, 0.0, SIGMA_MAX, 5, disable=True)
        with pytest.raises(ValueError, match="eta must be >= 0"):
            fd.sample_dpmpp_3m_sde(self.gmm, self.noise, sigmas(6), eta=-1.0, disable=True)

    def test_all_k_diffusion_names_importable(self):
        names = {"sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpm_2_ancestral",
                 "sample_lms", "sample_dpm_fast", "sample_dpm_adaptive", "sample_dpmpp_2s_ancestral",
                 "sample_dpmpp_sde", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"}
        assert set(fd.K_DIFFUSION_SAMPLERS) == names and all(callable(getattr(fd, n)) for n in names)


@pytest.mark.gpu
class TestCudaGraph:
    """Graph replay of every capturable k-diffusion sampler equals its eager run with the same seed."""

    @pytest.mark.parametrize("solver,options", [
        ("dpm_2_ancestral", {}), ("lms", {}), ("dpmpp_2s_ancestral", {}), ("dpmpp_sde", {}), ("dpmpp_2m_sde", {}),
        ("dpmpp_2m_sde", dict(solver_type="heun")), ("dpmpp_3m_sde", {}), ("dpm_fast", dict(nfe=10)),
    ])
    def test_graph_equals_eager(self, solver, options):
        gmm = fd.GaussianMixture.random(3, 4, seed=0).cuda()
        noise = torch.randn(64, 4, device="cuda") * SIGMA_MAX
        schedule = torch.tensor([SIGMA_MAX, SIGMA_MIN]) if solver == "dpm_fast" else sigmas(8, torch.float32)
        sampler = fd.Sampler(gmm, solver, schedule.cuda(), **options)
        torch.manual_seed(7)
        graphed = sampler(noise)
        eager = fd.Sampler(gmm, solver, schedule.cuda(), cuda_graph=False, **options)
        torch.manual_seed(7)
        torch.testing.assert_close(graphed, eager(noise), rtol=1e-4, atol=1e-4)
        torch.manual_seed(7)
        torch.testing.assert_close(sampler(noise), graphed)
        assert sampler.captures == 1
