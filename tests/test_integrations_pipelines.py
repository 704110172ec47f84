"""fd.integrations.accelerate / undo on the conditional pipelines it names (Stable Diffusion txt2img and img2img, SDXL
base and refiner, SD3, Flux), each built offline from tiny random components (fused_diffusion/testing/
tiny_pipelines.py): the pipeline's own __call__ samples through this library and gives the images of its own loop
with the diffusers scheduler it reproduces; undo gives the own loop back bit-exactly; DeepCache / Skip-Tuning equal
the hooks applied by hand to the pipeline's own loop; what cannot be done is refused by name before anything
changes."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import fused_diffusion as fd  # noqa: E402
from fused_diffusion.testing import tiny_pipelines as tiny  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
STEPS = 6
SOLVERS = ["dpmpp_2m", "euler", "euler_ancestral", "unipc", "lcm", "tcd"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and do not slow to a crawl when the CPUs are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_ACCELERATED: list[Any] = []


def accelerate(pipe: Any, **options: Any) -> Any:
    """fd.integrations.accelerate, the pipeline remembered so that the test's teardown undoes it (the components are
    shared across the module: an accelerated network must not leak into the next test, even from a failed one)."""
    handle = fd.integrations.accelerate(pipe, **options)
    _ACCELERATED.append(pipe)
    return handle


@pytest.fixture(autouse=True)
def undo_at_teardown():
    yield
    while _ACCELERATED:
        pipe = _ACCELERATED.pop()
        if getattr(pipe, "_fd_acceleration", None) is not None:
            try:
                fd.integrations.undo(pipe)
            except Exception:  # noqa: BLE001  (bug 1's pipelines cannot be undone; they hold U-Nets of their own)
                pass


@dataclass(frozen=True)
class Family:
    """components: the tiny_pipelines builder of the shared modules; pipeline: the pipeline builder; options(guided):
    the call's arguments (embeddings, image, guidance) but for the generator and the step count; network: the
    pipeline attribute that denoises."""

    components: Callable[[], dict[str, Any]]
    pipeline: Callable[..., Any]
    options: Callable[[bool], dict[str, Any]]
    network: str = "unet"


def _guidance(guided: bool) -> dict[str, Any]:
    return {"guidance_scale": 5.0 if guided else 1.0}


def _img2img(guided: bool) -> dict[str, Any]:
    return {**_guidance(guided), "image": tiny.image(2), "strength": 0.6}


def _flux(guided: bool) -> dict[str, Any]:
    true_cfg = {"true_cfg_scale": 2.0} if guided else {}
    return {**tiny.flux_embeds(1, negative=guided), **true_cfg, "height": tiny.IMAGE_SIZE, "width": tiny.IMAGE_SIZE}


FAMILIES = {
    "sd": Family(tiny.sd_components, tiny.sd_pipeline, lambda g: {**tiny.sd_embeds(2), **_guidance(g)}),
    "sd_img2img": Family(tiny.sd_components, tiny.sd_img2img_pipeline, lambda g: {**tiny.sd_embeds(2), **_img2img(g)}),
    "sdxl": Family(tiny.sdxl_components, tiny.sdxl_pipeline, lambda g: {**tiny.sdxl_embeds(2), **_guidance(g)}),
    "sdxl_img2img": Family(tiny.sdxl_components, tiny.sdxl_img2img_pipeline,
                           lambda g: {**tiny.sdxl_embeds(2), **_img2img(g)}),
    "sd3": Family(tiny.sd3_components, tiny.sd3_pipeline, lambda g: {**tiny.sd3_embeds(2), **_guidance(g)},
                  "transformer"),
    "flux": Family(tiny.flux_components, tiny.flux_pipeline, _flux, "transformer"),
}


@pytest.fixture(scope="module")
def components():
    """components(builder): the shared modules of one builder, made once per module."""
    made: dict[Any, dict[str, Any]] = {}

    def get(builder: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if builder not in made:
            made[builder] = builder()
        return made[builder]

    return get


def build(components, name: str, scheduler: Any = None) -> Any:
    family = FAMILIES[name]
    return family.pipeline(components(family.components), scheduler)


def call(pipe: Any, output_type: str = "pt", **options: Any) -> torch.Tensor:
    options = {"num_inference_steps": STEPS, **options}
    return pipe(generator=torch.Generator().manual_seed(0), output_type=output_type, **options).images


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_untouched(pipe: Any, original_class: type, scheduler: Any, network: str) -> None:
    """`pipe` is as before accelerate: its class, its scheduler, its network's forward (the class's)."""
    assert type(pipe) is original_class and getattr(pipe, "_fd_acceleration", None) is None
    assert pipe.scheduler is scheduler
    assert "forward" not in vars(getattr(pipe, network))


def scheduler_of(pipe: Any, solver: str) -> Any:
    """What a diffusers user gets switching the pipeline's scheduler to the one `solver` reproduces."""
    return getattr(diffusers, fd.integrations.FusedScheduler.SOLVERS[solver]).from_config(pipe.scheduler.config)


# --- (1) the pipeline's own loop, accelerated with its own scheduler, and undone ----------------------------------

@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_accelerated_pipeline_equals_its_own_loop(components, name, guided):
    family = FAMILIES[name]
    pipe = build(components, name)
    options = family.options(guided)
    original_class, scheduler = type(pipe), pipe.scheduler
    expected = call(pipe, **options)
    handle = accelerate(pipe)
    assert type(pipe.scheduler).__name__ == "AcceleratedScheduler"
    got = call(pipe, **options)
    assert len(handle.models) == 1  # the loop ran in this library
    assert got.shape == expected.shape and got.shape[1:] == (3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    assert rel(got, expected) < 1e-4
    assert rel(call(pipe, **options), expected) < 1e-4  # a second call: the same images (nothing carried over)
    fd.integrations.undo(pipe)
    assert_untouched(pipe, original_class, scheduler, family.network)
    assert torch.equal(call(pipe, **options), expected)


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_a_new_guidance_scale_reuses_the_model_built_for_the_first(components, name):
    """The guidance weights are device data of the cached model (rewritten in place; a captured graph replays
    them): calls with another scale give the pipeline's own images for that scale."""
    family = FAMILIES[name]
    pipe = build(components, name)
    scale = "true_cfg_scale" if name == "flux" else "guidance_scale"
    options = family.options(True)
    scales = (2.0, 3.0) if name == "flux" else (5.0, 7.5)
    expected = [call(pipe, **{**options, scale: value}) for value in scales]
    handle = accelerate(pipe)
    for value, images in zip(scales, expected):
        assert rel(call(pipe, **{**options, scale: value}), images) < 1e-4
    assert len(handle.models) == 1


# --- (2) the solvers' diffusers schedulers on Stable Diffusion and SDXL --------------------------------------------

@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_accelerated_solver_equals_the_pipeline_with_its_scheduler(components, name, solver):
    """accelerate(pipe, solver=s) equals the pipeline given FusedScheduler.SOLVERS[s].from_config(its scheduler's
    config); the stochastic ones (Euler ancestral, LCM, TCD with eta=0.3) with diffusers' own draws from the one
    generator."""
    pipe = build(components, name)
    options = {**FAMILIES[name].options(True), **({"eta": 0.3} if solver == "tcd" else {})}
    reference = scheduler_of(pipe, solver)
    handle = accelerate(pipe, solver=solver)
    assert type(handle.reference) is type(reference)
    got = call(pipe, **options)
    fd.integrations.undo(pipe)
    pipe.scheduler = reference
    expected = call(pipe, **options)
    assert rel(got, expected) < 1e-4


# --- (3) SDXL base -> refiner ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", [None, "dpmpp_2m", "euler_ancestral", "unipc", "lcm"])
def test_sdxl_base_to_refiner_hand_off_equals_diffusers(components, solver):
    """The base denoises to denoising_end=0.7 and hands its latents (output_type="latent") to the img2img refiner,
    which starts at denoising_start=0.7 (a U-Net of its own, the same weights)."""
    shared = components(tiny.sdxl_components)
    base, refiner = tiny.sdxl_pipeline(shared), tiny.sdxl_img2img_pipeline(tiny.refiner_components(shared))
    if solver is not None:
        base.scheduler, refiner.scheduler = scheduler_of(base, solver), scheduler_of(refiner, solver)
    embeds = {**tiny.sdxl_embeds(2), "guidance_scale": 5.0, "num_inference_steps": STEPS}

    def hand_off() -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        latents = base(**embeds, denoising_end=0.7, output_type="latent", generator=generator).images
        images = refiner(**embeds, image=latents, denoising_start=0.7, output_type="pt", generator=generator).images
        return latents, images

    expected_latents, expected = hand_off()
    accelerate(base)
    accelerate(refiner)
    latents, images = hand_off()
    assert rel(latents, expected_latents) < 1e-4
    assert rel(images, expected) < 1e-4
    fd.integrations.undo(refiner)
    fd.integrations.undo(base)
    latents, images = hand_off()
    assert torch.equal(latents, expected_latents) and torch.equal(images, expected)


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "euler_ancestral", "unipc", "heun",
                                    "ddim", "lcm", "tcd"])
def test_sdxl_base_with_denoising_end_equals_diffusers(components, solver):
    """The base half alone: denoising_end=0.7 keeps the timesteps >= 300 of the scheduler's run (4 of 6 here; 5 of
    6 for LCM / TCD; 7 of Heun's 11 calls, ending on a first-order half step), the rest of the run is skipped."""
    pipe = build(components, "sdxl")
    pipe.scheduler = scheduler_of(pipe, solver)
    options = {**FAMILIES["sdxl"].options(True), "denoising_end": 0.7, **({"eta": 0.3} if solver == "tcd" else {})}
    expected = call(pipe, "latent", **options)
    assert pipe._num_timesteps < len(pipe.scheduler.timesteps)
    accelerate(pipe)
    assert rel(call(pipe, "latent", **options), expected) < 1e-4


# --- (4) img2img with its schedulers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["dpmpp_2m", "euler_ancestral", "unipc", "tcd"])
@pytest.mark.parametrize("name", ["sd_img2img", "sdxl_img2img"])
def test_accelerated_img2img_equals_diffusers(components, name, solver):
    """strength=0.6: the last 3 of 6 steps from the image noised by the scheduler's add_noise (the own scheduler is
    in test_accelerated_pipeline_equals_its_own_loop)."""
    pipe = build(components, name)
    options = {**FAMILIES[name].options(True), **({"eta": 0.3} if solver == "tcd" else {})}
    assert options["strength"] == 0.6
    reference = scheduler_of(pipe, solver)
    accelerate(pipe, solver=solver)
    got = call(pipe, **options)
    fd.integrations.undo(pipe)
    pipe.scheduler = reference
    assert rel(got, call(pipe, **options)) < 1e-4


# --- (5) DeepCache and Skip-Tuning ----------------------------------------------------------------------------------

def _own_unet(components, name: str) -> Any:
    """The family's pipeline with a copy of the shared U-Net (hooks put on it cannot leak into other tests)."""
    family = FAMILIES[name]
    shared = components(family.components)
    return family.pipeline({**shared, "unet": copy.deepcopy(shared["unet"])})


METHODS = {
    "deepcache": (dict(deepcache=fd.unet.DeepCacheConfig(interval=2)),
                  lambda unet: fd.unet.enable_deepcache(unet, interval=2)),
    "skip_tuning": (dict(skip_tuning=fd.unet.SkipTuningConfig(rho_bottom=0.8)),
                    lambda unet: fd.unet.enable_skip_tuning(unet, rho_bottom=0.8)),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_unet_methods_equal_the_hooks_on_the_pipelines_own_loop(components, name, method):
    """accelerate(pipe, deepcache= / skip_tuning=) gives the images of the pipeline's own loop with the method enabled
    on its U-Net by hand (DeepCache's full and shallow calls alike: the engine's call index and the U-Net's own
    count agree), and they differ from the plain images."""
    arguments, enable = METHODS[method]
    pipe = _own_unet(components, name)
    options = FAMILIES[name].options(True)
    plain = call(pipe, **options)
    handle = enable(pipe.unet)
    expected = call(pipe, **options)
    assert torch.equal(call(pipe, **options), expected)  # the own loop's second run starts afresh
    handle.disable()
    assert torch.equal(call(pipe, **options), plain)
    assert rel(expected, plain) > 1e-3  # the method changes the images

    accelerate(pipe, **arguments)
    got = call(pipe, **options)
    assert rel(got, expected) < 1e-4
    assert rel(call(pipe, **options), expected) < 1e-4  # the second run starts afresh too


@pytest.mark.parametrize("method", ["deepcache", "skip_tuning"])
@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_undo_takes_the_unet_methods_off(components, name, method):
    arguments, _ = METHODS[method]
    pipe = _own_unet(components, name)
    options = FAMILIES[name].options(True)
    original_class, scheduler = type(pipe), pipe.scheduler
    plain = call(pipe, **options)
    accelerate(pipe, **arguments)
    call(pipe, **options)
    fd.integrations.undo(pipe)
    assert_untouched(pipe, original_class, scheduler, "unet")
    assert torch.equal(call(pipe, **options), plain)
    accelerate(pipe, **arguments)  # and it can be accelerated again
    fd.integrations.undo(pipe)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name, transformer", [("sd3", "SD3Transformer2DModel"), ("flux", "FluxTransformer2DModel")])
def test_unet_methods_are_refused_for_transformers(components, name, transformer, method):
    arguments, _ = METHODS[method]
    pipe = build(components, name)
    original_class, scheduler = type(pipe), pipe.scheduler
    with pytest.raises(TypeError, match=f"DeepCache and Skip-Tuning work on U-Nets; {original_class.__name__} "
                                        f"denoises with a {transformer}"):
        accelerate(pipe, **arguments)
    assert_untouched(pipe, original_class, scheduler, "transformer")


# --- (6) arguments that change the loop's arithmetic, refused by name before anything changes ----------------------

REFUSED = [
    ("sdxl", "guidance_rescale", 0.7),
    ("sdxl_img2img", "guidance_rescale", 0.7),
    ("sd3", "skip_guidance_layers", [0]),
    ("flux", "ip_adapter_image_embeds", [torch.zeros(1, 4)]),
]


@pytest.mark.parametrize("name, argument, value", REFUSED, ids=[f"{n}-{a}" for n, a, _ in REFUSED])
def test_refused_arguments_are_named_before_anything_changes(components, name, argument, value):
    family = FAMILIES[name]
    pipe = build(components, name)
    options = family.options(True)
    expected = call(pipe, **options)
    network, pipeline_class = getattr(pipe, family.network), type(pipe).__name__
    handle = accelerate(pipe)
    scheduler, forward = pipe.scheduler, vars(network)["forward"]
    calls = []
    hook = network.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=rf"an accelerated {pipeline_class} does not take "
                                         rf"\['{argument}'\] \(they change the loop's arithmetic\)"):
        call(pipe, **options, **{argument: value})
    hook.remove()
    assert not calls and scheduler.timesteps is None  # the pipeline's call never began
    assert pipe.scheduler is scheduler and vars(network)["forward"] == forward and pipe._fd_acceleration is handle
    assert not handle.probing and not handle.whole_run and not handle.models
    assert rel(call(pipe, **options), expected) < 1e-4  # and the pipeline samples on as before
    fd.integrations.undo(pipe)
    assert torch.equal(call(pipe, **options), expected)


# --- (7) one CUDA graph per configuration ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_accelerated_pipeline_replays_one_cuda_graph(name):
    """Two calls with the same step count capture one graph: one sampler for the configuration, captured once."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    family = FAMILIES[name]
    pipe = family.pipeline(family.components()).to("cuda")  # components of its own: the shared ones stay on the CPU
    options = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in family.options(True).items()}

    def images() -> torch.Tensor:
        return pipe(generator=torch.Generator("cuda").manual_seed(0), num_inference_steps=STEPS, output_type="pt",
                    **options).images

    expected = images()
    handle = accelerate(pipe)
    for _ in range(2):  # the second call replays the graph the first captured
        assert rel(images(), expected) < 1e-3
    (sampler,) = handle.samplers.values()
    assert sampler.captures == 1
    fd.integrations.undo(pipe)
    assert rel(images(), expected) < 1e-6
