"""The shipped digits model: offline loading, its size, a quality floor through a real solver, training resume,
and clear errors for missing or damaged weight files."""
from pathlib import Path

import pytest
import torch

import fused_diffusion as fd
from fused_diffusion.zoo import digits_unet as zoo_digits
from fused_diffusion import files
from fused_diffusion.zoo.train import TrainConfig, train_digits

# FD of 300 DDIM samples (50 calls, seed 0) against the held-out digits: 9.02 measured on the shipped weights
# (torch 2.13 CPU), pinned with a margin; 300 train digits score 7.5, noise about 160, so a broken loader, adapter,
# schedule or solver lands far above it.
DDIM_50_FD_BOUND = 12.0
AMED_5_FD_BOUND = 12.0
SHORTCUT_1_FD_BOUND = 20.0


@pytest.fixture(scope="module")
def model():
    return fd.zoo.digits()


def test_digits_loads_offline_as_an_eps_denoiser(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    denoiser, alphas_cumprod, shape = fd.zoo.digits()
    assert isinstance(denoiser, fd.EpsDenoiser) and shape == (1, 8, 8)
    torch.testing.assert_close(alphas_cumprod, fd.ddpm_alphas_cumprod(1000, 1e-4, 0.02, "linear"))
    assert denoiser.sigma_min == pytest.approx(0.0100, abs=1e-4) and denoiser.sigma_max == pytest.approx(157.4, abs=0.1)
    assert not any(p.requires_grad for p in denoiser.parameters()) and not denoiser.inner_model.training
    x = torch.randn(3, *shape)
    out = denoiser(x, torch.tensor([0.5, 5.0, 50.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_shipped_files_are_small_and_the_unet_follows_the_recipe(model):
    unet = model.denoiser.inner_model
    assert zoo_digits.DIGITS_WEIGHTS.stat().st_size <= 5 * 2**20
    assert sum(p.numel() for p in unet.parameters()) <= 3_000_000
    assert len(unet.config.block_out_channels) == 3  # three resolution levels
    assert unet.config.down_block_types[-1].startswith("Attn") and unet.config.up_block_types[0].startswith("Attn")
    info = files.read_any(zoo_digits.DIGITS_WEIGHTS)[1]["info"]
    assert info["train_minutes"] <= 60 and info["iterations"] > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_digits_loads_in_a_given_dtype(dtype):
    denoiser, _, shape = fd.zoo.digits(dtype=dtype)
    assert all(p.dtype == dtype for p in denoiser.parameters())
    reference = fd.zoo.digits().denoiser
    x, sigma = torch.randn(2, *shape), torch.tensor([1.0, 10.0])
    err = (denoiser(x.to(dtype), sigma).double() - reference(x, sigma).double()).norm() / reference(x, sigma).norm()
    assert err < (1e-5 if dtype == torch.float64 else 3e-2)  # against the float32 model: its own precision


def test_ddim_samples_of_the_shipped_model_stay_under_the_pinned_fd(model):
    denoiser, alphas_cumprod, shape = model
    noise = torch.randn(300, *shape, generator=torch.Generator().manual_seed(0))
    images = fd.sample_ddim(denoiser.inner_model, noise, alphas_cumprod, 50, clip_sample=False, disable=True)
    quality = fd.metrics.evaluate(images)
    assert quality["fd"] < DDIM_50_FD_BOUND
    assert quality["class_entropy"] > 2.2  # all ten classes, none dominant


def test_missing_weights_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        fd.zoo.digits(path=missing)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_weights_name_the_file(tmp_path, damage):
    data = zoo_digits.DIGITS_WEIGHTS.read_bytes()
    bad = tmp_path / "damaged.safetensors"
    bad.write_bytes({"garbage": b"not a safetensors file at all", "truncated": data[: len(data) // 2],
                     "empty": b""}[damage])
    with pytest.raises(ValueError, match="damaged.safetensors' is not a readable safetensors file"):
        fd.zoo.digits(path=bad)


def test_weights_that_do_not_match_their_config_name_the_file(tmp_path):
    tensors, metadata = files.read_any(zoo_digits.DIGITS_WEIGHTS)
    tensors.pop(next(iter(tensors)))
    path = tmp_path / "mismatch.safetensors"
    files.save(path, tensors, files.DIGITS_UNET, **metadata)
    with pytest.raises(ValueError, match="mismatch.safetensors' is a digits U-Net .* file that is damaged: its weights "
                                         "do not match its config"):
        fd.zoo.digits(path=path)


def test_training_is_seeded_and_resumes_exactly(tmp_path):
    def run(workdir: Path, iterations: int, resume: bool = False) -> dict:
        cfg = TrainConfig(channels=(8, 16, 16), iterations=iterations, batch_size=16, warmup=2, checkpoint_every=2,
                          workdir=workdir, out=workdir / "out.safetensors")
        return files.read_any(train_digits(cfg, resume=resume, progress=False))[0]

    straight = run(tmp_path / "a", 4)
    # interrupted by the time limit after its first iteration (checkpoint saved), then resumed to 4
    cfg = TrainConfig(channels=(8, 16, 16), iterations=4, batch_size=16, warmup=2, checkpoint_every=2,
                      max_minutes=0.0, workdir=tmp_path / "b", out=tmp_path / "b" / "out.safetensors")
    train_digits(cfg, progress=False)
    resumed = run(tmp_path / "b", 4, resume=True)
    again = run(tmp_path / "c", 4)
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)
        torch.testing.assert_close(again[name], straight[name], rtol=0, atol=0)
    assert fd.zoo.digits(path=tmp_path / "a" / "out.safetensors").sample_shape == (1, 8, 8)


def test_shipped_amed_predictor_beats_its_own_schedule_without_it(model):
    """The shipped AMED predictor (5 calls): on 300 samples, FD 9.30 measured against 24.4 for r = 1/2 on the same
    schedule (the same 5 calls); pinned with a margin."""
    denoiser, _, shape = model
    predictor = fd.zoo.digits_amed(denoiser)
    assert predictor.calls == 5 and predictor.student == "amed" and predictor.afs
    noise = torch.randn(300, *shape, generator=torch.Generator().manual_seed(0)) * predictor.sigmas[0]
    learned = fd.metrics.frechet_distance(predictor.sample(denoiser, noise))
    half = fd.metrics.frechet_distance(fd.sample_amed(denoiser, noise, predictor.sigmas, disable=True))
    assert learned < AMED_5_FD_BOUND and learned < half / 1.5
    predictor.release()


def test_unknown_amed_predictor_names_what_ships(model):
    with pytest.raises(ValueError, match=r"shipped: \[\('amed', 5\)"):
        fd.zoo.digits_amed(model.denoiser, calls=7)


def test_shipped_shortcut_model_samples_in_one_step_where_flow_matching_cannot():
    """300 samples from one step: FD 15.9 measured for the shortcut model (16.5 for flow matching at 4 steps, 350 at
    one: the mean image), pinned with a margin; both trained under an hour on the CPU."""
    noise = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    scores = {}
    for objective in ("shortcut", "flow"):
        model, shape = fd.zoo.digits_shortcut(objective=objective)
        assert shape == (1, 8, 8) and model.step_conditioned == (objective == "shortcut")
        info = files.read_any(fd.zoo.train.WEIGHTS[objective])[1]["info"]
        assert info["train_minutes"] <= 60 and info["iterations"] == 6000
        with torch.inference_mode():
            scores[objective] = fd.metrics.evaluate(fd.sample_shortcut(model, noise, 1, disable=True))
    assert scores["shortcut"]["fd"] < SHORTCUT_1_FD_BOUND and scores["shortcut"]["class_entropy"] > 2.2
    assert scores["flow"]["fd"] > 10 * scores["shortcut"]["fd"]


def test_shortcut_training_writes_a_loadable_model(tmp_path):
    cfg = TrainConfig(objective="shortcut", channels=(8, 16, 16), iterations=2, batch_size=16, warmup=1,
                      workdir=tmp_path, out=tmp_path / "shortcut.safetensors")
    model, shape = fd.zoo.digits_shortcut(path=train_digits(cfg, progress=False))
    x = fd.sample_shortcut(model, torch.randn(2, *shape), 2, disable=True)
    assert x.shape == (2, *shape) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match=r"is a digits U-Net \(epsilon prediction\) file, not a shortcut digits "
                                         r"U-Net file: load it with fd.zoo.digits\(path=path\)"):
        fd.zoo.digits_shortcut(path=zoo_digits.DIGITS_WEIGHTS)
    with pytest.raises(ValueError, match=r"is a shortcut digits U-Net file, not a digits U-Net"):
        fd.zoo.digits(path=tmp_path / "shortcut.safetensors")
    with pytest.raises(ValueError, match="objective must be 'shortcut' or 'flow', got 'ddpm'"):
        fd.zoo.digits_shortcut(objective="ddpm")
    with pytest.raises(ValueError, match="objective must be one of"):
        train_digits(TrainConfig(objective="lcm", workdir=tmp_path), progress=False)
