"""fd.integrations.accelerate on a Stable-Diffusion-style pipeline built offline from tiny random components (a
transformers CLIPTextModel from a config; prompts go in as prompt_embeds, since no tokenizer can be built offline):
its images equal the pipeline's own loop with the solver's scheduler, guidance, callbacks and undo included."""
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import fused_diffusion as fd  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
SOLVERS = {"ddim": diffusers.DDIMScheduler, "euler": diffusers.EulerDiscreteScheduler,
           "heun": diffusers.HeunDiscreteScheduler, "dpmpp_2m": diffusers.DPMSolverMultistepScheduler}


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, sample_size=16).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=100,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    return dict(vae=vae, text_encoder=text, tokenizer=None, unet=unet, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def pipeline(components, scheduler):
    pipe = diffusers.StableDiffusionPipeline(scheduler=scheduler, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


EMBEDS = dict(prompt_embeds=torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)),
              negative_prompt_embeds=torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(2)).expand(2, 5, 16))


def images(pipe, **options):
    options = {"num_inference_steps": 6, "guidance_scale": 5.0, "output_type": "pt", **EMBEDS, **options}
    return pipe(generator=torch.Generator().manual_seed(0), **options).images


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_accelerated_sd_pipeline_equals_its_own_loop(components, solver, guidance_scale):
    pipe = pipeline(components, SOLVERS[solver]())
    expected = images(pipe, guidance_scale=guidance_scale)
    fd.integrations.accelerate(pipe, solver=solver)
    got = images(pipe, guidance_scale=guidance_scale)
    assert got.shape == expected.shape == (2, 3, 16, 16)
    assert rel(got, expected) < 1e-4
    fd.integrations.undo(pipe)
    assert torch.equal(images(pipe, guidance_scale=guidance_scale), expected)


def test_switching_scheduler_follows_diffusers_from_config(components):
    """A pipeline with its PNDM scheduler, accelerated with Euler, equals the pipeline given
    EulerDiscreteScheduler.from_config(pipe.scheduler.config), as a diffusers user switches."""
    pipe = pipeline(components, diffusers.PNDMScheduler(skip_prk_steps=True))
    fd.integrations.accelerate(pipe, solver="euler")
    got = images(pipe, num_images_per_prompt=2)
    fd.integrations.undo(pipe)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert rel(got, images(pipe, num_images_per_prompt=2)) < 1e-4 and len(got) == 4


@pytest.mark.parametrize("solver", ["dpmpp_2m", "euler", "ddim"])
def test_step_callbacks_see_the_pipelines_latents(components, solver):
    seen = {}

    def record(key):
        def callback(pipe, i, t, tensors):
            seen.setdefault(key, []).append((i, float(t), tensors["latents"].clone()))
            return {}
        return callback

    pipe = pipeline(components, SOLVERS[solver]())
    images(pipe, callback_on_step_end=record("diffusers"), output_type="latent")
    fd.integrations.accelerate(pipe, solver=solver)
    images(pipe, callback_on_step_end=record("fd"), output_type="latent")
    assert [(i, t) for i, t, _ in seen["fd"]] == [(i, t) for i, t, _ in seen["diffusers"]]
    for (_, _, ours), (_, _, theirs) in zip(seen["fd"], seen["diffusers"]):
        assert rel(ours, theirs) < 1e-4
    # a callback that changes the latents: the pipeline's own loop takes them, the accelerated one too
    doubling = lambda p, i, t, kw: {"latents": kw["latents"] * 1.01}  # noqa: E731
    changed = images(pipe, callback_on_step_end=doubling, output_type="latent")
    fd.integrations.undo(pipe)
    assert rel(changed, images(pipe, callback_on_step_end=doubling, output_type="latent")) < 1e-4


def test_unsupported_options_are_named(components):
    pipe = pipeline(components, diffusers.EulerDiscreteScheduler())
    fd.integrations.accelerate(pipe, solver="euler")
    with pytest.raises(ValueError, match=r"an accelerated StableDiffusionPipeline does not take \['guidance_rescale'\] "
                                         r"\(they change the loop's arithmetic\)"):
        images(pipe, guidance_rescale=0.7)
    with pytest.raises(TypeError, match=r"options \['timesteps'\] are not taken for EulerDiscreteScheduler"):
        pipe(None, None, None, 4, [999, 500], **EMBEDS)  # the 5th positional argument
    with pytest.raises(ValueError, match="eta=0.5 is a step option of DDIMScheduler and TCDScheduler; this scheduler "
                                         "reproduces EulerDiscreteScheduler"):
        images(pipe, eta=0.5)
    fd.integrations.undo(pipe)


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["dpmpp_2m", "euler"])
def test_accelerated_sd_pipeline_replays_one_cuda_graph(components, solver):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pipe = pipeline(components, SOLVERS[solver]()).to("cuda")
    embeds = {k: v.cuda() for k, v in EMBEDS.items()}
    expected = pipe(generator=torch.Generator("cuda").manual_seed(0), num_inference_steps=6, guidance_scale=5.0,
                    output_type="pt", **embeds).images
    handle = fd.integrations.accelerate(pipe, solver=solver)
    for scale in (5.0, 5.0):  # the second call replays
        got = pipe(generator=torch.Generator("cuda").manual_seed(0), num_inference_steps=6, guidance_scale=scale,
                   output_type="pt", **embeds).images
        assert rel(got, expected) < 1e-3
    (sampler,) = handle.samplers.values()
    assert sampler.captures == 1
    fd.integrations.undo(pipe)
    pipe.to("cpu")
