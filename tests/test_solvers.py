"""Every solver against an independent re-statement of its paper's formulas, and its measured convergence order
on the analytic Gaussian mixture, with whichever op backend the `backend` fixture forces."""
import pytest
import torch

import fused_diffusion as fd
from fused_diffusion.ops import count_op_launches

from fused_diffusion.testing import reference_samplers as ref
from mixture import SIGMA_MAX, SIGMA_MIN, on, rel_err



def sigmas(n, dtype=torch.float64):
    return fd.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX).to(dtype)


CHURN = dict(s_churn=4.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.003)

DETERMINISTIC = [
    ("euler", fd.sample_euler, ref.euler, {}),
    ("heun", fd.sample_heun, ref.heun, {}),
    ("dpm_2", fd.sample_dpm_2, ref.dpm_2, {}),
    ("dpmpp_2m", fd.sample_dpmpp_2m, ref.dpmpp_2m, {}),
    ("amed", fd.sample_amed, ref.amed, {}),
    ("amed_no_afs_scaled", fd.sample_amed, ref.amed, dict(afs=False, scale_dir=1.02, scale_time=0.98)),
    ("euler_ancestral_eta0", fd.sample_euler_ancestral, ref.euler_ancestral, dict(eta=0.0)),
    ("ipndm", fd.sample_ipndm, ref.ipndm, {}),
    ("ipndm_plugin_afs", fd.sample_ipndm, ref.ipndm,
     dict(max_order=3, afs=True, predictor=lambda x, s, s_next, analytic: torch.full_like(s, 0.4))),
]
STOCHASTIC = [
    ("euler_churn", fd.sample_euler, ref.euler, CHURN),
    ("heun_churn", fd.sample_heun, ref.heun, CHURN),
    ("dpm_2_churn", fd.sample_dpm_2, ref.dpm_2, CHURN),
    ("euler_ancestral", fd.sample_euler_ancestral, ref.euler_ancestral, dict(eta=0.9, s_noise=1.01)),
    ("consistency", fd.sample_consistency, ref.consistency, {}),
]


@pytest.mark.parametrize("name,ours,theirs,options", DETERMINISTIC + STOCHASTIC, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("end", ["zero", "above_zero"])
def test_matches_independent_formula(backend, gmm, noise, name, ours, theirs, options, dtype, end):
    """`backend` (conftest) forces each op backend in turn: the whole solver suite runs on each. Schedules end at 0
    (the last step denoises) or above 0 (every step a regular one, as k-diffusion)."""
    _, device = backend
    gmm = on(gmm, device)
    s = sigmas(7, dtype).to(device)
    if end == "above_zero":
        s = s[:-1]
    x = noise.to(device, dtype)
    torch.manual_seed(123)
    expected = theirs(gmm, x, s, **options)
    torch.manual_seed(123)  # same RNG draws in the same order as the reference
    got = ours(gmm, x, s, disable=True, **options)
    assert got.dtype == dtype and got.shape == x.shape
    assert rel_err(got, expected) < (1e-10 if dtype == torch.float64 else 1e-5)  # float64 runs the reference


@pytest.mark.parametrize(
    "sampler,order,steps",
    [
        (fd.sample_euler, 1.0, [128, 256, 512]),
        (fd.sample_heun, 2.0, [32, 64, 128]),
        (fd.sample_dpm_2, 2.0, [32, 64, 128]),
        (fd.sample_dpmpp_2m, 2.0, [32, 64, 128]),
        (fd.sample_amed, 2.0, [32, 64, 128]),
    ],
    ids=["euler", "heun", "dpm_2", "dpmpp_2m", "amed"],
)
def test_convergence_order(gmm, noise, sampler, order, steps):
    # exact ODE solution down to sigma_min, then the same final Euler step to 0 every solver takes (x -> D)
    exact = gmm(gmm.ode_solution(noise, SIGMA_MAX, SIGMA_MIN), torch.full((len(noise),), SIGMA_MIN, dtype=noise.dtype))
    errors = [rel_err(sampler(gmm, noise, sigmas(n), disable=True), exact) for n in steps]
    assert errors[-1] < errors[0] / 2 ** (order * 1.5)
    assert abs(ref.log_slope(steps, errors) - order) < 0.25, errors


@pytest.mark.parametrize(
    "sampler,options,launches_per_step",
    [
        (fd.sample_euler, {}, 1),
        (fd.sample_euler, dict(s_churn=1.0), 2),
        (fd.sample_heun, {}, 2),
        (fd.sample_dpm_2, {}, 2),
        (fd.sample_dpmpp_2m, {}, 1),
        (fd.sample_euler_ancestral, {}, 1),
        (fd.sample_amed, {}, 2),
        (fd.sample_consistency, {}, 1),
    ],
)
def test_one_launch_per_stage(backend, gmm, noise, sampler, options, launches_per_step):
    """n steps: every step but the last (which returns D itself) makes `launches_per_step` fused launches;
    churn adds one on the last step too. The model here is the analytic mixture, which launches none."""
    n = 6
    _, device = backend
    with count_op_launches() as launches:
        sampler(on(gmm, device), noise.to(device, torch.float32), sigmas(n, torch.float32).to(device), disable=True,
                **options)
    churn_last = 1 if options.get("s_churn") else 0
    assert launches.count == (n - 1) * launches_per_step + churn_last


def test_callback_matches_k_diffusion_dict(gmm, noise):
    seen = []
    s = sigmas(5)
    fd.sample_heun(gmm, noise, s, callback=seen.append, disable=True, **CHURN)
    assert [info["i"] for info in seen] == list(range(5))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert float(seen[1]["sigma"]) == float(s[1])
    assert float(seen[1]["sigma_hat"]) >= float(s[1])
    torch.testing.assert_close(seen[0]["denoised"], gmm(seen[0]["x"], seen[0]["sigma_hat"].expand(len(noise))))


def test_amed_predictor_gives_per_sample_midpoints(gmm, noise):
    """A predictor returning r per sample: sample b must match the reference run with that r alone."""
    rs = torch.linspace(0.3, 0.7, len(noise), dtype=torch.float64)
    got = fd.sample_amed(gmm, noise, sigmas(5), predictor=lambda x, s, s_next, analytic: rs, disable=True)
    for b, r in enumerate(rs.tolist()):
        expected = ref.amed(gmm, noise[b : b + 1], sigmas(5), r=r)
        assert rel_err(got[b : b + 1], expected) < 1e-6


def test_amed_denoise_to_zero_as_the_amed_code(gmm, noise):
    """AMED's schedules end at sigma_min; denoise_to_zero adds one call returning D(x, sigma_min)."""
    s = sigmas(4)[:-1]  # 4 sigmas, 3 AMED steps: 5 calls with AFS, as the paper's NFE = 5
    calls = []
    counted = lambda x, sigma: calls.append(1) or gmm(x, sigma)  # noqa: E731
    x = fd.sample_amed(counted, noise, s, disable=True)
    assert len(calls) == 5
    torch.testing.assert_close(x, ref.amed(gmm, noise, s), rtol=1e-10, atol=1e-10)
    final = fd.sample_amed(gmm, noise, s, denoise_to_zero=True, disable=True)
    torch.testing.assert_close(final, gmm(x, s[-1].expand(len(x))), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="denoise_to_zero=True needs sigmas ending above 0"):
        fd.sample_amed(gmm, noise, sigmas(4), denoise_to_zero=True)


def test_ddim_matches_hand_written(noise):
    ac = fd.ddpm_alphas_cumprod(1000)
    eps_model = lambda x, t: torch.tanh(x) * (t.double() / 1000).reshape(-1, 1)  # noqa: E731
    x = noise / SIGMA_MAX
    for eta in (0.0, 0.5):
        timesteps = torch.arange(0, 1000, 100).flip(0)
        got = fd.sample_ddim(eps_model, x, ac, 10, eta=eta, clip_sample=False, generator=torch.Generator().manual_seed(0),
                             disable=True)
        expected = ref.ddim(eps_model, x, ac, timesteps, eta=eta, generator=torch.Generator().manual_seed(0))
        assert rel_err(got, expected) < 1e-6


def test_shortcut_matches_hand_written(noise):
    velocity = lambda x, t, d: torch.sin(x) * (1 + t[:, None]) - d[:, None]  # noqa: E731
    for steps in (1, 4, 8):
        assert rel_err(fd.sample_shortcut(velocity, noise, steps, disable=True), ref.shortcut(velocity, noise, steps)) < 1e-10
    seen = []
    fd.sample_shortcut(velocity, noise, 4, callback=seen.append, disable=True)
    assert [info["i"] for info in seen] == [0, 1, 2, 3]
    t = float(seen[2]["t"])
    torch.testing.assert_close(seen[2]["denoised"], seen[2]["x"] + (1 - t) * velocity(seen[2]["x"], torch.full((8,), t, dtype=noise.dtype), torch.full((8,), 0.25, dtype=noise.dtype)))
    with pytest.raises(ValueError, match="steps = 1, 2, 4"):
        fd.sample_shortcut(velocity, noise, 3)


def test_flow_denoiser_samples_rectified_flow_exactly():
    """Straight paths (v = data - noise for a point-mass data set) are integrated exactly by any solver."""
    data = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float64)
    velocity = lambda x_t, t: (data - x_t) / (1 - t[:, None]).clamp_min(1e-12)  # noqa: E731  (= data - noise)
    den = fd.FlowDenoiser(velocity)
    x = torch.randn(4, 3, dtype=torch.float64) * 50
    out = fd.sample_euler(den, x, fd.get_sigmas_karras(3, 0.01, 50.0).double(), disable=True)
    torch.testing.assert_close(out, data.expand(4, 3))


class TestBadInput:
    def test_model_returning_nan_names_step_and_sigma(self, gmm, noise):
        s = sigmas(6)
        bad_sigma = float(s[3])

        def model(x, sigma):
            out = gmm(x, sigma)
            return out * float("nan") if abs(float(sigma[0]) - bad_sigma) < 1e-12 else out

        with pytest.raises(FloatingPointError, match=rf"step 3 \(sigma=({bad_sigma:.6g})\)"):
            fd.sample_dpmpp_2m(model, noise, s, disable=True)

    def test_model_returning_wrong_shape(self, noise):
        with pytest.raises(ValueError, match=r"step 0 \(sigma_hat=20\).*shape \(8, 2\), expected \(8, 4\)"):
            fd.sample_euler(lambda x, s: x[:, :2], noise, sigmas(3), disable=True)

    def test_model_returning_other_device(self, noise):
        with pytest.raises(ValueError, match="on meta, expected cpu"):
            fd.sample_euler(lambda x, s: torch.empty_like(x, device="meta"), noise, sigmas(3), disable=True)

    def test_model_returning_integers(self, noise):
        with pytest.raises(TypeError, match="dtype torch.int64"):
            fd.sample_euler(lambda x, s: x.long(), noise, sigmas(3), disable=True)

    def test_integer_input(self, gmm):
        with pytest.raises(TypeError, match="floating-point"):
            fd.sample_euler(gmm, torch.zeros(2, 4, dtype=torch.long), sigmas(3), disable=True)

    @pytest.mark.parametrize(
        "bad,match",
        [
            (torch.tensor([3.0, 2.0, 2.5, 0.0]), r"must be decreasing: sigmas\[1\] = 2.0 < sigmas\[2\] = 2.5"),
            (torch.tensor([3.0, 2.0, -1.0]), r"sigmas\[2\] = -1.0 must be >= 0"),
            (torch.tensor([3.0, float("nan"), 0.0]), r"sigmas\[1\] = nan is not finite"),
            (torch.tensor([3.0, -1.0, 0.0]), "must be > 0"),
            (torch.tensor([[3.0, 0.0]]), "1-D"),
        ],
    )
    def test_bad_schedule(self, gmm, noise, bad, match):
        with pytest.raises(ValueError, match=match):
            fd.sample_heun(gmm, noise, bad, disable=True)

    def test_consistency_sigma_below_sigma_min(self, gmm, noise):
        with pytest.raises(ValueError, match="sigma_min"):
            fd.sample_consistency(gmm, noise, torch.tensor([80.0, 0.001, 0.0]), sigma_min=0.002)

    def test_ddim_bad_steps(self, noise):
        with pytest.raises(ValueError, match="steps must be in"):
            fd.sample_ddim(lambda x, t: x, noise, fd.ddpm_alphas_cumprod(), 0)
