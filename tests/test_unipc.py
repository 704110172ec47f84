"""UniPC (solvers/unipc.py): against diffusers' UniPCMultistepScheduler loop, against a re-statement of the paper's
UniP/UniC written here, its measured convergence orders on the analytic Gaussian mixture, one fused launch per
stage, its option errors, and fd.Sampler (eager here, graph replay on a GPU)."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch

import fused_diffusion as fd
from fused_diffusion.ops import count_op_launches

from fused_diffusion.testing import reference_samplers as ref
from mixture import SIGMA_MAX, SIGMA_MIN, on, rel_err


def sigmas(n, dtype=torch.float64):
    return fd.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX).to(dtype)


def karras64(n, rho=7.0):
    """The Karras schedule computed in float64 (get_sigmas_karras rounds to float32, k-diffusion's: its sigma_max
    then misses SIGMA_MAX by ~1e-7 relative, an error floor near 2e-7 that hides fourth order)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (SIGMA_MAX ** (1 / rho) + ramp * (SIGMA_MIN ** (1 / rho) - SIGMA_MAX ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


# ---- (a) diffusers' UniPCMultistepScheduler loop, epsilon prediction in VP space, on the mixture's exact eps


def diffusers_case(dtype, steps, order, variant, lower_order_final, final, spacing, disable_corrector,
                   **config):
    """Runs diffusers' loop and ours on the same noise and model: returns (ours, its final output or None when it is
    not finite or raises, ours' callback x per step and its step inputs, both EDM, and D at its last input)."""
    from diffusers import UniPCMultistepScheduler

    gmm = fd.GaussianMixture.random(3, 4, seed=0, spread=1.0)
    scheduler = UniPCMultistepScheduler(solver_order=order, solver_type=variant, lower_order_final=lower_order_final,
                                        final_sigmas_type=final, timestep_spacing=spacing,
                                        disable_corrector=list(disable_corrector), **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2's copy keyword, inside diffusers
        scheduler.set_timesteps(steps)
    if dtype == torch.float64:
        scheduler.sigmas = scheduler.sigmas.double()  # its coefficients then come out in float64 too
    schedule, timesteps = scheduler.sigmas.clone(), scheduler.timesteps.clone()
    assert len(set(timesteps.tolist())) == len(timesteps)
    sigma_of = {int(t): schedule[k].to(dtype) for k, t in enumerate(timesteps)}

    def eps_model(x_vp, t):  # the exact eps of the mixture at the scheduler's sigma for timestep t
        s = sigma_of[int(t)]
        x = x_vp * (1 + s**2) ** 0.5
        return (x - gmm(x, s.expand(len(x)))) / s

    def denoiser(x, sigma):  # D(x, sigma) = x - sigma eps through the same eps model, at the scheduler's timestep
        k = int((schedule[:-1].double() - sigma[0].double()).abs().argmin())
        s = schedule[k].to(dtype)
        return x - s * eps_model(x / (1 + s**2) ** 0.5, timesteps[k])

    noise = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    scale = lambda k: (1 + schedule[k].to(dtype) ** 2) ** 0.5  # noqa: E731  x_edm = x_vp * scale
    x, inputs, theirs = noise * scheduler.init_noise_sigma, [], None
    for k, t in enumerate(timesteps):
        inputs.append(x * scale(k))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                x = scheduler.step(eps_model(x, t), t, x).prev_sample
            except RuntimeError:  # its order-3 solve at a step to sigma = 0 is singular (torch's LinAlgError)
                x = None
                break
    if x is not None and torch.isfinite(x).all():
        theirs = x * scale(-1)
    last = len(timesteps) - 1
    denoised_last = denoiser(inputs[-1], schedule[last].expand(8))
    seen = []
    ours = fd.sample_unipc(denoiser, noise * scale(0), schedule.to(dtype), order=order, variant=variant,
                           disable_corrector=disable_corrector, lower_order_final=lower_order_final,
                           callback=seen.append, disable=True)
    return ours, theirs, [info["x"] for info in seen], inputs, denoised_last


SPACINGS = ("linspace", "leading", "trailing")
DISABLED = ((), (0,), (2,))
STEPS = (1, 2, 3, 5, 10, 25)
# every (order, variant, lower_order_final, final sigma) with the step counts, spacings and disabled correctors
# taking turns, then each order over every step count with the defaults
CASES = [
    (order, variant, STEPS[k % 6], lower_order_final, final, SPACINGS[k % 3], DISABLED[(k // 3) % 3])
    for k, (order, variant, lower_order_final, final) in enumerate(
        itertools.product((1, 2, 3), ("bh1", "bh2"), (True, False), ("zero", "sigma_min")))
] + [(order, "bh2", steps, True, "zero", "linspace", ()) for order in (1, 2, 3) for steps in STEPS]


def check_against_diffusers(dtype, order, variant, steps, lower_order_final, final, spacing, disable_corrector,
                            **config):
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    ours, theirs, seen, inputs, denoised_last = diffusers_case(dtype, steps, order, variant, lower_order_final,
                                                               final, spacing, disable_corrector, **config)
    assert ours.dtype == dtype
    # every step's point (the predicted one, before UniC) as diffusers' step input
    assert len(seen) == len(inputs) == steps
    assert max(rel_err(a, b) for a, b in zip(seen, inputs)) < tol
    # diffusers' step to sigma = 0 is finite only with order 1 and bh2 there (bh1: B(h) = -inf times a 0 residual;
    # order >= 2: r_k = 0); that finite value is D at its last input, which ours returns in every case
    last_order = min(order, steps, 1 if lower_order_final else order)
    finite_there = final == "sigma_min" or (variant == "bh2" and last_order == 1)
    assert (theirs is not None) == finite_there
    if theirs is not None:
        assert rel_err(ours, theirs) < tol
    if final == "zero":
        assert rel_err(ours, denoised_last) < tol


@pytest.mark.parametrize("order,variant,steps,lower_order_final,final,spacing,disable_corrector", CASES,
                         ids=lambda v: str(v))
def test_matches_diffusers_float64(order, variant, steps, lower_order_final, final, spacing, disable_corrector):
    check_against_diffusers(torch.float64, order, variant, steps, lower_order_final, final, spacing,
                            disable_corrector)


# without the 1-step runs: their result is D at sigma = 157, where eps -> x0 (x_vp - sigma_t eps) / alpha_t cancels
# to ~1e-5 in float32 in diffusers and in the test's denoiser alike (9.6e-6 apart), whatever the solver
@pytest.mark.parametrize("order,variant,steps,lower_order_final,final,spacing,disable_corrector",
                         [case for case in CASES[:24] if case[0] != 2 and case[2] > 1]
                         + [(2, "bh2", 25, True, "zero", "trailing", (1,)),
                            (2, "bh1", 10, False, "sigma_min", "leading", ())],
                         ids=lambda v: str(v))
def test_matches_diffusers_float32(order, variant, steps, lower_order_final, final, spacing, disable_corrector):
    check_against_diffusers(torch.float32, order, variant, steps, lower_order_final, final, spacing,
                            disable_corrector)


@pytest.mark.parametrize("config,final,disable_corrector", [
    # diffusers' Karras sigmas with final_sigmas_type="sigma_min" repeat sigma_min: a step of h = 0, refused here
    (dict(use_karras_sigmas=True), "zero", (1, 4, 5)),
    (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), "sigma_min", tuple(range(10))),
    (dict(beta_schedule="squaredcos_cap_v2"), "zero", ()),
], ids=["karras", "scaled_linear", "cosine"])
def test_matches_diffusers_other_schedules(config, final, disable_corrector):
    check_against_diffusers(torch.float64, 3, "bh2", 10, True, final, "linspace", disable_corrector, **config)


def test_corrector_off_is_every_step_disabled(gmm, noise):
    s = sigmas(8)
    assert rel_err(fd.sample_unipc(gmm, noise, s, order=3, corrector=False, disable=True),
                   fd.sample_unipc(gmm, noise, s, order=3, disable_corrector=range(8), disable=True)) == 0


def test_unip2_bh2_is_dpmpp_2m(gmm, noise):
    """UniP-2 with B(h) = expm1(-h) and rho = 1/2 is DPM-Solver++(2M), step for step: to 0 (the last step returns
    D, the one before is of order 2 either way) and above 0 without lower_order_final (k-diffusion's last step there
    is of order 2)."""
    assert rel_err(fd.sample_unipc(gmm, noise, sigmas(9), corrector=False, disable=True),
                   fd.sample_dpmpp_2m(gmm, noise, sigmas(9), disable=True)) < 1e-12
    assert rel_err(fd.sample_unipc(gmm, noise, sigmas(9)[:-1], corrector=False, lower_order_final=False, disable=True),
                   fd.sample_dpmpp_2m(gmm, noise, sigmas(9)[:-1], disable=True)) < 1e-12


# ---- (b) the paper's UniP-p / UniC-p (B(h) forms, data prediction) re-stated in EDM space, float64


def phi(k, z):
    """phi_k(z): phi_0 = e^z, phi_{k+1}(z) = (phi_k(z) - 1/k!) / z."""
    value = math.exp(z)
    for j in range(k):
        value = (value - 1 / math.factorial(j)) / z
    return value


def uni_update(x_s, sigma_s, sigma_t, outputs, earlier_sigmas, order, variant, denoised_t=None):
    """UniP-order (denoised_t None) or UniC-order from (x_s, sigma_s) to sigma_t, with lambda = -log sigma and
    h = lambda_t - lambda_s: the paper's data-prediction form divided by alpha_t,
    x_t = (sigma_t/sigma_s) x_s - (e^-h - 1) D_s - B(h) sum_m a_m D1_m, with D1_m = (D_m - D_s) / r_m and the a_m
    solving sum_m a_m r_m^(k-1) = k! (-h) phi_{k+1}(-h) / B(h), k = 1, 2, ... (UniC adds r = 1 with D1 = D_t - D_s;
    UniP-2 and UniC-1 take a = 1/2); outputs = [D_s, D_1, ...] newest first, at sigma_s, earlier_sigmas."""
    lam = lambda s: -math.log(s)  # noqa: E731
    h = lam(sigma_t) - lam(sigma_s)
    z = -h
    big_b = z if variant == "bh1" else math.expm1(z)
    d_s = outputs[0]
    rs = [(lam(s_m) - lam(sigma_s)) / h for s_m in earlier_sigmas[: order - 1]]
    diffs = [(d_m - d_s) / r_m for d_m, r_m in zip(outputs[1:order], rs)]
    if denoised_t is not None:  # UniC: the new point enters with r = 1
        rs, diffs = rs + [1.0], diffs + [denoised_t - d_s]
        special = [0.5] if order == 1 else None
    else:
        special = [] if order == 1 else [0.5] if order == 2 else None
    if special is None:
        conditions = np.array([[r**k for r in rs] for k in range(len(rs))])
        targets = np.array([math.factorial(k) * phi(k + 1, z) * z / big_b for k in range(1, len(rs) + 1)])
        special = np.linalg.solve(conditions, targets).tolist()
    residual = sum((a * d for a, d in zip(special, diffs)), torch.zeros_like(x_s))
    return sigma_t / sigma_s * x_s - math.expm1(z) * d_s - big_b * residual


def unipc_restated(model, x, sigmas, order=2, variant="bh2", corrector=True, disable_corrector=(),
                   lower_order_final=True):
    s = sigmas.tolist()
    n = len(s) - 1
    outputs, x_before, order_before = [], None, None
    for i in range(n):
        denoised = model(x, torch.full((len(x),), s[i], dtype=x.dtype))
        if i > 0 and corrector and i - 1 not in disable_corrector:
            x = uni_update(x_before, s[i - 1], s[i], outputs, s[: i - 1][::-1], order_before, variant, denoised)
        outputs.insert(0, denoised)
        if s[i + 1] == 0:
            return denoised
        step_order = min(order, i + 1, n - i if lower_order_final else order)
        x_before, order_before = x, step_order
        x = uni_update(x, s[i], s[i + 1], outputs, s[:i][::-1], step_order, variant)
    return x


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("options", [{}, dict(corrector=False), dict(disable_corrector=(0, 3)),
                                     dict(lower_order_final=False)],
                         ids=["default", "no_corrector", "disabled", "lof_off"])
def test_matches_restated_paper(gmm, noise, order, variant, options):
    """Schedules ending at 0 (the last step returns D) and above 0 (every step a UniP step, the last of order 1
    with lower_order_final)."""
    for s in (sigmas(9), sigmas(9)[:-1]):
        got = fd.sample_unipc(gmm, noise, s, order=order, variant=variant, disable=True, **options)
        assert rel_err(got, unipc_restated(gmm, noise, s, order, variant, **options)) < 1e-10


def test_float32_matches_restated_paper(gmm, noise):
    s = sigmas(9, torch.float32)
    got = fd.sample_unipc(gmm, noise.float(), s, order=3, disable=True)
    assert got.dtype == torch.float32
    assert rel_err(got, unipc_restated(gmm, noise, s.double(), 3)) < 1e-5


# ---- (c) convergence order on the mixture's probability-flow ODE


@pytest.fixture(scope="module")
def exact(gmm, noise):
    """The exact ODE solution down to sigma_min (RK4 on 250 steps: 3e-9 from 2000, under 1/1000 of the smallest
    error measured here), then the final step to 0 every solver takes (x -> D)."""
    solution = gmm.ode_solution(noise, SIGMA_MAX, SIGMA_MIN, steps=250)
    return gmm(solution, torch.full((len(noise),), SIGMA_MIN, dtype=noise.dtype))


@pytest.mark.parametrize("options,order,steps", [
    (dict(order=1), 2.0, [32, 64, 128]),  # UniC-1 on UniP-1 (DDIM): second order
    (dict(order=2), 3.0, [64, 128, 256]),  # UniPC-2 (bh2): third order, UniC-p raising UniP-p's order by one
    (dict(order=2, variant="bh1"), 3.0, [32, 64, 128]),
    (dict(order=3), 4.0, [32, 64, 128]),
    (dict(order=2, corrector=False), 2.0, [32, 64, 128]),  # UniP-2 alone
], ids=["unipc1", "unipc2_bh2", "unipc2_bh1", "unipc3", "unip2"])
def test_convergence_order(gmm, noise, exact, options, order, steps):
    """Measured slopes on a float64 Karras grid: 1.91, 3.16, 2.86, 3.78 and 2.06 at these step counts. UniPC-2's
    local slope goes from 3.4 near 32 steps to 3.04 at 512, UniPC-3's from 3.3 at 16 steps to 4.0 from 128 on
    (its warm-up steps do not show); UniPC-1 and UniP-2 settle at 2.0."""
    errors = [rel_err(fd.sample_unipc(gmm, noise, karras64(n), disable=True, **options), exact) for n in steps]
    assert errors[-1] < errors[0] / 2 ** (2 * (order - 0.3))
    assert abs(ref.log_slope(steps, errors) - order) < 0.3, errors


def test_corrector_beats_predictor_alone(gmm, noise, exact):
    """Same model calls: at 20 steps UniPC-2 is 2.6 times closer to the exact solution than UniP-2."""
    s = sigmas(20)
    with_corrector = rel_err(fd.sample_unipc(gmm, noise, s, disable=True), exact)
    without = rel_err(fd.sample_unipc(gmm, noise, s, corrector=False, disable=True), exact)
    assert with_corrector < without / 2, (with_corrector, without)


# ---- (d) one fused launch per stage


@pytest.mark.parametrize("options,end,launches", [
    ({}, "zero", 1 + 4 * 2),  # step 0 predicts only, steps 1-4 correct and predict, step 5 returns D
    (dict(order=3, variant="bh1"), "above_zero", 1 + 5 * 2),  # step 5 is a regular step
    (dict(disable_corrector=(0, 2)), "zero", 1 + 4 * 2 - 2),
    (dict(corrector=False), "zero", 5),
])
def test_one_launch_per_stage(backend, gmm, noise, options, end, launches):
    """6 steps: one lincomb per UniP and per UniC. The analytic mixture launches none."""
    _, device = backend
    s = sigmas(6, torch.float32) if end == "zero" else sigmas(7, torch.float32)[:-1]
    with count_op_launches() as counted:
        fd.sample_unipc(on(gmm, device), noise.to(device, torch.float32), s.to(device), disable=True, **options)
    assert counted.count == launches


# ---- (e) option errors name the argument


@pytest.mark.parametrize("options,error,match", [
    (dict(order=4), ValueError, "order must be 1, 2 or 3, got 4"),
    (dict(order=0), ValueError, "order must be an integer >= 1, got 0"),
    (dict(order=2.0), TypeError, "order must be an integer"),
    (dict(order=True), TypeError, "order must be an integer"),
    (dict(variant="bh3"), ValueError, "variant must be 'bh1' or 'bh2'.*got 'bh3'"),
    (dict(variant=2), ValueError, "variant must be 'bh1' or 'bh2'"),
    (dict(corrector="yes"), TypeError, "corrector must be a bool"),
    (dict(lower_order_final=1), TypeError, "lower_order_final must be a bool"),
    (dict(disable_corrector=0), TypeError, "disable_corrector must be a list or tuple of step indices"),
    (dict(disable_corrector="0"), TypeError, "disable_corrector must be a list or tuple of step indices"),
    (dict(disable_corrector=[1, -1]), ValueError, r"disable_corrector\[1\] must be an integer >= 0, got -1"),
    (dict(disable_corrector=[1.5]), TypeError, r"disable_corrector\[0\] must be an integer >= 0"),
])
def test_bad_options_are_named(gmm, noise, options, error, match):
    with pytest.raises(error, match=match):
        fd.sample_unipc(gmm, noise, sigmas(4), disable=True, **options)
    with pytest.raises(error, match=match):
        fd.Sampler(gmm, "unipc", sigmas(4), **options)


def test_bad_schedule_and_names(gmm, noise):
    with pytest.raises(ValueError, match=r"unipc needs strictly decreasing sigmas: sigmas\[1\] = sigmas\[2\] = 5.0"):
        fd.sample_unipc(gmm, noise, torch.tensor([20.0, 5.0, 5.0, 1.0, 0.0], dtype=torch.float64), disable=True)
    with pytest.raises(ValueError, match=r"sigmas\[2\] = sigmas\[3\] = 1.0"):
        fd.sample_unipc(gmm, noise, torch.tensor([20.0, 5.0, 1.0, 1.0, 0.0], dtype=torch.float64), disable=True)
    with pytest.raises(TypeError, match=r"'unipc' takes the options \['order', 'variant', 'corrector', "
                                        r"'disable_corrector', 'lower_order_final'\]; got \['solver_type'\]"):
        fd.Sampler(gmm, "unipc", sigmas(4), solver_type="bh2")
    assert fd.solvers.SOLVERS["unipc"] is fd.solvers.UniPC
    # a one-step schedule to 0 is D(x, sigma_max), as diffusers' single bh2 step
    one = torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64)
    torch.testing.assert_close(fd.sample_unipc(gmm, noise, one, order=3, disable=True),
                               gmm(noise, torch.full((len(noise),), SIGMA_MAX, dtype=torch.float64)))


# ---- (f) fd.Sampler


@pytest.mark.parametrize("options", [dict(order=3), dict(order=2, variant="bh1", disable_corrector=(1,))])
def test_eager_sampler_equals_sample_function(gmm, noise, options):
    s = sigmas(8)
    sampler = fd.Sampler(gmm, "unipc", s, **options)
    assert rel_err(sampler(noise), fd.sample_unipc(gmm, noise, s, disable=True, **options)) < 1e-12
    # a new schedule of the same length swaps in its tables
    s2 = sigmas(8) * 0.9
    sampler.set_schedule(s2)
    assert rel_err(sampler(noise), fd.sample_unipc(gmm, noise, s2, disable=True, **options)) < 1e-12


@pytest.mark.gpu
@pytest.mark.parametrize("options", [dict(order=3), dict(order=2, variant="bh1", disable_corrector=(1,)),
                                     dict(order=1, corrector=False)])
def test_graph_equals_eager(options):
    gmm = fd.GaussianMixture.random(3, 4, seed=0).cuda()
    noise = torch.randn(64, 4, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) * SIGMA_MAX
    schedule = sigmas(8, torch.float32).cuda()
    sampler = fd.Sampler(gmm, "unipc", schedule, **options)
    graphed = sampler(noise)
    eager = fd.Sampler(gmm, "unipc", schedule, cuda_graph=False, **options)(noise)
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eager, fd.sample_unipc(gmm, noise, schedule, disable=True, **options))
    torch.testing.assert_close(sampler(noise), graphed)
    assert sampler.captures == 1
    # a new schedule of the same length: the graph replays it from rewritten tables
    sampler.set_schedule(schedule * 0.9)
    torch.testing.assert_close(sampler(noise), fd.sample_unipc(gmm, noise, schedule * 0.9, disable=True, **options),
                               rtol=1e-4, atol=1e-4)
    assert sampler.captures == 1
