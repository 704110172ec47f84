"""Bad arguments to the public entry points fail up front, naming the argument, what it must be and what it was;
the edge cases that are valid still work."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fused_diffusion as fd
from fused_diffusion import __main__ as cli
from fused_diffusion import demo
from fused_diffusion.models import unwrap_output
from fused_diffusion.schedules import validate_sigmas

AC = fd.ddpm_alphas_cumprod(1000)


def never_called(*args, **kwargs):
    raise AssertionError("the model must not be called when an argument is bad")


def with_value(index: int, value: float) -> torch.Tensor:
    ac = AC.clone()
    ac[index] = value
    return ac


# -------------------------------------------------------------------------------------------------- schedules

SIGMA_SCHEDULES = [fd.get_sigmas_karras, fd.get_sigmas_polynomial, fd.get_sigmas_exponential,
                   fd.get_sigmas_polyexponential, fd.get_sigmas_time_uniform]
ALL_N = [lambda n: s(n, 0.002, 80.0) for s in SIGMA_SCHEDULES] + [
    fd.get_sigmas_vp, fd.get_flow_times, lambda n: fd.get_sigmas_discrete(n, AC)]


@pytest.mark.parametrize("make", ALL_N)
@pytest.mark.parametrize("n,error", [(2.5, TypeError), (True, TypeError), ("3", TypeError),
                                     (torch.tensor(3), TypeError), (0, ValueError), (-2, ValueError)])
def test_schedule_n_must_be_a_positive_integer(make, n, error):
    with pytest.raises(error, match="n must be an integer >= 1, got"):
        make(n)


@pytest.mark.parametrize("schedule", SIGMA_SCHEDULES)
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(sigma_min=float("nan")), ValueError, "sigma_min must be finite, got nan"),
        (dict(sigma_max=float("inf")), ValueError, "sigma_max must be finite, got inf"),
        (dict(sigma_max="80"), TypeError, r"sigma_max must be a real number, got '80' \(str\)"),
        (dict(sigma_min=torch.tensor([0.002, 0.003])), TypeError,
         r"sigma_min must be a real number, got a tensor of shape \(2,\)"),
        (dict(sigma_min=0.0), ValueError, "need 0 < sigma_min < sigma_max, got sigma_min=0.0"),
        (dict(sigma_min=80.0, sigma_max=0.002), ValueError, "need 0 < sigma_min < sigma_max"),
    ],
)
def test_schedule_sigma_range(schedule, kwargs, error, match):
    with pytest.raises(error, match=match):
        schedule(**{"n": 5, "sigma_min": 0.002, "sigma_max": 80.0, **kwargs})


@pytest.mark.parametrize("schedule", [fd.get_sigmas_karras, fd.get_sigmas_polynomial, fd.get_sigmas_polyexponential,
                                      fd.get_sigmas_time_uniform])
@pytest.mark.parametrize("rho,error,match", [(0.0, ValueError, "rho must be > 0, got 0.0"),
                                             (-7.0, ValueError, "rho must be > 0"),
                                             (float("nan"), ValueError, "rho must be finite"),
                                             (None, TypeError, "rho must be a real number, got None")])
def test_schedule_rho(schedule, rho, error, match):
    with pytest.raises(error, match=match):
        schedule(5, 0.002, 80.0, rho=rho)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: fd.get_sigmas_vp(5, eps_s=0.0), "eps_s must be > 0, got 0.0"),
        (lambda: fd.get_sigmas_vp(5, eps_s=1.0), "eps_s must be < 1, got 1.0"),
        (lambda: fd.get_sigmas_time_uniform(5, 0.002, 80.0, eps_s=-1e-3), "eps_s must be > 0"),
        (lambda: fd.get_sigmas_vp(5, beta_d=-1.0), "beta_d must be >= 0, got -1.0"),
        (lambda: fd.get_sigmas_vp(5, beta_min=float("nan")), "beta_min must be finite"),
        (lambda: fd.get_sigmas_vp(5, beta_d=0, beta_min=0), "beta_d and beta_min must not both be 0"),
        (lambda: fd.get_sigmas_time_uniform(5, 79.0, 80.0), "no VP schedule rises from sigma_min=79.0"),
        (lambda: fd.ddpm_alphas_cumprod(beta_start=0.0), "beta_start must be > 0, got 0.0"),
        (lambda: fd.ddpm_alphas_cumprod(beta_end=1.0), "beta_end must be < 1, got 1.0"),
        (lambda: fd.ddpm_alphas_cumprod(1, 1e-4, 0.02), "num_train_timesteps must be an integer >= 2, got 1"),
        (lambda: fd.ddpm_alphas_cumprod(1000, 0.1, 0.9), "make alphas_cumprod underflow to 0 in float32 at timestep"),
    ],
)
def test_schedule_parameter_ranges(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ddpm_alphas_cumprod_timesteps_must_be_an_integer():
    with pytest.raises(TypeError, match=r"num_train_timesteps must be an integer >= 2, got 1000.0 \(float\)"):
        fd.ddpm_alphas_cumprod(1000.0)


# alphas_cumprod that is not a DDPM training schedule, and the message naming what is wrong
NOT_A_TENSOR = r"alphas_cumprod must be a 1-D floating-point torch.Tensor, got .*"
BAD_ALPHAS = [
    pytest.param(AC.tolist(), TypeError, NOT_A_TENSOR + r"\(list\)", id="list"),
    pytest.param(AC.numpy(), TypeError, NOT_A_TENSOR + r"\(ndarray\)", id="numpy"),
    pytest.param((AC * 1000).long(), TypeError, "alphas_cumprod must be floating point, got dtype torch.int64",
                 id="int"),
    pytest.param(AC[None], ValueError, r"alphas_cumprod must be a 1-D tensor of at least 2 values, got shape \(1, 1000\)",
                 id="2-D"),
    pytest.param(AC * 2, ValueError, r"alphas_cumprod\[0\] = 1.99.* must be in \(0, 1\)", id="above-1"),
    pytest.param(with_value(999, 0.0), ValueError, r"alphas_cumprod\[999\] = 0.0 must be in \(0, 1\)", id="zero"),
    pytest.param(with_value(5, float("nan")), ValueError, r"alphas_cumprod\[5\] = nan must be in \(0, 1\)", id="nan"),
    pytest.param(AC.flip(0), ValueError,
                 r"alphas_cumprod must be non-increasing: alphas_cumprod\[0\] = .* < alphas_cumprod\[1\]",
                 id="increasing"),
]

ALPHAS_USERS = {
    "sigmas_from_alphas_cumprod": fd.sigmas_from_alphas_cumprod,
    "get_sigmas_discrete": lambda ac: fd.get_sigmas_discrete(5, ac),
    "EpsDenoiser": lambda ac: fd.EpsDenoiser(never_called, ac),
    "VDenoiser": lambda ac: fd.VDenoiser(never_called, ac),
    "DDIM": lambda ac: fd.solvers.DDIM(ac),
    "sample_ddim": lambda ac: fd.sample_ddim(never_called, torch.randn(2, 3), ac, 10, disable=True),
}


@pytest.mark.parametrize("user", ALPHAS_USERS.values(), ids=ALPHAS_USERS.keys())
@pytest.mark.parametrize("alphas_cumprod,error,match", BAD_ALPHAS)
def test_bad_alphas_cumprod(user, alphas_cumprod, error, match):
    with pytest.raises(error, match=match):
        user(alphas_cumprod)


@pytest.mark.parametrize("sigmas", [[80.0, 1.0, 0.0], np.array([80.0, 1.0, 0.0])], ids=["list", "numpy"])
def test_sigmas_must_be_a_tensor(sigmas):
    match = rf"sigmas must be a torch.Tensor, got .*\({type(sigmas).__name__}\)"
    with pytest.raises(TypeError, match=match):
        validate_sigmas(sigmas)
    with pytest.raises(TypeError, match=match):
        fd.sample_euler(never_called, torch.randn(2, 3), sigmas, disable=True)


def test_valid_edge_cases_of_schedule_arguments():
    expected = fd.get_sigmas_karras(10, 0.002, 80.0)
    assert torch.equal(fd.get_sigmas_karras(np.int64(10), np.float64(0.002), 80), expected)
    torch.testing.assert_close(fd.get_sigmas_karras(10, torch.tensor(0.002), torch.tensor(80.0)), expected)
    assert torch.equal(fd.get_flow_times(np.int32(4)), fd.get_flow_times(4))
    assert torch.equal(fd.get_sigmas_discrete(np.int64(5), AC), fd.get_sigmas_discrete(5, AC))
    flat = torch.cat([AC[:500], AC[499:999]])  # a repeated value is non-increasing: allowed
    assert torch.isfinite(fd.sigmas_from_alphas_cumprod(flat)).all()
    validate_sigmas(torch.tensor([3.0, 2.0, 2.0, 0.0]))  # repeated sigmas stay valid (k-diffusion's step of 0)


# ------------------------------------------------------------------------------------------------------- DDIM


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(steps=2.5), TypeError, r"steps must be an integer in \[1, 1000\], got 2.5 \(float\)"),
        (dict(steps=True), TypeError, r"steps must be an integer in \[1, 1000\], got True \(bool\)"),
        (dict(steps=0), ValueError, r"steps must be in \[1, 1000\] .*got 0"),
        (dict(steps=1001), ValueError, r"steps must be in \[1, 1000\] .*got 1001"),
        (dict(timestep_spacing="uniform"), ValueError,
         "timestep_spacing must be one of 'leading', 'trailing', 'linspace', got 'uniform'"),
        (dict(steps_offset=-1), ValueError, "steps_offset must be an integer >= 0, got -1"),
        (dict(steps_offset=1.5), TypeError, r"steps_offset must be an integer >= 0, got 1.5 \(float\)"),
        (dict(steps=1000, steps_offset=1), ValueError,
         "steps_offset=1 moves the first of 1000 'leading' timesteps to 1000"),
        (dict(clip_sample=True, clip_sample_range=0.0), ValueError, "clip_sample_range must be > 0, got 0.0"),
        (dict(clip_sample_range=float("nan")), ValueError, "clip_sample_range must be finite, got nan"),
        (dict(eta=-1.0), ValueError, "eta must be >= 0"),
    ],
)
def test_ddim_bad_arguments_fail_before_the_model(kwargs, error, match):
    args = {"steps": 10, **kwargs}
    with pytest.raises(error, match=match):
        fd.sample_ddim(never_called, torch.randn(2, 3), AC, disable=True, **args)


@pytest.mark.parametrize(
    "timesteps,match",
    [
        (torch.tensor([999.5, 10.0]), r"timesteps\[0\] = 999.5 must be an integer in \[0, 999\]"),
        (torch.tensor([999, 1000]), r"timesteps\[1\] = 1000.0 must be an integer in \[0, 999\]"),
        (torch.tensor([10, 500]),
         r"timesteps must be strictly decreasing: timesteps\[0\] = 10 <= timesteps\[1\] = 500"),
    ],
)
def test_ddim_bad_timesteps_name_the_index(timesteps, match):
    with pytest.raises(ValueError, match=match):
        fd.solvers.DDIM(AC).check_schedule(timesteps)


def test_ddim_valid_edge_cases():
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    eps = lambda x, t: torch.tanh(x)  # noqa: E731
    expected = fd.sample_ddim(eps, x, AC, 10, disable=True)
    assert torch.equal(fd.sample_ddim(eps, x, AC, np.int64(10), steps_offset=np.int64(0), disable=True), expected)
    # trailing spacing: arange's rounding adds a timestep -1 for some step counts; exactly `steps` remain
    for steps in (61, 103, 1000):
        timesteps = fd.solvers.ddim_timesteps(1000, steps, "trailing")
        assert len(timesteps) == steps and timesteps[0] == 999 and timesteps[-1] >= 0


# ------------------------------------------------------------------------------------------------ consistency


@pytest.mark.parametrize("sigma_min,error,match", [(0.0, ValueError, "sigma_min must be > 0, got 0.0"),
                                                   (-0.002, ValueError, "sigma_min must be > 0"),
                                                   (float("nan"), ValueError, "sigma_min must be finite"),
                                                   ("0.002", TypeError, "sigma_min must be a real number")])
def test_consistency_sigma_min(sigma_min, error, match):
    with pytest.raises(error, match=match):
        fd.sample_consistency(never_called, torch.randn(2, 3), fd.get_sigmas_karras(3, 0.002, 80.0),
                              sigma_min=sigma_min, disable=True)


def test_consistency_names_the_sigma_below_sigma_min():
    with pytest.raises(ValueError, match=r"sigmas\[2\] = 0.001 is below sigma_min=0.002"):
        sigmas = torch.tensor([80.0, 1.0, 0.001, 0.0], dtype=torch.float64)
        fd.sample_consistency(never_called, torch.randn(2, 3), sigmas, disable=True)


def test_consistency_accepts_the_float32_karras_schedule():
    """fd.get_sigmas_karras(n, 0.002, 80) in float32 ends a few ulps below 0.002: it is sigma_min, and the result
    matches the float64 schedule's."""
    gmm = fd.GaussianMixture.random(3, 4, seed=0)
    sigmas32 = fd.get_sigmas_karras(10, 0.002, 80.0)
    assert sigmas32[-2].item() < 0.002
    ramp = torch.linspace(0, 1, 10, dtype=torch.float64)
    karras64 = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    sigmas64 = torch.cat([karras64, torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * 80.0

    def run(sigmas):
        return fd.sample_consistency(gmm, x, sigmas, generator=torch.Generator().manual_seed(1), disable=True)

    torch.testing.assert_close(run(sigmas32), run(sigmas64), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- models


class Output:
    def __init__(self, sample):
        self.sample = sample


@pytest.mark.parametrize("sample,kind", [(None, "NoneType"), (np.zeros(3), "ndarray"), ([torch.zeros(3)], "list")])
def test_unwrap_output_sample_must_be_a_tensor(sample, kind):
    with pytest.raises(TypeError, match=rf"model returned a Output whose \.sample is .*\({kind}\); expected a tensor"):
        unwrap_output(Output(sample))


@pytest.mark.parametrize("scale,error,match", [(float("nan"), ValueError, "scale must be finite, got nan"),
                                               (float("inf"), ValueError, "scale must be finite, got inf"),
                                               ("7.5", TypeError, "scale must be a real number, got '7.5'"),
                                               (True, TypeError, r"scale must be a real number, got True \(bool\)")])
def test_cfg_scale_must_be_finite(scale, error, match):
    with pytest.raises(error, match=match):
        fd.CFGDenoiser(never_called, scale)
    cfg = fd.CFGDenoiser(never_called, 2.0)
    with pytest.raises(error, match=match):
        cfg.set_scale(scale)
    assert cfg.scale == 2.0


@pytest.mark.parametrize(
    "cond,uncond,error,match",
    [
        (torch.ones(2), torch.zeros(3), ValueError, r"^cond must have batch 3 \(x's batch\) .*got shape \(2,\)"),
        (torch.ones(3), torch.zeros(2), ValueError,
         r"^uncond must have batch 3 \(x's batch\) or 1 \(broadcast\) in dim 0, got shape \(2,\)"),
        (torch.ones(3), torch.tensor(0.0), ValueError, r"uncond must have batch 3 .*got shape \(\)"),
        ([1.0, 1.0, 1.0], torch.zeros(3), TypeError, r"cond must be a tensor, got .*\(list\)"),
        (torch.ones(3, 2), torch.zeros(3, 5), ValueError,
         r"cond and uncond must have the same shape, got \(3, 2\) and \(3, 5\)"),
    ],
)
def test_cfg_cond_batch_is_checked_before_the_model(cond, uncond, error, match):
    cfg = fd.CFGDenoiser(never_called, 2.0)
    with pytest.raises(error, match=match):
        cfg(torch.randn(3, 4), torch.ones(3), cond=cond, uncond=uncond)


def test_cfg_scale_accepts_numpy_and_0_dim_tensors():
    cfg = fd.CFGDenoiser(lambda x, s, cond: x * cond[:, None], np.float32(3.0))
    cfg.set_scale(torch.tensor(2.0))
    x = torch.randn(3, 4)
    torch.testing.assert_close(cfg(x, torch.ones(3), cond=torch.full((3,), 2.0), uncond=torch.ones(3)), x * 3.0)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: fd.EpsDenoiser(None, AC), r"eps_model must be callable .*got None \(NoneType\)"),
        (lambda: fd.VDenoiser("unet", AC), r"eps_model must be callable .*got 'unet' \(str\)"),
        (lambda: fd.FlowDenoiser(torch.zeros(3)), r"velocity_model must be callable .*got a tensor"),
        (lambda: fd.CFGDenoiser(None, 7.5), "denoiser must be callable"),
        (lambda: fd.CFGDenoiser(never_called, 7.5, cond_kwarg=3),
         r"cond_kwarg must be a keyword name \(str\), got 3"),
    ],
)
def test_adapters_check_their_model(build, match):
    with pytest.raises(TypeError, match=match):
        build()


# -------------------------------------------------------------------------------------------------------- CLI


def test_cli_backends_with_a_bad_variable_reports_without_a_traceback():
    env = {**os.environ, "FUSED_DIFFUSION_BACKEND": "bogus"}
    command = [sys.executable, "-m", "fused_diffusion", "backends"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert done.returncode != 0
    assert '"available"' in done.stdout  # the report still comes
    assert "FUSED_DIFFUSION_BACKEND='bogus' is invalid; valid values are triton, cuda, cpp, torch" in done.stderr


def test_cli_other_commands_refuse_a_bad_variable_up_front(monkeypatch, capsys):
    monkeypatch.setenv("FUSED_DIFFUSION_BACKEND", "bogus")
    monkeypatch.setattr(sys, "argv", ["python -m fused_diffusion", "demo"])
    monkeypatch.setattr(demo, "main", never_called)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert "FUSED_DIFFUSION_BACKEND='bogus' is invalid" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda backend can run here")
def test_cli_refuses_a_backend_that_cannot_run_here(monkeypatch, capsys):
    monkeypatch.setenv("FUSED_DIFFUSION_BACKEND", "cuda")
    monkeypatch.setattr(sys, "argv", ["python -m fused_diffusion", "demo"])
    monkeypatch.setattr(demo, "main", never_called)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert "FUSED_DIFFUSION_BACKEND='cuda' names a backend that cannot run here" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["demo", "--calls", "0"], "argument --calls: must be an integer >= 1, got '0'"),
    (["demo", "--calls", "5", "2.5"], "argument --calls: must be an integer >= 1, got '2.5'"),
    (["demo", "--samples", "1"], "argument --samples: must be an integer >= 2, got '1'"),
    (["demo", "--reference-calls", "0"], "argument --reference-calls: must be an integer >= 1, got '0'"),
    (["demo", "--device", "bogus"], "argument --device: must be cpu or a CUDA device such as cuda:0, got 'bogus'"),
    (["demo", "--gmm", "--components", "0"], "argument --components: must be an integer >= 1, got '0'"),
    (["demo", "--gmm", "--dim", "-3"], "argument --dim: must be an integer >= 1, got '-3'"),
    (["demo", "--gmm", "--batch", "0"], "argument --batch: must be an integer >= 1, got '0'"),
    (["demo", "--gmm", "--sigma-min", "-1"], "argument --sigma-min: must be a finite number > 0, got '-1'"),
    (["demo", "--gmm", "--sigma-max", "inf"], "argument --sigma-max: must be a finite number > 0, got 'inf'"),
    (["train", "digits", "--iterations", "-1"], "argument --iterations: must be an integer >= 1, got '-1'"),
    (["train", "digits", "--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (["train", "digits", "--max-minutes", "0"], "argument --max-minutes: must be a finite number > 0, got '0'"),
    (["train", "digits-amed", "--calls", "0"], "argument --calls: must be an integer >= 1, got '0'"),
    (["train", "digits-amed", "--trajectories", "x"], "argument --trajectories: must be an integer >= 1, got 'x'"),
])
def test_cli_arguments_are_checked_before_any_work(arguments, message, monkeypatch, capsys):
    monkeypatch.delenv("FUSED_DIFFUSION_BACKEND", raising=False)
    monkeypatch.setattr(sys, "argv", ["python -m fused_diffusion", *arguments])
    monkeypatch.setattr(demo, "main", never_called)
    monkeypatch.setattr(cli, "train", never_called)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_refuses_a_cuda_device_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m fused_diffusion", "demo", "--device", "cuda"])
    monkeypatch.setattr(demo, "main", never_called)
    with pytest.raises(SystemExit):
        cli.main()
    assert "'cuda' needs a CUDA GPU and this machine has none" in capsys.readouterr().err


def test_demo_refuses_sigma_min_above_sigma_max(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m fused_diffusion", "demo", "--gmm", "--sigma-min", "100"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "argument --sigma-min: must be below --sigma-max, got 100.0 and 80.0" in capsys.readouterr().err


@pytest.mark.parametrize("scale", [lambda x: (x + 1) / 2, lambda x: (x + 1) * 127.5])
def test_metrics_refuse_pixel_scaled_images(scale):
    images = fd.zoo.data.load_digits_split().heldout_images[:50]
    with pytest.raises(ValueError, match=r"images must be scaled to \[-1, 1\].*images \* 2 - 1"):
        fd.metrics.frechet_distance(scale(images))
    assert fd.metrics.frechet_distance(images * 3) > 0  # overshooting samples are clamped and scored, not refused


def test_a_half_precision_model_runs_under_a_float32_solver_state():
    """The adapter gives the model its own dtype; the solver keeps x's (a float32 state with a bf16 model)."""
    noise = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        denoiser, _, _ = fd.zoo.digits(dtype=dtype)
        sigmas = fd.get_sigmas_karras(6, denoiser.sigma_min, denoiser.sigma_max)
        results[dtype] = fd.sample_dpmpp_2m(denoiser, noise * sigmas[0], sigmas, disable=True)
    assert results[torch.bfloat16].dtype == torch.float32
    assert (results[torch.bfloat16] - results[torch.float32]).norm() < 0.05 * results[torch.float32].norm()
