"""Bad input to the sampling loop, fd.Sampler and the ops never gives a wrong tensor or an error that blames the
wrong thing: the cases a new user's probe found, the ones found beyond it, and a property test over random valid and
invalid schedules and shapes (the entry points' own argument checks: tests/test_bad_input_api.py)."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fused_diffusion as fd
from fused_diffusion import ops

from fused_diffusion.testing import reference_samplers as ref
from mixture import SIGMA_MAX, rel_err


def schedule(n=5):
    return fd.get_sigmas_karras(n, 0.01, SIGMA_MAX)


class TestSamplerOut:
    def test_broadcastable_out_is_refused(self, gmm):
        noise = torch.randn(4, 4) * SIGMA_MAX
        sampler = fd.Sampler(gmm, "euler", schedule())
        with pytest.raises(ValueError, match=r"out must have the result's shape \(4, 4\), got \(1, 4\)"):
            sampler(noise, out=torch.empty(1, 4))

    def test_integer_out_is_refused(self, gmm):
        sampler = fd.Sampler(gmm, "euler", schedule())
        with pytest.raises(TypeError, match="out must be a floating-point tensor, got dtype torch.int64"):
            sampler(torch.randn(4, 4), out=torch.empty(4, 4, dtype=torch.long))

    def test_valid_out_receives_the_result(self, gmm):
        noise = torch.randn(4, 4) * SIGMA_MAX
        out = torch.empty(4, 4)
        result = fd.Sampler(gmm, "euler", schedule())(noise, out=out)
        assert result is out
        torch.testing.assert_close(out, fd.sample_euler(gmm, noise, schedule(), disable=True))


class TestModelOutputs:
    """Models that reuse their output buffer or write into their input."""

    @staticmethod
    def one_buffer(model):
        buffer = {}

        def reusing(x, sigma):
            out = buffer.setdefault("out", torch.empty_like(x))
            return out.copy_(model(x, sigma))

        return reusing

    @pytest.mark.parametrize("sampler,where", [
        (fd.sample_dpmpp_2m, "step 1"), (fd.sample_dpmpp_3m_sde, "step 1"), (fd.sample_dpmpp_2m_sde, "step 1"),
        (fd.sample_dpmpp_sde, r"step 0 \(sigma_s="), (fd.sample_heun, "step 0"),
    ], ids=lambda v: getattr(v, "__name__", ""))
    def test_one_output_buffer_is_refused_where_the_solver_still_reads_it(self, gmm, noise, sampler, where):
        """Multistep history and two-call steps: the buffer was overwritten before the loop could see it."""
        with pytest.raises(ValueError, match=where + r".*reuses one output buffer.*clone\(\)"):
            sampler(self.one_buffer(gmm), noise, schedule(), disable=True)

    @pytest.mark.parametrize("sampler", [fd.sample_euler, fd.sample_euler_ancestral, fd.sample_lms, fd.sample_ipndm],
                             ids=lambda f: f.__name__)
    def test_one_output_buffer_is_fine_where_no_output_is_kept(self, gmm, noise, sampler):
        """Single-call steps without history, and multistep solvers that keep derivatives (new tensors), not D."""
        torch.manual_seed(0)
        expected = sampler(gmm, noise, schedule(), disable=True)
        torch.manual_seed(0)
        assert rel_err(sampler(self.one_buffer(gmm), noise, schedule(), disable=True), expected) < 1e-12

    def test_model_writing_into_its_input_is_refused(self, gmm, noise):
        def in_place(x, sigma):
            return gmm(x.mul_(1.0), sigma)

        with pytest.raises(ValueError, match=r"step 0 \(sigma_hat=20\): the model modified its input x in place"):
            fd.sample_euler(in_place, noise, schedule(), disable=True)


class TestNonFiniteIsBlamedOnItsSource:
    def test_nan_in_x(self, gmm, noise):
        x = noise.clone()
        x[1, 2] = float("nan")
        with pytest.raises(ValueError, match=r"x \(the initial noise\) contains NaN or inf"):
            fd.sample_dpmpp_2m(gmm, x, schedule(), disable=True)

    def test_nan_in_an_extra_argument(self, gmm, noise):
        def conditioned(x, sigma, shift):
            return gmm(x + shift, sigma)

        shift = torch.zeros(4, dtype=torch.float64)
        shift[0] = float("inf")
        with pytest.raises(ValueError, match=r"extra_args\['shift'\] contains NaN or inf"):
            fd.sample_euler(conditioned, noise, schedule(), extra_args={"shift": shift}, disable=True)

    def test_inputs_checked_together_name_the_one_with_nan(self, gmm, noise):
        def conditioned(x, sigma, shift, scale):
            return gmm(x * scale + shift, sigma)

        shift, scale = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        scale[3] = float("nan")
        with pytest.raises(ValueError, match=r"extra_args\['scale'\] contains NaN or inf"):
            fd.sample_euler(conditioned, noise, schedule(), extra_args={"shift": shift, "scale": scale}, disable=True)

    def test_finite_inputs_whose_sum_overflows_are_not_refused(self, gmm, noise):
        huge = torch.full((4,), 1e308, dtype=torch.float64)  # together they sum past the largest float

        def conditioned(x, sigma, a, b):
            return gmm(x, sigma)

        out = fd.sample_euler(conditioned, noise, schedule(), extra_args={"a": huge, "b": huge}, disable=True)
        assert torch.equal(out, fd.sample_euler(gmm, noise, schedule(), disable=True))

    def test_nan_from_the_noise_sampler(self, gmm, noise):
        with pytest.raises(FloatingPointError, match="noise_sampler returned non-finite values at step 0"):
            fd.sample_euler_ancestral(gmm, noise, schedule(), disable=True,
                                      noise_sampler=lambda s, t: torch.full_like(noise, float("nan")))

    def test_nan_from_the_model_still_names_the_model(self, noise):
        with pytest.raises(FloatingPointError, match=r"model returned non-finite values at step 0 \(sigma_hat=20\)"):
            fd.sample_euler(lambda x, s: x * float("nan"), noise, schedule(), disable=True)

    def test_schedule_coefficients(self, gmm, noise):
        with pytest.raises(ValueError, match=r"dpmpp_2m: step 2 .* non-finite 'dpmpp_2m' coefficients"):
            fd.sample_dpmpp_2m(gmm, noise, torch.tensor([20.0, 5.0, 5.0, 1.0, 0.0], dtype=torch.float64),
                               disable=True)

    def test_check_finite_off_reads_nothing(self, noise):
        sampler = fd.Sampler(lambda x, s: x * float("nan"), "euler", schedule(), check_finite=False)
        assert sampler(noise.float()).isnan().all()


class TestArguments:
    @pytest.mark.parametrize("x,match", [
        (np.zeros((2, 4), dtype=np.float32), "x must be a torch.Tensor, got numpy.ndarray"),
        ([[0.0] * 4], "x must be a torch.Tensor, got builtins.list"),
        (torch.zeros(2, 4, dtype=torch.int32), "x must be a floating-point tensor, got dtype torch.int32"),
    ])
    def test_x(self, gmm, x, match):
        with pytest.raises(TypeError, match=match):
            fd.sample_euler(gmm, x, schedule(), disable=True)

    def test_noise_of_the_sampler_is_named_noise(self, gmm):
        with pytest.raises(TypeError, match="noise must be a torch.Tensor, got numpy.ndarray"):
            fd.Sampler(gmm, "euler", schedule())(np.zeros((2, 4), dtype=np.float32))

    @pytest.mark.parametrize("kwargs,error,match", [
        (dict(model=42), TypeError, "model must be callable"),
        (dict(extra_args=[1]), TypeError, "extra_args must be a dict"),
        (dict(callback="print"), TypeError, "callback must be callable or None, got str"),
    ])
    def test_loop_arguments(self, gmm, noise, kwargs, error, match):
        arguments = dict(model=gmm, extra_args=None, callback=None) | kwargs
        with pytest.raises(error, match=match):
            fd.sample_euler(arguments["model"], noise, schedule(), extra_args=arguments["extra_args"],
                            callback=arguments["callback"], disable=True)

    def test_noise_sampler_on_another_device(self, gmm, noise):
        with pytest.raises(ValueError, match="step 0: noise_sampler returned a tensor on meta, expected cpu"):
            fd.sample_euler_ancestral(gmm, noise, schedule(), disable=True,
                                      noise_sampler=lambda s, t: torch.empty(noise.shape, device="meta"))

    @pytest.mark.parametrize("sampler,options,error,match", [
        (fd.sample_euler, dict(s_noise=float("nan")), ValueError, "s_noise must be finite, got nan"),
        (fd.sample_euler, dict(s_churn=-1.0), ValueError, r"s_churn must be >= 0, got -1.0"),
        (fd.sample_euler_ancestral, dict(eta=float("inf")), ValueError, "eta must be finite, got inf"),
        (fd.sample_euler_ancestral, dict(eta="1"), TypeError, r"eta must be a real number, got '1' \(str\)"),
        (fd.sample_dpmpp_sde, dict(r=0.0), ValueError, r"r must be in \(0, 1\], got 0.0"),
        (fd.sample_euler, dict(s_tmax=float("nan")), ValueError, "s_tmax must be a number, got nan"),
        (fd.sample_amed, dict(scale_dir=None), TypeError, r"scale_dir must be a real number, got None \(NoneType\)"),
        (fd.sample_ipndm, dict(predictor=3), TypeError, "predictor must be callable"),
    ])
    def test_solver_options(self, gmm, noise, sampler, options, error, match):
        with pytest.raises(error, match=match):
            sampler(gmm, noise, schedule(), disable=True, **options)

    def test_sampler_arguments(self, gmm):
        with pytest.raises(ValueError, match="max_graphs must be an integer >= 1, got 0"):
            fd.Sampler(gmm, "euler", schedule(), max_graphs=0)
        with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
            fd.Sampler(gmm, "euler", schedule(), generator=0)
        with pytest.raises(TypeError, match="extra_args must be a dict"):
            fd.Sampler(gmm, "euler", schedule())(torch.randn(2, 4), extra_args=(1,))


def test_bf16_under_the_triton_interpreter_takes_the_exact_reference():
    """The interpreter mis-loads bf16 (1.5e-2 relative error): such calls run the torch reference instead."""
    info = ops.backends()
    if "triton" not in info["available"]:
        pytest.skip(f"triton unavailable: {info['unavailable']['triton']}")
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(3, 1000, generator=generator).bfloat16() for _ in range(3)]
    weights = torch.tensor([0.3, -1.7, 2.2])
    with ops.use_backend("triton"), ops.count_op_launches() as launches:
        got = ops.lincomb(inputs, weights)
    exact = sum(w * t.float() for w, t in zip(weights.tolist(), inputs))
    assert rel_err(got.float(), exact) < 4e-3  # bf16 rounding of the result only
    if not torch.cuda.is_available():
        assert dict(launches.launches) == {("lincomb", "torch"): 1}


# ---- property test: random valid schedules and shapes give the reference's finite result; invalid ones an error

SAMPLERS = [(fd.sample_euler, ref.euler), (fd.sample_heun, ref.heun), (fd.sample_dpmpp_2m, ref.dpmpp_2m),
            (fd.sample_lms, ref.lms), (fd.sample_dpm_2, ref.dpm_2)]


@st.composite
def valid_schedules(draw):
    """Decreasing positive sigmas from sigma_0 in (0.1, 30), each 0.3 to 0.95 times the last, optionally ending in 0
    (always when there is one sigma)."""
    sigmas = [draw(st.floats(0.1, 30.0))]
    for ratio in draw(st.lists(st.floats(0.3, 0.95), max_size=6)):
        sigmas.append(sigmas[-1] * ratio)
    if draw(st.booleans()) or len(sigmas) == 1:
        sigmas.append(0.0)
    return torch.tensor(sigmas, dtype=torch.float64)


@st.composite
def invalid_schedules(draw):
    """A valid schedule broken one way: an increase, a NaN or inf, a negative or inner 0, a wrong rank, too short."""
    sigmas = draw(valid_schedules())
    how = draw(st.sampled_from(["increase", "nan", "inf", "negative", "inner_zero", "2d", "short"]))
    if how == "increase":
        sigmas = torch.cat([sigmas[:1], sigmas[:1] + draw(st.floats(0.01, 5.0)), sigmas[1:]])
    elif how in ("nan", "inf"):
        sigmas = sigmas.clone()
        sigmas[draw(st.integers(0, len(sigmas) - 1))] = float(how)
    elif how == "negative":
        sigmas = torch.cat([sigmas, sigmas.new_tensor([-draw(st.floats(0.01, 5.0))])])
    elif how == "inner_zero":
        sigmas = torch.cat([sigmas[:1], sigmas.new_zeros(1), sigmas[1:]])
    elif how == "2d":
        sigmas = sigmas[None]
    else:
        sigmas = sigmas[:1]
    return sigmas


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sigmas=valid_schedules(), batch=st.integers(1, 3), extra_dims=st.integers(0, 2), which=st.integers(0, 4))
def test_valid_schedules_and_shapes_match_the_reference(gmm, sigmas, batch, extra_dims, which):
    ours, theirs = SAMPLERS[which]
    model = gmm if extra_dims == 0 else (lambda x, s: gmm(x.reshape(len(x), -1), s).reshape(x.shape))
    shape = (batch, 4) if extra_dims == 0 else (batch, 2, 2) if extra_dims == 1 else (batch, 1, 2, 2)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(batch)) * float(sigmas[0])
    torch.manual_seed(0)
    got = ours(model, x, sigmas, disable=True)
    torch.manual_seed(0)
    expected = theirs(model, x, sigmas)
    assert got.shape == x.shape and torch.isfinite(got).all()
    assert ((got - expected).norm() <= 1e-10 * expected.norm() + 1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sigmas=invalid_schedules(), which=st.integers(0, 4))
def test_invalid_schedules_are_refused(gmm, noise, sigmas, which):
    ours, _ = SAMPLERS[which]
    with pytest.raises((ValueError, TypeError), match="sigmas"):
        ours(gmm, noise, sigmas, disable=True)


class TestProbeFindings:
    """Cases a second probe of the public API found beyond the issue's list."""

    def test_tensors_without_data(self, gmm, noise):
        with pytest.raises(ValueError, match="x must hold data, got a tensor on the meta device"):
            fd.sample_heun(gmm, noise.to("meta"), schedule(), disable=True)
        with pytest.raises(ValueError, match="sigmas must hold data"):
            fd.sample_euler(gmm, noise, schedule().to("meta"), disable=True)

    @pytest.mark.parametrize("sampler", [fd.sample_dpmpp_sde, fd.sample_dpmpp_2m_sde, fd.sample_dpmpp_3m_sde],
                             ids=lambda f: f.__name__)
    def test_sde_samplers_check_x_before_building_the_tree(self, gmm, sampler):
        with pytest.raises(TypeError, match="x must be a torch.Tensor, got numpy.ndarray"):
            sampler(gmm, np.zeros((2, 4)), schedule(), disable=True)
        with pytest.raises(TypeError, match="x must be a floating-point tensor"):
            sampler(gmm, torch.zeros(2, 4, dtype=torch.long), schedule(), disable=True)

    def test_integer_noise_from_a_noise_sampler(self, gmm, noise):
        with pytest.raises(TypeError, match="noise_sampler returned dtype torch.int64"):
            fd.sample_euler_ancestral(gmm, noise, schedule(), disable=True,
                                      noise_sampler=lambda s, t: torch.ones(noise.shape, dtype=torch.long))

    def test_integer_options(self, gmm, noise):
        with pytest.raises(TypeError, match=r"order must be an integer >= 1, got True \(bool\)"):
            fd.sample_lms(gmm, noise, schedule(), order=True, disable=True)
        expected = fd.sample_lms(gmm, noise, schedule(), order=3, disable=True)
        assert torch.equal(fd.sample_lms(gmm, noise, schedule(), order=np.int64(3), disable=True), expected)
        with pytest.raises(TypeError, match=r"steps must be an integer >= 1, got True \(bool\)"):
            fd.sample_shortcut(lambda x, t, d: x, noise, steps=True, disable=True)
        with pytest.raises(ValueError, match="solver_type must be 'midpoint' or 'heun', got \\['midpoint'\\]"):
            fd.sample_dpmpp_2m_sde(gmm, noise, schedule(), solver_type=["midpoint"], disable=True)
        with pytest.raises(TypeError, match="solver must be a solver name"):
            fd.Sampler(gmm, ["euler"], schedule())

    def test_generator_type(self, gmm, noise):
        with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got str"):
            fd.sample_consistency(gmm, noise, schedule(), generator="seed", disable=True)

    def test_dpm_adaptive_arguments_and_models(self, gmm, noise):
        with pytest.raises(TypeError, match="model must be callable"):
            fd.sample_dpm_adaptive("den", noise, 0.1, 10.0, disable=True)
        with pytest.raises(TypeError, match="extra_args must be a dict"):
            fd.sample_dpm_adaptive(gmm, noise, 0.1, 10.0, extra_args=[1], disable=True)
        with pytest.raises(ValueError, match=r"order must be 2 or 3, got \[2\]"):
            fd.sample_dpm_adaptive(gmm, noise, 0.1, 10.0, order=[2], disable=True)
        with pytest.raises(ValueError, match="modified its input x in place"):
            fd.sample_dpm_adaptive(lambda x, s: gmm(x.mul_(1.0), s), noise, 0.1, 10.0, disable=True)
        with pytest.raises(ValueError, match="reuses one output buffer"):
            fd.sample_dpm_adaptive(TestModelOutputs.one_buffer(gmm), noise, 0.1, 10.0, disable=True)

    def test_amed_predictor_outputs(self, gmm, noise):
        with pytest.raises(FloatingPointError, match="the AMED predictor returned non-finite values at step 0"):
            fd.sample_amed(gmm, noise, schedule(), predictor=lambda x, s, t, a: torch.full_like(s, float("nan")),
                           disable=True)
        with pytest.raises(TypeError, match=r"the AMED predictor's r must be a real number, got 'half' \(str\)"):
            fd.sample_amed(gmm, noise, schedule(), predictor=lambda x, s, t, a: "half", disable=True)
        with pytest.raises(ValueError, match=r"r must have shape \[\] or \[8\] \(one per sample\), got \(9,\)"):
            fd.sample_amed(gmm, noise, schedule(), predictor=lambda x, s, t, a: torch.full((9,), 0.5), disable=True)
        with pytest.raises(TypeError, match="sigmas must be a torch.Tensor"):
            fd.sample_amed(gmm, noise, schedule().tolist(), denoise_to_zero=True, disable=True)

    def test_ipndm_refuses_a_repeated_sigma(self, gmm, noise):
        with pytest.raises(ValueError, match=r"ipndm needs strictly decreasing sigmas: sigmas\[1\] = sigmas\[2\]"):
            fd.sample_ipndm(gmm, noise, torch.tensor([20.0, 5.0, 5.0, 1.0, 0.0]), disable=True)

    def test_flow_times(self, noise):
        velocity = lambda x, t, d: x  # noqa: E731
        with pytest.raises(ValueError, match="flow times must increase strictly from 0 to 1"):
            fd.Sampler(velocity, "shortcut", torch.tensor([0.0, float("nan"), 1.0]))
        with pytest.raises(TypeError, match="flow times must be a floating-point torch.Tensor"):
            fd.Sampler(velocity, "shortcut", [0.0, 0.5, 1.0])
        with pytest.raises(TypeError, match="x must be a torch.Tensor, got builtins.NoneType"):
            fd.sample_shortcut(velocity, None, 4, disable=True)

    def test_ddim_timesteps_off_the_scheduler_grid(self):
        alphas_cumprod = fd.ddpm_alphas_cumprod(100)
        with pytest.raises(ValueError, match=r"timesteps must be a DDIMScheduler grid for 100 training steps and 2 steps"):
            fd.Sampler(lambda x, t: x, "ddim", torch.tensor([99, 10]), alphas_cumprod=alphas_cumprod)
        for spacing, offset in [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)]:
            timesteps = fd.solvers.ddim_timesteps(100, 7, spacing, offset)
            fd.Sampler(lambda x, t: x, "ddim", timesteps, alphas_cumprod=alphas_cumprod)  # accepted

    @pytest.mark.parametrize("adapter", ["eps", "v", "flow"])
    def test_adapters_check_the_wrapped_model(self, adapter):
        x, sigma = torch.randn(2, 1, 4, 4), torch.full((2,), 1.0)

        def wrap(inner):
            if adapter == "flow":
                return fd.FlowDenoiser(inner)
            return (fd.EpsDenoiser if adapter == "eps" else fd.VDenoiser)(inner, fd.ddpm_alphas_cumprod())

        with pytest.raises(ValueError, match=r"returned \w+ of shape \(1, 1, 4, 4\), expected \(2, 1, 4, 4\)"):
            wrap(lambda x, t: torch.zeros(1, 1, 4, 4))(x, sigma)
        with pytest.raises(TypeError, match="of dtype torch.int64, expected a floating-point tensor"):
            wrap(lambda x, t: torch.zeros(2, 1, 4, 4, dtype=torch.long))(x, sigma)
        with pytest.raises(TypeError, match=r"sigma must be a floating-point tensor of shape \[2\]"):
            wrap(lambda x, t: x)(x, 1.0)
        with pytest.raises(ValueError, match=r"sigma must have shape \[2\] \(one per sample of x\), got \(1,\)"):
            wrap(lambda x, t: x)(x, sigma[:1])

    def test_cfg_checks_the_guided_batch(self):
        x, sigma, cond = torch.randn(2, 3), torch.ones(2), torch.zeros(2, 5)
        wrong = fd.CFGDenoiser(lambda x, s, cond: torch.zeros(4, 6), scale=3.0)
        with pytest.raises(ValueError, match=r"returned the guided batch \[uncond, cond\] of shape \(4, 6\), "
                                             r"expected \(4, 3\)"):
            wrong(x, sigma, cond=cond, uncond=cond)

    def test_quantize_must_be_a_bool(self):
        with pytest.raises(TypeError, match="quantize must be a bool"):
            fd.EpsDenoiser(lambda x, t: x, fd.ddpm_alphas_cumprod(), quantize="no")

    def test_brownian_tree_arguments_and_queries(self):
        x = torch.zeros(2, 3)
        with pytest.raises(ValueError, match="sigma_min must be a number|sigma_min must be finite"):
            fd.BrownianTreeNoiseSampler(x, float("nan"), 1.0)
        with pytest.raises(ValueError, match="sigma_max must be finite"):
            fd.BrownianTreeNoiseSampler(x, 0.1, float("inf"))
        with pytest.raises(TypeError, match="must be a floating-point torch.Tensor"):
            fd.BrownianTreeNoiseSampler(np.zeros((2, 3)), 0.1, 1.0)
        tree = fd.BrownianTreeNoiseSampler(x, 0.1, 1.0, seed=0)
        with pytest.raises(ValueError, match=r"sigma = 5.0 lies outside the tree's range \[0.1, 1\]"):
            tree(torch.tensor(5.0), torch.tensor(0.5))
        with pytest.raises(ValueError, match="sigma_next = nan lies outside"):
            tree(torch.tensor(1.0), torch.tensor(float("nan")))  # torchsde would loop forever
        with pytest.raises(TypeError, match="must be a floating-point torch.Tensor"):
            fd.default_noise_sampler(None)

    @pytest.mark.parametrize("call,error,match", [
        (lambda: fd.get_sigmas_karras(5, 0.1, 1e39), ValueError, "sigma_max=1e\\+39 overflows float32"),
        (lambda: fd.get_sigmas_vp(5, beta_d=1e4), ValueError, "overflows float32"),
        (lambda: fd.get_sigmas_karras(5, 0.1, 10.0, device=3.5), TypeError, "device must be a torch.device"),
        (lambda: fd.get_sigmas_time_uniform(5, 0.002, 80.0, device="bogus"), ValueError,
         "device must name a torch device, got 'bogus'"),
    ])
    def test_schedule_arguments(self, call, error, match):
        with pytest.raises(error, match=match):
            call()


class TestOpsAndAmedArguments:
    def test_ops_take_real_floating_data(self):
        a = torch.randn(2, 3)
        with pytest.raises(TypeError, match="inputs must be a list or tuple of tensors, got Tensor"):
            ops.lincomb(a, torch.tensor([0.5, 2.0]))  # would be iterated over its rows
        with pytest.raises(TypeError, match=r"inputs\[0\] must be a real floating-point tensor, got dtype torch.int64"):
            ops.lincomb([a.long(), a.long()], torch.tensor([0.5, 0.5]))
        with pytest.raises(TypeError, match="out must be a real floating-point tensor, got dtype torch.int64"):
            ops.lincomb([a, a], torch.tensor([0.5, 0.5]), out=torch.empty(2, 3, dtype=torch.long))
        with pytest.raises(TypeError, match="must be a real floating-point tensor, got dtype torch.complex64"):
            ops.lincomb([a.to(torch.complex64)], torch.tensor([2.0]))
        h, skip = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
        with pytest.raises(TypeError, match="h must be a torch.Tensor, got numpy.ndarray"):
            ops.skip_concat(h.numpy(), skip, 0.5)
        with pytest.raises(TypeError, match="rho must be a real tensor, got dtype torch.complex64"):
            ops.skip_concat(h, skip, torch.tensor(0.5 + 1j))
        with pytest.raises(TypeError, match="fresh must be a real floating-point tensor"):
            ops.blend(a.long(), a.long(), 0.5)

    def test_amed_arguments(self):
        with pytest.raises(TypeError, match=r"calls must be an integer >= 1, got True \(bool\)"):
            fd.amed.schedule(True, 0.1, 10.0)
        torch.testing.assert_close(fd.amed.schedule(np.int64(5), 0.1, 10.0), fd.amed.schedule(5, 0.1, 10.0))
        with pytest.raises(ValueError, match=r"kind must be one of .*, got \['logsnr'\]"):
            fd.amed.schedule(5, 0.1, 10.0, kind=["logsnr"])
        with pytest.raises(TypeError, match=r"scale_dir must be a real number, got '0.5' \(str\)"):
            fd.amed.Predictor(scale_dir="0.5")
        with pytest.raises(TypeError, match=r"bottleneck_dim must be an integer >= 0, got True \(bool\)"):
            fd.amed.Predictor(bottleneck_dim=True)
        with pytest.raises(ValueError, match="hidden_dim must be an integer >= 1, got 0"):
            fd.amed.Predictor(bottleneck_dim=8, hidden_dim=0)
        with pytest.raises(FileNotFoundError, match="path '/nonexistent.safetensors': no such file"):
            fd.amed.load("/nonexistent.safetensors")
