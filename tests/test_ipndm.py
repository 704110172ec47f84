"""iPNDM (Zhang & Chen 2023) and the AMED-Plugin on it (Zhou et al. 2024) against the independent restatement of
the AMED code's ipndm_sampler (reference_samplers.ipndm), its launches and model calls, its measured convergence
order on the analytic Gaussian mixture, and the engine (fd.Sampler, eager on CPU, one CUDA graph on a GPU)."""
import pytest
import torch
from torch import nn

import fused_diffusion as fd
from fused_diffusion.ops import count_op_launches

from fused_diffusion.testing import reference_samplers as ref
from mixture import SIGMA_MAX, SIGMA_MIN, on, rel_err

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def sigmas(n, end="zero", dtype=torch.float64):
    """n steps of the Karras schedule, ending at 0 or (end="above_zero") at SIGMA_MIN."""
    s = fd.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX).to(dtype)
    return s if end == "zero" else fd.get_sigmas_karras(n + 1, SIGMA_MIN, SIGMA_MAX).to(dtype)[:-1]


# AMED predictors in the solvers/amed_sampler.py protocol: predictor(x, sigma[B], sigma_next[B], analytic)
def constant_r(x, sigma, sigma_next, analytic):
    return torch.full_like(sigma, 0.4)


def per_sample_r(x, sigma, sigma_next, analytic):
    return torch.linspace(0.3, 0.7, len(sigma), dtype=sigma.dtype, device=sigma.device)


def per_sample_scales(x, sigma, sigma_next, analytic):
    """(r, scale_dir, scale_time), each per sample; r depends on x too, as a learned predictor's would."""
    b = len(sigma)
    r = 0.5 + 0.1 * torch.tanh(x.reshape(b, -1)[:, 0] / sigma)
    scale_dir = torch.linspace(0.97, 1.03, b, dtype=sigma.dtype, device=sigma.device)
    scale_time = torch.linspace(1.02, 0.98, b, dtype=sigma.dtype, device=sigma.device)
    return r.to(sigma.dtype), scale_dir, scale_time


PREDICTORS = {"constant": constant_r, "per_sample": per_sample_r, "scales": per_sample_scales}


# (max_order, afs, end): every order, with and without AFS, on schedules ending at 0 and above 0
PLAIN_CASES = [(1, False, "zero"), (1, True, "above_zero"), (2, False, "above_zero"), (2, True, "zero"),
               (3, False, "zero"), (3, True, "above_zero"), (4, False, "zero"), (4, False, "above_zero"),
               (4, True, "zero"), (4, True, "above_zero")]
# (predictor, max_order, afs, end): max_order=1 is the plugin on Euler (where the AMED code itself fails)
PLUGIN_CASES = [("constant", 4, False, "zero"), ("constant", 1, True, "above_zero"),
                ("per_sample", 2, False, "above_zero"), ("per_sample", 4, True, "zero"), ("scales", 1, False, "zero"),
                ("scales", 3, True, "above_zero"), ("scales", 4, False, "above_zero"), ("scales", 4, True, "zero")]


def case_id(case):
    return "-".join(str(v) if not isinstance(v, bool) else ("afs" if v else "no_afs") for v in case)


@pytest.mark.parametrize("case", PLAIN_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_plain_matches_restatement(backend, gmm, noise, case, dtype):
    max_order, afs, end = case
    _, device = backend
    s = sigmas(7, end, dtype).to(device)
    x = noise.to(device, dtype)
    model = on(gmm, device)
    got = fd.sample_ipndm(model, x, s, max_order=max_order, afs=afs, disable=True)
    expected = ref.ipndm(model, x, s, max_order=max_order, afs=afs)
    assert got.dtype == dtype and got.shape == x.shape
    assert rel_err(got, expected) < TOL[dtype]


@pytest.mark.parametrize("case", PLUGIN_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_plugin_matches_restatement(backend, gmm, noise, case, dtype):
    predictor, max_order, afs, end = case
    _, device = backend
    s = sigmas(5, end, dtype).to(device)
    x = noise.to(device, dtype)
    options = dict(max_order=max_order, afs=afs, predictor=PREDICTORS[predictor])
    model = on(gmm, device)
    got = fd.sample_ipndm(model, x, s, disable=True, **options)
    expected = ref.ipndm(model, x, s, **options)
    assert got.dtype == dtype and got.shape == x.shape
    assert rel_err(got, expected) < TOL[dtype]


def test_plugin_scales_given_as_options(gmm, noise):
    """A predictor returning r alone: scale_dir and scale_time come from the solver's options."""
    s = sigmas(4, "above_zero")
    got = fd.sample_ipndm(gmm, noise, s, predictor=per_sample_r, scale_dir=1.02, scale_time=0.97, disable=True)
    expected = ref.ipndm(gmm, noise, s, predictor=per_sample_r, scale_dir=1.02, scale_time=0.97)
    assert rel_err(got, expected) < 1e-10
    assert rel_err(got, fd.sample_ipndm(gmm, noise, s, predictor=per_sample_r, disable=True)) > 1e-4


def test_plugin_rows_are_per_sample(gmm, noise):
    """With r per sample, sample b equals a batch-of-one run with that sample's r."""
    s = sigmas(5, "above_zero")
    rs = torch.linspace(0.3, 0.7, len(noise), dtype=torch.float64)
    got = fd.sample_ipndm(gmm, noise, s, predictor=lambda x, sg, sn, a: rs, disable=True)
    for b, r in enumerate(rs.tolist()):
        alone = fd.sample_ipndm(gmm, noise[b : b + 1], s, predictor=lambda x, sg, sn, a: torch.full_like(sg, r),
                                disable=True)
        assert rel_err(got[b : b + 1], alone) < 1e-12


@pytest.mark.parametrize("end", ["zero", "above_zero"])
def test_order_one_is_euler(gmm, noise, end):
    """max_order=1 stores nothing and is Euler; its plugin is two Euler half steps (the second from x_mid)."""
    s = sigmas(6, end)
    assert rel_err(fd.sample_ipndm(gmm, noise, s, max_order=1, disable=True), ref.euler(gmm, noise, s)) < 1e-12
    x = noise
    for i in range(len(s) - 1):
        t, t_next = s[i], s[i + 1]
        d = (x - gmm(x, t.expand(len(x)))) / t
        if t_next == 0:
            x = x + (t_next - t) * d
            continue
        t_mid = t_next**0.4 * t**0.6
        x_mid = x + (t_mid - t) * d
        x = x_mid + (t_next - t_mid) * (x_mid - gmm(x_mid, t_mid.expand(len(x)))) / t_mid
    got = fd.sample_ipndm(gmm, noise, s, max_order=1, predictor=constant_r, disable=True)
    assert rel_err(got, x) < 1e-12


LAUNCH_CASES = [(1, False, "zero"), (2, True, "above_zero"), (4, False, "above_zero"), (4, True, "zero")]


@pytest.mark.parametrize("case", LAUNCH_CASES, ids=case_id)
def test_launches_and_model_calls(backend, gmm, noise, case):
    """Plain: two fused launches a step (d, then the update), one model call (none on an AFS first step).
    Plugin: four launches and two calls a step, except a step to 0, which is the plain step."""
    max_order, afs, end = case
    _, device = backend
    n = 5
    s = sigmas(n, end, torch.float32).to(device)
    x = noise.to(device, torch.float32)
    calls, model = [], on(gmm, device)
    counted = lambda x, sigma: calls.append(sigma) or model(x, sigma)  # noqa: E731
    with count_op_launches() as launches:
        fd.sample_ipndm(counted, x, s, max_order=max_order, afs=afs, disable=True)
    assert launches.count == 2 * n
    assert len(calls) == n - afs
    calls.clear()
    landing = end == "zero"
    with count_op_launches() as launches:
        fd.sample_ipndm(counted, x, s, max_order=max_order, afs=afs, predictor=constant_r, disable=True)
    assert launches.count == 4 * n - 2 * landing
    assert len(calls) == 2 * n - landing - afs


def test_predictor_sees_analytic_flag_and_sigmas(gmm, noise):
    """The predictor runs once per step with a midpoint (not on the step to 0), told which step used AFS."""
    s = sigmas(4)
    seen = []

    def predictor(x, sigma, sigma_next, analytic):
        seen.append((float(sigma[0]), float(sigma_next[0]), analytic, sigma.shape))
        return torch.full_like(sigma, 0.5)

    fd.sample_ipndm(gmm, noise, s, afs=True, predictor=predictor, disable=True)
    assert [flag for *_, flag, _ in seen] == [True, False, False]
    assert [(a, b) for a, b, *_ in seen] == [(float(s[i]), float(s[i + 1])) for i in range(3)]
    assert all(shape == (len(noise),) for *_, shape in seen)


def test_callback_reports_each_model_call_at_sigma(gmm, noise):
    s = sigmas(5)
    seen = []
    fd.sample_ipndm(gmm, noise, s, afs=True, predictor=constant_r, callback=seen.append, disable=True)
    assert [info["i"] for info in seen] == [1, 2, 3, 4]  # step 0 is analytic: no denoised to report
    info = seen[1]
    torch.testing.assert_close(info["denoised"], gmm(info["x"], s[2].expand(len(noise))))
    assert float(info["sigma"]) == float(s[2])


def uniform(n, sigma_max, sigma_min):
    """n equal steps in sigma: the steps Adams-Bashforth's weights are made for."""
    return torch.linspace(sigma_max, sigma_min, n + 1, dtype=torch.float64)


_EXACT = {}


def errors(gmm, noise, sigma_max, sigma_min, schedules, **options):
    """Relative errors against the exact ODE solution (RK4 on 200 steps: <= 1e-8 relative here, far below them),
    one per schedule, then one per options dict in `options["others"]` on the first schedule."""
    x = noise * (sigma_max / SIGMA_MAX)
    if (sigma_max, sigma_min) not in _EXACT:
        _EXACT[sigma_max, sigma_min] = gmm.ode_solution(x, sigma_max, sigma_min, steps=200)
    exact = _EXACT[sigma_max, sigma_min]
    others = options.pop("others", [])
    errs = [rel_err(fd.sample_ipndm(gmm, x, s, disable=True, **options), exact) for s in schedules]
    return errs + [rel_err(fd.sample_ipndm(gmm, x, schedules[0], disable=True, **o), exact) for o in others]


@pytest.mark.parametrize("max_order", [2, 3, 4])
def test_convergence_order(gmm, noise, max_order):
    """Adams-Bashforth of order k on equal steps: the measured order is k (3.84 for k = 4 at these steps; from
    sigma = 5, where the trajectory is nearly straight, so the Euler warm start's own error stays far below the
    rest at these step counts)."""
    steps = [128, 256]
    errs = errors(gmm, noise, 5.0, SIGMA_MIN, [uniform(n, 5.0, SIGMA_MIN) for n in steps], max_order=max_order)
    assert abs(ref.log_slope(steps, errs) - max_order) < 0.3, errs


def test_second_order_asymptotically(gmm, noise):
    """What limits iPNDM: its warm start is an Euler step (local error O(h^2), so the global error is O(h^2) once the
    rest is smaller), and on unequal steps (Karras) the equal-step weights leave local errors O(h^3). Both measured:
    order 2, max_order=4 still several times more accurate than max_order=2 at the same steps."""
    steps = [64, 128]
    errs = errors(gmm, noise, 2.0, 0.05, [uniform(n, 2.0, 0.05) for n in steps])  # curved from the first step
    assert abs(ref.log_slope(steps, errs) - 2.0) < 0.25, errs
    *errs, order2 = errors(gmm, noise, SIGMA_MAX, SIGMA_MIN, [sigmas(n, "above_zero") for n in steps],
                           others=[dict(max_order=2)])
    assert abs(ref.log_slope(steps, errs) - 2.0) < 0.25, errs
    assert errs[0] < order2 / 4, (errs, order2)


class TestOptions:
    @pytest.mark.parametrize("bad", [0, 5, -1, 2.5, "4", None, True])
    def test_bad_max_order(self, bad):
        with pytest.raises(ValueError, match="max_order must be an integer from 1 to 4"):
            fd.sample_ipndm(lambda x, s: x, torch.ones(2, 3), sigmas(3), max_order=bad)
        with pytest.raises(ValueError, match="max_order"):
            fd.Sampler(lambda x, s: x, "ipndm", sigmas(3), max_order=bad)

    def test_history_keeps_max_order_minus_one(self):
        assert [fd.solvers.IPNDM(order).history for order in (1, 2, 3, 4)] == [0, 1, 2, 3]

    def test_sampler_takes_the_options(self, gmm, noise):
        predictor = PredictorModule()
        for options in (dict(max_order=3), dict(max_order=2, afs=True, predictor=predictor, scale_dir=1.01)):
            sampler = fd.Sampler(gmm, "ipndm", sigmas(5), **options)
            expected = fd.sample_ipndm(gmm, noise, sigmas(5), disable=True, **options)
            torch.testing.assert_close(sampler(noise), expected)
        assert sampler.solver.modules() == [predictor]
        assert fd.solvers.IPNDM(predictor=constant_r).modules() == []

    def test_graph_key_sees_what_changes_the_step(self):
        key = fd.solvers.IPNDM().graph_key()
        assert fd.solvers.IPNDM().graph_key() == key
        assert fd.solvers.IPNDM(max_order=3).graph_key() != key
        assert fd.solvers.IPNDM(afs=True).graph_key() != key
        assert fd.solvers.IPNDM(predictor=constant_r).graph_key() != key
        other = fd.solvers.IPNDM(predictor=per_sample_r).graph_key()
        assert fd.solvers.IPNDM(predictor=constant_r).graph_key() != other


class PredictorModule(nn.Module):
    """An AMED-style predictor with weights: r from sigma and sigma_next, scale_dir learned."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.2))

    def forward(self, x, sigma, sigma_next, analytic):
        r = torch.sigmoid(self.bias + 0.1 * (sigma / sigma_next).log())
        return r, 1 + 0.01 * torch.tanh(self.bias) * torch.ones_like(sigma), torch.ones_like(sigma)


@pytest.mark.gpu
@pytest.mark.parametrize("options", [dict(), dict(max_order=3, afs=True), dict(predictor="module", afs=True)],
                         ids=["plain", "order3_afs", "plugin"])
@pytest.mark.parametrize("end", ["zero", "above_zero"])
def test_cuda_graph_equals_eager(gmm, options, end):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    options = dict(options)
    if options.get("predictor") == "module":
        options["predictor"] = PredictorModule().cuda()
    model = on(gmm, "cuda")
    noise = torch.randn(8, 4, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) * SIGMA_MAX
    s = sigmas(6, end, torch.float32).cuda()
    sampler = fd.Sampler(model, "ipndm", s, **options)
    for scale in (1.0, 0.5):
        expected = fd.sample_ipndm(model, noise * scale, s, disable=True, **options)
        torch.testing.assert_close(sampler(noise * scale), expected, rtol=1e-4, atol=1e-4)
    sampler.set_schedule(sigmas(6, end, torch.float32).cuda() * 0.5)  # same length: tables rewritten, replayed
    expected = fd.sample_ipndm(model, noise, sigmas(6, end, torch.float32).cuda() * 0.5, disable=True, **options)
    torch.testing.assert_close(sampler(noise), expected, rtol=1e-4, atol=1e-4)
    assert sampler.captures == 1
