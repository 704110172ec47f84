"""fd.from_diffusers: sampling with what a diffusers scheduler's configuration means equals looping that scheduler
(DDIM, Euler, Heun, DPM-Solver++(2M), several configurations each), the model sees exactly the scheduler's timesteps,
and what cannot be reproduced is refused by name."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
# diffusers' schedulers call np.array on tensors the numpy-2 way; not this library's concern
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

import fused_diffusion as fd  # noqa: E402

W = torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1


def eps_model(x, t):
    """A smooth nonlinear epsilon model that depends on the (possibly fractional) timestep."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(len(x), 1)
    return torch.tanh(x @ W.to(x)) * (1 + t / 1000) + 0.1 * x * torch.sin(t / 100)


def diffusers_loop(scheduler, steps, noise, set_options=None, seed=None, **step_options):
    """The pipelines' loop: scale the noise, then scale_model_input / model / step per timestep (a seeded generator
    for the stochastic schedulers' draws)."""
    import inspect

    scheduler.set_timesteps(steps, **(set_options or {}))
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching starts from the noise itself
    if seed is not None and "generator" in inspect.signature(scheduler.step).parameters:
        step_options["generator"] = torch.Generator().manual_seed(seed)
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)  # flow matching scales nothing
    for t in scheduler.timesteps:
        x = scheduler.step(eps_model(scale(x, t), t), t, x, **step_options).prev_sample
    return x


FLOW_MU = {"mu": 0.8}  # a Flux-like resolution shift
# (scheduler, config, set_timesteps options, step options); stochastic ones get a seeded generator
NEW_CONFIGS = [
    (diffusers.EulerAncestralDiscreteScheduler, {}, {}, {}),
    (diffusers.EulerDiscreteScheduler, dict(prediction_type="v_prediction"), {}, {}),
    (diffusers.HeunDiscreteScheduler, dict(prediction_type="v_prediction"), {}, {}),
    (diffusers.UniPCMultistepScheduler, {}, {}, {}),
    (diffusers.UniPCMultistepScheduler, dict(solver_order=3), {}, {}),  # bh1: NaN in diffusers 0.42 itself
    (diffusers.UniPCMultistepScheduler, dict(use_karras_sigmas=True, disable_corrector=[0]), {}, {}),
    (diffusers.LCMScheduler, {}, {}, {}),
    (diffusers.LCMScheduler, dict(timestep_scaling=5.0), dict(original_inference_steps=30), {}),
    (diffusers.TCDScheduler, {}, {}, dict(eta=0.3)),
    (diffusers.TCDScheduler, {}, {}, dict(eta=0.0)),
    (diffusers.FlowMatchEulerDiscreteScheduler, {}, {}, {}),
    (diffusers.FlowMatchEulerDiscreteScheduler, dict(shift=3.0), {}, {}),
    (diffusers.FlowMatchEulerDiscreteScheduler, dict(use_dynamic_shifting=True), FLOW_MU, {}),
    (diffusers.FlowMatchEulerDiscreteScheduler, dict(use_karras_sigmas=True, shift=3.0), {}, {}),
    (diffusers.FlowMatchEulerDiscreteScheduler, dict(shift_terminal=0.1, shift=2.0), {}, {}),
]


def test_a_schedule_the_scheduler_makes_nan_is_refused():
    """shift_terminal stretches a 1-step schedule by 0/0 in diffusers: refused naming the sigmas, not sampled."""
    with pytest.raises(ValueError, match=r"flow sigmas must decrease strictly within \[0, 1\], got \[nan, 0.0\]"):
        fd.from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(shift_terminal=0.1), 1)


def new_config_id(value):
    return value.__name__ if isinstance(value, type) else str(value)


@pytest.mark.parametrize("steps", [1, 4, 13])
@pytest.mark.parametrize("cls,config,set_options,step_options", NEW_CONFIGS, ids=new_config_id)
def test_every_scheduler_equals_its_own_loop(cls, config, set_options, step_options, steps):
    """fp32, 1e-5: the schedulers of today's pipelines, stochastic ones with the same generator draws."""
    if "shift_terminal" in config and steps == 1:
        pytest.skip("diffusers' own 1-step schedule is NaN here (test_a_schedule_the_scheduler_makes_nan_is_refused)")
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    expected = diffusers_loop(cls(**config), steps, noise, set_options, seed=3, **step_options)
    setup = fd.from_diffusers(cls(**config), steps, **set_options, **step_options)
    got = setup.sample(eps_model, noise, generator=torch.Generator().manual_seed(3), disable=True)
    got = got / setup.latent_scale(len(setup.schedule) - 1)  # the scheduler's sample (1 but for VP schedulers)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("steps", [1, 4, 13])
@pytest.mark.parametrize("cls,config,set_options,step_options", NEW_CONFIGS, ids=new_config_id)
def test_fused_scheduler_equals_every_scheduler(cls, config, set_options, step_options, steps):
    if "shift_terminal" in config and steps == 1:
        pytest.skip("diffusers' own 1-step schedule is NaN here (test_a_schedule_the_scheduler_makes_nan_is_refused)")
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    expected = diffusers_loop(cls(**config), steps, noise, set_options, seed=3, **step_options)
    fused = fd.integrations.FusedScheduler(cls(**config))
    got = diffusers_loop(fused, steps, noise, set_options, seed=3, **step_options)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("cls,config", [(diffusers.HeunDiscreteScheduler, {}), (diffusers.DDIMScheduler, {}),
                                        (diffusers.EulerDiscreteScheduler, {}),
                                        (diffusers.FlowMatchEulerDiscreteScheduler, {})], ids=new_config_id)
def test_fused_scheduler_gives_the_steps_pred_original_sample(cls, config):
    reference, fused = cls(**config), fd.integrations.FusedScheduler(cls(**config))
    for scheduler in (reference, fused):
        scheduler.set_timesteps(5)
    x_ref = x_fused = torch.randn(2, 16, generator=torch.Generator().manual_seed(1)) * fused.init_noise_sigma
    scale = getattr(reference, "scale_model_input", lambda x, t: x)
    for t in reference.timesteps:
        out_ref = reference.step(eps_model(scale(x_ref, t), t), t, x_ref)
        out_fused = fused.step(eps_model(fused.scale_model_input(x_fused, t), t), t, x_fused)
        if getattr(out_ref, "pred_original_sample", None) is not None:
            torch.testing.assert_close(out_fused.pred_original_sample, out_ref.pred_original_sample, rtol=1e-5,
                                       atol=1e-5)
        x_ref, x_fused = out_ref.prev_sample, out_fused.prev_sample
        torch.testing.assert_close(x_fused, x_ref, rtol=1e-5, atol=1e-5)
        assert x_fused is out_fused[0] and len(tuple(out_fused)) == 2


CONFIGS = [
    (diffusers.DDIMScheduler, {}),  # clip_sample=True, DDIMScheduler's default
    (diffusers.DDIMScheduler, dict(clip_sample=False, timestep_spacing="trailing", set_alpha_to_one=False)),
    (diffusers.EulerDiscreteScheduler, {}),
    (diffusers.EulerDiscreteScheduler, dict(use_karras_sigmas=True)),
    (diffusers.EulerDiscreteScheduler, dict(timestep_spacing="leading", steps_offset=1, beta_schedule="scaled_linear",
                                            beta_start=0.00085, beta_end=0.012)),
    (diffusers.HeunDiscreteScheduler, {}),
    (diffusers.HeunDiscreteScheduler, dict(use_karras_sigmas=True)),
    (diffusers.DPMSolverMultistepScheduler, {}),
    (diffusers.DPMSolverMultistepScheduler, dict(use_karras_sigmas=True)),
    (diffusers.DPMSolverMultistepScheduler, dict(timestep_spacing="trailing", lower_order_final=False)),
]


@pytest.mark.parametrize("steps", [4, 20])
@pytest.mark.parametrize("cls,config", CONFIGS, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_sampling_equals_the_schedulers_loop(cls, config, steps):
    scheduler = cls(**config)
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    expected = diffusers_loop(cls.from_config(scheduler.config), steps, noise)
    setup = fd.from_diffusers(scheduler, steps)
    got = setup.sample(eps_model, noise, disable=True)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5  # fp32 (the issue asks 1e-4)


@pytest.mark.parametrize("cls,config", CONFIGS[2:], ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_the_model_sees_the_schedulers_timesteps(cls, config):
    scheduler = cls(**config)
    seen = []
    setup = fd.from_diffusers(scheduler, 6)
    setup.sample(lambda x, t: seen.append(t[0].item()) or eps_model(x, t), torch.randn(2, 16), disable=True)
    scheduler.set_timesteps(6)
    assert seen == pytest.approx(scheduler.timesteps.tolist(), abs=1e-4)
    assert len(seen) == len(setup.timesteps)


@pytest.mark.parametrize("cls", [diffusers.DDIMScheduler, diffusers.EulerDiscreteScheduler,
                                 diffusers.HeunDiscreteScheduler, diffusers.DPMSolverMultistepScheduler])
def test_a_diffusers_unet_goes_in_as_it_is(cls):
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    scheduler = cls()
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = fd.from_diffusers(scheduler, 5).sample(unet, noise, disable=True)
        scheduler.set_timesteps(5)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    assert ((got - x).norm() / x.norm()).item() < 1e-5


def test_ddim_eta_and_generator_as_the_scheduler_step_takes_them():
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    noise = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    expected = diffusers_loop(diffusers.DDIMScheduler.from_config(scheduler.config), 8, noise, eta=0.7,
                              generator=torch.Generator().manual_seed(5))
    setup = fd.from_diffusers(scheduler, 8, eta=0.7)
    got = setup.sample(eps_model, noise, generator=torch.Generator().manual_seed(5), disable=True)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def diffusers_img2img(scheduler, steps, image, noise, strength):
    """diffusers' img2img pipelines: get_timesteps' tail of the schedule, add_noise to its first timestep."""
    scheduler.set_timesteps(steps)
    t_start = steps - min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):  # the sigma schedulers find their step by this index
        scheduler.set_begin_index(t_start * scheduler.order)
    x = scheduler.add_noise(image, noise, timesteps[:1])
    for t in timesteps:
        x = scheduler.step(eps_model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("cls,config", CONFIGS, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_img2img_equals_the_img2img_pipelines_loop(cls, config, strength):
    scheduler = cls(**config)
    image = torch.rand(3, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    noise = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    expected = diffusers_img2img(cls.from_config(scheduler.config), 10, image, noise, strength)
    got = fd.from_diffusers(scheduler, 10).sample(eps_model, noise, image=image, strength=strength, disable=True)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("kwargs,match", [
    (dict(strength=0.05), r"strength=0.05 of 10 steps runs int\(10 \* 0.05\) = 0 steps; use a strength of at least 0.1"),
    (dict(strength=1.5), r"strength must be in \(0, 1\], got 1.5"),
    (dict(strength=0.5, image=None), r"strength=0.5 needs an image"),
    (dict(strength=0.5, image=torch.zeros(2, 16)), r"image must be a tensor of the noise's shape \(3, 16\)"),
])
def test_img2img_arguments_are_checked(kwargs, match):
    setup = fd.from_diffusers(diffusers.EulerDiscreteScheduler(), 10)
    kwargs = {"image": torch.zeros(3, 16), **kwargs}
    with pytest.raises(ValueError, match=match):
        setup.sample(eps_model, torch.randn(3, 16), disable=True, **kwargs)


@pytest.mark.parametrize("sampler", [fd.sample_euler, fd.sample_dpmpp_2m, fd.sample_heun, fd.sample_lms])
def test_img2img_start_for_any_sampler(sampler):
    """fd.img2img gives any sampler the img2img start; with the schedulers' own sigmas and timesteps it is the
    img2img pipelines' run (Euler, DPM-Solver++(2M), Heun; LMS has no such scheduler here: finite and shaped)."""
    scheduler = {fd.sample_euler: diffusers.EulerDiscreteScheduler, fd.sample_dpmpp_2m: diffusers.DPMSolverMultistepScheduler,
                 fd.sample_heun: diffusers.HeunDiscreteScheduler}.get(sampler, diffusers.EulerDiscreteScheduler)()
    setup = fd.from_diffusers(scheduler, 10)
    image = torch.rand(3, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    noise = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    x, tail = fd.img2img(image, noise, setup.schedule, 0.6)
    assert len(tail) == 7 and torch.equal(tail, setup.schedule[4:])
    got = sampler(setup.model(eps_model), x, tail, disable=True)
    if sampler is fd.sample_lms:
        assert got.shape == image.shape and torch.isfinite(got).all()
        return
    expected = diffusers_img2img(type(scheduler).from_config(scheduler.config), 10, image, noise, 0.6)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def test_img2img_arguments_are_named():
    sigmas = fd.get_sigmas_karras(10, 0.1, 10.0)
    with pytest.raises(ValueError, match="image and noise must have one shape, got \\(2, 3\\) and \\(2, 4\\)"):
        fd.img2img(torch.zeros(2, 3), torch.zeros(2, 4), sigmas, 0.5)
    with pytest.raises(TypeError, match="image must be a floating-point tensor"):
        fd.img2img(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), sigmas, 0.5)
    with pytest.raises(ValueError, match="strength must be in \\(0, 1\\], got 0.0"):
        fd.img2img(torch.zeros(2, 3), torch.zeros(2, 3), sigmas, 0.0)


def test_the_callers_scheduler_is_left_as_it_was():
    scheduler = diffusers.EulerDiscreteScheduler()
    scheduler.set_timesteps(30)
    before = scheduler.timesteps.clone()
    fd.from_diffusers(scheduler, 5)
    assert torch.equal(scheduler.timesteps, before)


def test_noise_scales_say_where_each_space_starts():
    for config in ({}, dict(timestep_spacing="leading")):  # Euler: the scheduler's own init_noise_sigma
        scheduler = diffusers.EulerDiscreteScheduler(**config)
        scheduler.set_timesteps(10)
        assert fd.from_diffusers(scheduler, 10).init_noise_sigma == pytest.approx(float(scheduler.init_noise_sigma))
    dpm = fd.from_diffusers(diffusers.DPMSolverMultistepScheduler(), 10)  # the scheduler's own is 1 (VP space)
    assert dpm.init_noise_sigma == pytest.approx(float((dpm.schedule[0].double() ** 2 + 1).sqrt()), rel=1e-6)
    assert fd.from_diffusers(diffusers.DDIMScheduler(), 10).init_noise_sigma == 1.0


def test_sample_ddim_defaults_are_ddimschedulers():
    noise = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    expected = diffusers_loop(diffusers.DDIMScheduler(), 10, noise)
    got = fd.sample_ddim(eps_model, noise, diffusers.DDIMScheduler().alphas_cumprod, 10, disable=True)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("scheduler,options,error,match", [
    (diffusers.DDIMScheduler(prediction_type="v_prediction"), {}, ValueError,
     r"DDIMScheduler with prediction_type='v_prediction' is not supported; fused_diffusion reproduces "
     r"prediction_type='epsilon'"),
    (diffusers.DPMSolverMultistepScheduler(solver_order=3), {}, ValueError, r"solver_order=3 is not supported"),
    (diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), {}, ValueError,
     r"algorithm_type='sde-dpmsolver\+\+' is not supported"),
    (diffusers.PNDMScheduler(), {}, TypeError, r"scheduler must be one of diffusers' DDIMScheduler, .* got .*PNDM"),
    ("ddim", {}, TypeError, r"scheduler must be one of"),
    (diffusers.EulerDiscreteScheduler(), dict(eta=0.5), TypeError,
     r"options \['eta'\] are not taken for EulerDiscreteScheduler; it takes none"),
    (diffusers.DDIMScheduler(), dict(eta=-1.0), ValueError, r"eta must be >= 0"),
])
def test_what_cannot_be_reproduced_is_refused_by_name(scheduler, options, error, match):
    with pytest.raises(error, match=match):
        fd.from_diffusers(scheduler, 10, **options)


def test_steps_are_checked():
    with pytest.raises(ValueError, match="steps"):
        fd.from_diffusers(diffusers.DDIMScheduler(), 0)


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [diffusers.EulerDiscreteScheduler, diffusers.HeunDiscreteScheduler,
                                 diffusers.DPMSolverMultistepScheduler, diffusers.DDIMScheduler])
def test_the_graph_sampler_equals_the_schedulers_loop(cls):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    scheduler = cls()
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    expected = diffusers_loop(cls.from_config(scheduler.config), 10, noise)
    setup = fd.from_diffusers(scheduler, 10)
    sampler = setup.sampler(eps_model, device="cuda")
    got = sampler(noise.cuda() * setup.init_noise_sigma).cpu()
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


@pytest.mark.parametrize("sampler", [fd.sample_euler, fd.sample_heun, fd.sample_dpm_2])
def test_base_to_refiner_hand_off_at_sigma_k(sampler):
    """Run to sigma_k with one model, continue with another (SDXL's base -> refiner): for single-step solvers the two
    halves with one model equal the whole run, and a second model takes over from exactly that point."""
    gmm, other = fd.GaussianMixture.random(3, 4, seed=0), fd.GaussianMixture.random(3, 4, seed=1)
    sigmas = fd.get_sigmas_karras(10, 0.01, 20.0)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    whole = sampler(gmm, x, sigmas, disable=True)
    at_k = sampler(gmm, x, sigmas[:7], disable=True)  # ends above 0: regular steps only, no final denoise
    torch.testing.assert_close(sampler(gmm, at_k, sigmas[6:], disable=True), whole, rtol=1e-5, atol=1e-5)
    if sampler is fd.sample_heun:
        return  # its corrector at sigma_k belongs to the base model, its next step's call to the refiner: no one rule
    refined = sampler(other, at_k, sigmas[6:], disable=True)
    # dpm_2's midpoints lie between sigmas: which model runs follows from sigma alone
    expected = sampler(lambda y, s: torch.where(s[:, None] > sigmas[6], gmm(y, s), other(y, s)), x, sigmas,
                       disable=True)
    torch.testing.assert_close(refined, expected, rtol=1e-5, atol=1e-5)


FUSED = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler", "DPMSolverMultistepScheduler": "dpmpp_2m"}


@pytest.mark.parametrize("steps", [4, 20])
@pytest.mark.parametrize("cls,config", [c for c in CONFIGS if c[0].__name__ in FUSED],
                         ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_fused_scheduler_in_the_pipeline_loop_equals_the_diffusers_scheduler(cls, config, steps):
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    expected = diffusers_loop(cls(**config), steps, noise)
    scheduler = fd.integrations.FusedScheduler.from_config(cls(**config).config, solver=FUSED[cls.__name__])
    got = diffusers_loop(scheduler, steps, noise)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5
    assert torch.equal(diffusers_loop(scheduler, steps, noise), got)  # set_timesteps starts a fresh run


def tiny_unet():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    with torch.no_grad():  # a small epsilon, so the pipeline's [0, 1] clamp leaves the images unsaturated
        unet.conv_out.weight.mul_(0.05)
    return unet


@pytest.mark.parametrize("pipeline,eta", [(diffusers.DDPMPipeline, None), (diffusers.DDIMPipeline, 0.0),
                                          (diffusers.DDIMPipeline, 1.0)])
def test_a_pipeline_runs_unchanged_with_the_fused_scheduler(pipeline, eta):
    unet = tiny_unet()
    options = dict(batch_size=2, num_inference_steps=6, output_type="np", **({} if eta is None else {"eta": eta}))
    reference = pipeline(unet, diffusers.DDIMScheduler())
    reference.set_progress_bar_config(disable=True)
    expected = reference(generator=torch.Generator().manual_seed(0), **options).images
    pipe = pipeline(unet, diffusers.DDIMScheduler())
    pipe.scheduler = fd.integrations.FusedScheduler.from_config(pipe.scheduler.config, solver="ddim")
    pipe.set_progress_bar_config(disable=True)
    got = pipe(generator=torch.Generator().manual_seed(0), **options).images
    assert 0.1 < ((expected > 0) & (expected < 1)).mean()  # not all clamped
    assert abs(got - expected).max() < 1e-5


def test_fused_scheduler_takes_another_schedulers_config():
    """A pipeline's PNDM config (Stable Diffusion's scaled_linear betas, steps_offset 1) carries over."""
    pndm = diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    noise = torch.randn(2, 16, generator=torch.Generator().manual_seed(6))
    expected = diffusers_loop(diffusers.EulerDiscreteScheduler.from_config(pndm.config), 8, noise)
    got = diffusers_loop(fd.integrations.FusedScheduler.from_config(pndm.config, solver="euler"), 8, noise)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def test_fused_scheduler_misuse_is_named():
    scheduler = fd.integrations.FusedScheduler.from_config(diffusers.DDIMScheduler().config, solver="ddim")
    with pytest.raises(RuntimeError, match=r"call set_timesteps\(num_inference_steps\) before step"):
        scheduler.step(torch.zeros(1, 16), 999, torch.zeros(1, 16))
    scheduler.set_timesteps(2)
    for t in scheduler.timesteps:
        scheduler.step(torch.zeros(1, 16), t, torch.zeros(1, 16))
    with pytest.raises(RuntimeError, match="step called 3 times for 2 timesteps"):
        scheduler.step(torch.zeros(1, 16), 0, torch.zeros(1, 16))
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match=r"timestep 999 is not one of this run's timesteps \[500, 0\]"):
        scheduler.step(torch.zeros(1, 16), 999, torch.zeros(1, 16), eta=0.0)
    scheduler.step(torch.zeros(1, 16), 500, torch.zeros(1, 16), eta=0.0)
    with pytest.raises(ValueError, match=r"eta changed within a run \(0.0 at the first step, 0.5 now\)"):
        scheduler.step(torch.zeros(1, 16), 0, torch.zeros(1, 16), eta=0.5)
    with pytest.raises(ValueError, match="solver must be one of 'ddim', 'euler', .*'flow_euler', got 'lms'"):
        fd.integrations.FusedScheduler.from_config(diffusers.DDIMScheduler().config, solver="lms")
    with pytest.raises(ValueError, match="prediction_type='sample' is not supported"):
        fd.integrations.FusedScheduler.from_config(diffusers.DDIMScheduler().config, solver="euler",
                                                   prediction_type="sample")


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["ddim", "euler", "dpmpp_2m"])
def test_fused_scheduler_steps_without_a_host_sync(solver):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    scheduler = fd.integrations.FusedScheduler.from_config(diffusers.DDIMScheduler().config, solver=solver)
    scheduler.set_timesteps(10, device="cuda")
    x = torch.randn(2, 16, device="cuda")
    first = scheduler.timesteps[0]
    x = scheduler.step(eps_model(scheduler.scale_model_input(x, first), first), first, x).prev_sample  # tables built
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in scheduler.timesteps[1:]:
            model_input = scheduler.scale_model_input(x, t)
            x = scheduler.step(torch.tanh(model_input), t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()


@pytest.fixture(scope="module")
def digits_unet():
    return fd.zoo.digits().denoiser.inner_model


def pipeline_images(pipe, steps=8, **options):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=6, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                output_type="np", **options).images


@pytest.mark.parametrize("pipeline,solver,options", [
    (diffusers.DDIMPipeline, "ddim", {}), (diffusers.DDIMPipeline, "ddim", dict(eta=1.0)),
    (diffusers.DDPMPipeline, "dpmpp_2m", {}), (diffusers.DDPMPipeline, "ddim", {}),
])
def test_accelerated_pipeline_equals_its_own_loop(digits_unet, pipeline, solver, options):
    """The shipped digits U-Net (real digits, so the [0, 1] clamp leaves most pixels alone) in a pipeline whose own
    loop runs the solver's diffusers scheduler, before and after accelerate, and after undo."""
    scheduler = diffusers.DDIMScheduler(clip_sample=False) if solver == "ddim" else diffusers.DPMSolverMultistepScheduler()
    pipe = pipeline(digits_unet, scheduler)
    if pipeline is diffusers.DDIMPipeline:
        pipe.scheduler = scheduler  # DDIMPipeline makes a DDIMScheduler of any scheduler it is given
    expected = pipeline_images(pipe, **options)
    handle = fd.integrations.accelerate(pipe, solver=solver)
    assert handle.solver == solver and type(pipe).__name__ == f"Accelerated{pipeline.__name__}"
    got = pipeline_images(pipe, **options)
    assert got.shape == expected.shape == (6, 8, 8, 1)
    assert abs(got - expected).max() < 1e-4
    fd.integrations.undo(pipe)
    assert type(pipe) is pipeline and abs(pipeline_images(pipe, **options) - expected).max() == 0


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_accelerated_sigma_solvers_equal_their_schedulers_loop(digits_unet, solver):
    """DDPMPipeline's loop has no scale_model_input, so Euler / Heun are compared with their scheduler's own loop."""
    pipe = diffusers.DDPMPipeline(digits_unet, diffusers.DDPMScheduler())
    fd.integrations.accelerate(pipe, solver=solver)
    got = pipeline_images(pipe, steps=8)
    scheduler = getattr(diffusers, fd.integrations.FusedScheduler.SOLVERS[solver]).from_config(
        diffusers.DDPMScheduler().config)
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    scheduler.set_timesteps(8)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(digits_unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    expected = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(got - expected).max() < 1e-4
    fd.integrations.undo(pipe)


def test_accelerate_puts_deepcache_and_skip_tuning_on_the_unet_and_undo_removes_them(digits_unet):
    pipe = diffusers.DDIMPipeline(digits_unet, diffusers.DDIMScheduler(clip_sample=False))
    plain = pipeline_images(pipe)
    fd.integrations.accelerate(pipe, solver="ddim", deepcache=fd.unet.DeepCacheConfig(interval=2),
                               skip_tuning=fd.unet.SkipTuningConfig(rho_bottom=0.6))
    with_both = pipeline_images(pipe)
    fd.integrations.undo(pipe)
    handles = [fd.unet.enable_deepcache(digits_unet, interval=2), fd.unet.enable_skip_tuning(digits_unet, 0.6)]
    setup = fd.from_diffusers(diffusers.DDIMScheduler(clip_sample=False), 8)
    with torch.no_grad():
        x = setup.sample(digits_unet, torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                         disable=True)
    for handle in reversed(handles):
        handle.disable()
    assert abs(with_both - (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()).max() < 1e-5
    assert abs(with_both - plain).max() > 1e-3  # the methods changed the samples
    assert abs(pipeline_images(pipe) - plain).max() == 0  # and undo took them off


def test_accelerate_misuse_is_named(digits_unet):
    pipe = diffusers.DDIMPipeline(digits_unet, diffusers.DDIMScheduler())
    with pytest.raises(TypeError, match=r"pipe must be a diffusers DDPMPipeline, DDIMPipeline, StableDiffusionPipeline, "
                                        r".*FluxPipeline, got .*str"):
        fd.integrations.accelerate("pipe")
    with pytest.raises(ValueError, match=r"solver must be None \(the pipeline's scheduler\) or one of 'ddim', 'euler', .*, got 'lms'"):
        fd.integrations.accelerate(pipe, solver="lms")
    with pytest.raises(TypeError, match="deepcache must be an fd.unet.DeepCacheConfig or None, got .*dict"):
        fd.integrations.accelerate(pipe, deepcache={"interval": 2})
    with pytest.raises(ValueError, match="pipe was not accelerated"):
        fd.integrations.undo(pipe)
    fd.integrations.accelerate(pipe, solver="dpmpp_2m")
    with pytest.raises(ValueError, match="pipe is already accelerated; undo"):
        fd.integrations.accelerate(pipe)
    with pytest.raises(ValueError, match="eta=0.5 is DDIM's; this pipeline samples with solver='dpmpp_2m'"):
        pipe(num_inference_steps=4, eta=0.5)
    fd.integrations.undo(pipe)


@pytest.mark.gpu
def test_accelerated_pipeline_replays_one_cuda_graph():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    unet = fd.zoo.digits(device="cuda").denoiser.inner_model
    pipe = diffusers.DDPMPipeline(unet, diffusers.DPMSolverMultistepScheduler()).to("cuda")
    expected = pipeline_images(pipe)
    handle = fd.integrations.accelerate(pipe, solver="dpmpp_2m")
    first, again = pipeline_images(pipe), pipeline_images(pipe)
    assert abs(first - expected).max() < 1e-4 and abs(again - first).max() == 0
    (sampler,) = handle.samplers.values()
    assert sampler.captures == 1
    fd.integrations.undo(pipe)
