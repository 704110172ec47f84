"""fd.zoo.methods(), the registry the demo and the few-step bench read: every method runs at each budget it lists,
making exactly that many model calls, and leaves the shared digits U-Net as it found it."""
import pytest
import torch
from diffusers import UNet2DModel

import fused_diffusion as fd


@pytest.fixture(scope="module")
def zoo():
    return fd.zoo.digits()


def count_unet_forwards():
    """A counter of UNet2DModel forwards (any instance: the teacher's and each student's), and its hook handle."""
    counter = {"calls": 0}

    def hook(module, args, output):
        if isinstance(module, UNet2DModel):
            counter["calls"] += 1

    return counter, torch.nn.modules.module.register_module_forward_hook(hook)


def test_the_registry_lists_each_shipped_kind_of_method():
    kinds = {m.kind for m in fd.zoo.methods()}
    labels = [m.label for m in fd.zoo.methods()]
    assert kinds == {"baseline", "learned solver", "few-step model", "U-Net method"}
    assert len(labels) == len(set(labels)), "labels name rows: they must be distinct"
    assert any("AMED" in label for label in labels) and any("phased consistency" in label for label in labels)


@pytest.mark.parametrize("method", fd.zoo.methods(), ids=lambda m: m.label)
def test_every_method_makes_the_model_calls_it_lists(zoo, method):
    sample = method.prepare(zoo)
    noise = torch.randn(2, *zoo.sample_shape, generator=torch.Generator().manual_seed(0))
    plain = zoo.denoiser(noise * 3.0, torch.full((2,), 3.0))
    counter, handle = count_unet_forwards()
    try:
        # a baseline's budgets differ only in the steps of one solver (its call count is tested in test_solvers):
        # its two cheapest stand for the ladder
        for calls in method.calls[:2] if method.kind == "baseline" else method.calls:
            counter["calls"] = 0
            with torch.inference_mode():
                images = sample(noise, calls, torch.Generator().manual_seed(1))
            assert counter["calls"] == calls, (method.label, calls)
            assert images.shape == noise.shape and torch.isfinite(images).all()
    finally:
        handle.remove()
    # a U-Net method's hooks are gone after its run: the teacher computes what it computed before
    torch.testing.assert_close(zoo.denoiser(noise * 3.0, torch.full((2,), 3.0)), plain)


def test_training_cost_reads_the_shipped_metadata():
    costs = {m.kind: m.training_cost() for m in fd.zoo.methods()}
    assert costs["baseline"] == {"train_minutes": 0, "teacher_calls": 0}
    assert costs["few-step model"]["train_minutes"] > 0 and costs["learned solver"]["train_minutes"] > 0
