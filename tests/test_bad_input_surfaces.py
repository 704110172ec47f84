"""Bad input on the surfaces added after the core API (AMED, U-Net methods, shortcut, Analytic-DPM, the diffusers
integration, the k-diffusion samplers added last, the zoo and the command line): no silently wrong result, no error
that does not name the argument, no loop that never ends, no half-done change. One class of defect per section."""
from __future__ import annotations

import copy
import json

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fused_diffusion as fd
from fused_diffusion import files, solvers
from fused_diffusion.analytic_dpm import GammaEstimate
from fused_diffusion.zoo import classifier, train
from fused_diffusion.zoo.digits_amed import digits_amed_path
from fused_diffusion.zoo.digits_unet import DIGITS_WEIGHTS

import unet_models
from mixture import SIGMA_MAX

# ---- arguments that pass a first check but mean nothing ----------------------------------------------------------


@pytest.fixture(scope="module")
def amed_schedule():
    return fd.amed.schedule(3, 0.01, SIGMA_MAX)


@pytest.mark.parametrize("teacher, match", [
    ("euler_ancestral", "teacher='euler_ancestral' draws noise at every step"),
    ("dpmpp_sde", "teacher='dpmpp_sde' draws noise at every step"),
    ("consistency", "teacher='consistency' draws noise at every step"),
    ("ddim", r"teacher='ddim' cannot be built without options \(.*alphas_cumprod.*\); choose one of \['amed', "
             r"'dpm_2', 'dpmpp_2m', 'euler', 'heun', 'ipndm', 'lms'.*\], or pass a Solver instance$"),
    ("shortcut", "teacher='shortcut' solves over flow_times with a model predicting velocity"),
    ("dpm_fast", "teacher='dpm_fast' cannot be built without options"),
    ("dpm_adaptive", r"teacher must be a solver that can teach, one of \['amed', .*'lms'.*\], or a Solver instance; "
                     r"got 'dpm_adaptive'"),
    (solvers.Heun(s_churn=1.0), "teacher='heun' draws noise at every step with these options"),
    (3, "teacher must be a solver name or a Solver instance, got 3"),
])
def test_amed_distill_refuses_teachers_that_cannot_teach(gmm, amed_schedule, teacher, match):
    error = TypeError if teacher == 3 else ValueError
    with pytest.raises(error, match=match):
        fd.amed.distill(gmm, amed_schedule, (gmm.dim,), teacher=teacher, trajectories=4, batch=4, progress=False)


def test_amed_distill_takes_a_deterministic_teacher_instance_and_is_seeded(gmm, amed_schedule):
    """An ancestral solver with eta=0 is an ODE solver: as an instance it teaches, and two runs agree."""
    runs = [fd.amed.distill(gmm, amed_schedule, (gmm.dim,), teacher=solvers.EulerAncestral(eta=0.0), trajectories=8,
                            batch=4, progress=False) for _ in range(2)]
    assert runs[0].info["teacher"] == "euler_ancestral"
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shape=8), TypeError, r"shape must be one sample's shape, a non-empty tuple of ints such as \(1, 8, 8\), got 8"),
    (dict(shape=(8, 0)), ValueError, r"shape\[1\] must be an integer >= 1, got 0"),
    (dict(shape=()), TypeError, "shape must be one sample's shape"),
    (dict(lr=-1.0), ValueError, "lr must be > 0"),
    (dict(seed=-1), ValueError, "seed must be an integer >= 0"),
    (dict(extra_args=[1]), TypeError, "extra_args must be a dict"),
    (dict(predictor="p.safetensors"), TypeError, "predictor must be an fd.amed.Predictor"),
    (dict(denoiser=None), TypeError, "denoiser must be callable"),
])
def test_amed_distill_arguments_are_named_before_any_model_call(gmm, amed_schedule, kwargs, error, match):
    calls = []

    def counting(x, sigma):
        calls.append(1)
        return gmm(x, sigma)

    arguments = dict(denoiser=counting, sigmas=amed_schedule, shape=(gmm.dim,), trajectories=4, batch=4,
                     progress=False)
    with pytest.raises(error, match=match):
        fd.amed.distill(**{**arguments, **kwargs})
    assert not calls


@pytest.mark.parametrize("kwargs, match", [
    (dict(accept_safety=5.0), r"accept_safety must be in \(0, 1\]"),
    (dict(accept_safety=1.01), r"accept_safety must be in \(0, 1\]"),
    (dict(pcoeff=0.0, icoeff=0.0, dcoeff=0.0), r"pcoeff \+ icoeff \+ dcoeff must be > 0"),
    (dict(icoeff=-1.0), r"pcoeff \+ icoeff \+ dcoeff must be > 0"),
    (dict(max_rejects=0), "max_rejects must be an integer >= 1"),
    (dict(max_attempts=0), "max_attempts must be an integer >= 1"),
])
def test_dpm_adaptive_refuses_options_that_cannot_finish(gmm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fd.sample_dpm_adaptive(gmm, torch.randn(2, gmm.dim) * SIGMA_MAX, 0.01, SIGMA_MAX, disable=True, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rtol=1e-12, atol=1e-12), "shrank the step below the float32 resolution"),
    (dict(rtol=1e-12, atol=1e-12, max_rejects=3), "rejected 3 attempts in a row"),
])
def test_dpm_adaptive_tolerance_it_cannot_meet_raises_naming_the_options(gmm, kwargs, match):
    with pytest.raises(RuntimeError, match=match + r".*rtol=1e-12, atol=1e-12 with accept_safety=0.81"):
        fd.sample_dpm_adaptive(gmm, torch.randn(2, gmm.dim) * SIGMA_MAX, 0.01, SIGMA_MAX, disable=True, **kwargs)


def test_dpm_adaptive_crawling_controller_raises_naming_it(gmm):
    """Accepted steps that stay tiny (an unstable PID) would take millions of attempts: bounded, and named."""
    with pytest.raises(RuntimeError, match=r"made 300 attempts .* the step-size controller \(pcoeff=0.81, icoeff=0.0, "
                                           r"dcoeff=0.98, accept_safety=0.81\) keeps its steps small"):
        fd.sample_dpm_adaptive(gmm, torch.randn(2, gmm.dim, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX,
                               0.01, SIGMA_MAX, pcoeff=0.81, icoeff=0.0, dcoeff=0.98, h_init=1.5, max_attempts=300,
                               disable=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log_rtol=st.floats(-9, 0), log_atol=st.floats(-9, 0), accept_safety=st.floats(0.05, 1.0),
       pcoeff=st.floats(-1, 1), icoeff=st.floats(-1, 2), dcoeff=st.floats(-1, 1), h_init=st.floats(1e-4, 10))
def test_dpm_adaptive_always_ends(gmm, log_rtol, log_atol, accept_safety, pcoeff, icoeff, dcoeff, h_init):
    """Any option values: a finite sample at sigma_min, or an error naming the options; never a hang."""
    options = dict(rtol=10**log_rtol, atol=10**log_atol, accept_safety=accept_safety, pcoeff=pcoeff, icoeff=icoeff,
                   dcoeff=dcoeff, h_init=h_init, max_rejects=50, max_attempts=300)
    x = torch.randn(2, gmm.dim, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX
    try:
        out, info = fd.sample_dpm_adaptive(gmm, x, 0.01, SIGMA_MAX, disable=True, return_info=True, **options)
    except ValueError as e:
        assert pcoeff + icoeff + dcoeff <= 0 and "pcoeff + icoeff + dcoeff" in str(e)
    except RuntimeError as e:
        assert f"accept_safety={accept_safety}" in str(e)
    else:
        assert torch.isfinite(out).all() and info["n_accept"] >= 1


# ---- files of another kind -----------------------------------------------------------------------------------


def write_gamma(path):
    GammaEstimate(torch.arange(3), torch.ones(3), torch.zeros(3), 2).save(path)
    return path


def write_shard(path):
    files.save(path, {"images": torch.zeros(2, 1, 8, 8)}, files.GENERATE_SHARD, index=0, seed=0, samples=2,
               digest="0" * 16)
    return path


SHIPPED = {"digits": DIGITS_WEIGHTS, "shortcut": train.WEIGHTS["shortcut"],
           "flow": train.WEIGHTS["flow"], "classifier": classifier.CLASSIFIER_WEIGHTS,
           "amed": digits_amed_path()}
WRITTEN = {"gamma": write_gamma, "shard": write_shard}
LOADED_AS = {"digits": "fd.zoo.digits(path=path)", "shortcut": "fd.zoo.digits_shortcut(path=path)",
             "flow": "fd.zoo.digits_shortcut(objective='flow', path=path)",
             "classifier": "fused_diffusion.zoo.classifier.load_classifier(path)", "amed": "fd.amed.load(path)",
             "gamma": "fd.analytic_dpm.GammaEstimate.load(path)", "shard": "safetensors.torch.load_file(path)"}
READERS = {"digits": lambda p: fd.zoo.digits(path=p), "shortcut": lambda p: fd.zoo.digits_shortcut(path=p),
           "flow": lambda p: fd.zoo.digits_shortcut(objective="flow", path=p),
           "classifier": classifier.load_classifier, "amed": fd.amed.load, "gamma": GammaEstimate.load}


def library_file(kind, tmp_path):
    return SHIPPED[kind] if kind in SHIPPED else WRITTEN[kind](tmp_path / f"{kind}.safetensors")


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", [*SHIPPED, *WRITTEN])
def test_every_reader_names_the_loader_of_another_kind_of_file(reader, kind, tmp_path):
    path = library_file(kind, tmp_path)
    if kind == reader:
        READERS[reader](path)  # its own kind loads
        return
    with pytest.raises(ValueError, match=r"is (a|an|the) .* file, not .* file: load it with ") as error:
        READERS[reader](path)
    assert LOADED_AS[kind] in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_names_a_foreign_damaged_missing_file_or_a_folder(reader, tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases = [("foreign.safetensors", ValueError, "is a safetensors file but not .* file written by this library"),
             ("junk.safetensors", ValueError, "is not a readable safetensors file"),
             ("missing.safetensors", FileNotFoundError, "no such file"),
             (".", IsADirectoryError, "is a folder")]
    for name, error, match in cases:
        with pytest.raises(error, match=match):
            READERS[reader](tmp_path / name)


def test_files_are_the_same_bytes_in_any_process(tmp_path):
    """Canonical headers: metadata given in another order, or written by another process, make the same file."""
    import subprocess
    import sys

    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, dtype=torch.float16)}
    files.save(tmp_path / "one.safetensors", tensors, files.GENERATE_SHARD, seed=1, index=2, samples=3, digest="x")
    files.save(tmp_path / "two.safetensors", tensors, files.GENERATE_SHARD, digest="x", samples=3, index=2, seed=1)
    script = ("import torch; from fused_diffusion import files; files.save({!r}, {{'b': torch.arange(3.0), 'a': "
              "torch.ones(2, dtype=torch.float16)}}, files.GENERATE_SHARD, samples=3, seed=1, digest='x', index=2)")
    subprocess.run([sys.executable, "-c", script.format(str(tmp_path / "three.safetensors"))], check=True,
                   env={"PYTHONHASHSEED": "123", "PATH": ""})
    first = (tmp_path / "one.safetensors").read_bytes()
    assert (tmp_path / "two.safetensors").read_bytes() == first == (tmp_path / "three.safetensors").read_bytes()


def test_training_resume_refuses_another_runs_checkpoint(tmp_path):
    """A work directory of another objective would load its weights into the wrong model, or fail in
    load_state_dict; it is refused naming the objective."""
    from fused_diffusion.zoo.train import TrainConfig, train_digits

    options = dict(iterations=2, batch_size=4, channels=(8, 8, 8), checkpoint_every=1, workdir=tmp_path / "run",
                   out=tmp_path / "w.safetensors")
    train_digits(TrainConfig(objective="flow", **options), progress=False)
    with pytest.raises(ValueError, match="is a checkpoint of objective 'flow', not of this run .objective 'shortcut'"):
        train_digits(TrainConfig(objective="shortcut", **options), resume=True, progress=False)
    with pytest.raises(ValueError, match="is a checkpoint of a U-Net of another configuration"):
        train_digits(TrainConfig(objective="flow", **{**options, "channels": (8, 8, 16)}), resume=True,
                     progress=False)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not a readable training checkpoint"):
        train_digits(TrainConfig(objective="flow", **options), resume=True, progress=False)


# ---- handles and half-done changes ------------------------------------------------------------------------------


def unet_state(unet):
    """What the U-Net features may change: instance forwards and diffusers hook registries, of every module."""
    return [(name, module.__dict__.get("forward"), module.__dict__.get("_diffusers_hook"))
            for name, module in unet.named_modules()]


def test_a_stale_deepcache_handle_leaves_a_later_one_alone():
    unet, denoiser, extra, shape = unet_models.build("plain")
    x, sigma = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)), torch.tensor([2.0, 2.0])
    first = fd.unet.enable_deepcache(unet, interval=2)
    first.disable()
    second = fd.unet.enable_deepcache(unet, interval=2)
    installed = unet_state(unet)
    first.disable()  # stale: its DeepCache is gone
    assert second.enabled and not first.enabled and unet_state(unet) == installed
    second.disable()
    second.disable()  # twice is harmless
    plain = unet_models.build("plain")[1]
    with torch.no_grad():
        assert torch.equal(denoiser(x, sigma, **extra), plain(x, sigma, **extra))


def test_accelerate_that_fails_on_its_second_part_leaves_the_pipeline_as_it_was():
    unet = fd.zoo.digits().denoiser.inner_model
    pipe = diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    untouched = copy.deepcopy(pipe)  # (a U-Net with hooks refuses deepcopy: copied first, hooked alike)
    users_own = fd.unet.enable_skip_tuning(unet, 0.8)  # the user's Skip-Tuning: accelerate's own cannot go on
    fd.unet.enable_skip_tuning(untouched.unet, 0.8)
    before, config = unet_state(unet), dict(pipe.config)
    with pytest.raises(RuntimeError, match="Skip-Tuning is already enabled on this U-Net"):
        fd.integrations.accelerate(pipe, deepcache=fd.unet.DeepCacheConfig(interval=2),
                                   skip_tuning=fd.unet.SkipTuningConfig(rho_bottom=0.6))
    assert type(pipe) is diffusers.DDIMPipeline and not hasattr(pipe, "_fd_acceleration")
    assert unet_state(unet) == before and dict(pipe.config) == config
    images = [p(batch_size=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
              for p in (pipe, untouched)]
    assert (images[0] == images[1]).all()  # bit-exact
    users_own.disable()


# ---- models and tensors that do not fit ------------------------------------------------------------------------


@pytest.mark.parametrize("output", [lambda x: x.mean((1, 2, 3))[:, None], lambda x: x[:, :, :1]],
                         ids=["[B,1]", "broadcastable"])
@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_shortcut_loss_refuses_an_output_that_would_broadcast(output, fraction):
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"model returned a tensor of shape .* for x of shape \(\d, 1, 8, 8\); a "
                                         r"velocity is a floating-point tensor of x's shape"):
        fd.shortcut.loss(lambda x, t, d: output(x), x, bootstrap_fraction=fraction)


def test_shortcut_sampling_names_a_model_without_the_step_size():
    with pytest.raises(TypeError, match=r"velocity_model must be callable as velocity_model\(x, t, d\) -> velocity "
                                        r"\(it must take the step size d.*<lambda>\(x, t\) cannot"):
        fd.sample_shortcut(lambda x, t: x, torch.randn(2, 4), 2, disable=True)
    with pytest.raises(TypeError, match=r"target_model must be callable as target_model\(x, t, d\)"):
        fd.shortcut.loss(lambda x, t, d: x, torch.randn(4, 4), target_model=lambda x, t: x)


@pytest.mark.parametrize("solver", ["ddim", "euler", "dpmpp_2m"])
def test_fused_scheduler_names_a_batch_that_changes_within_a_run(solver):
    scheduler = fd.integrations.FusedScheduler.from_config(diffusers.DDIMScheduler().config, solver=solver)
    scheduler.set_timesteps(4)
    t = scheduler.timesteps
    x = scheduler.step(torch.zeros(2, 16), t[0], torch.zeros(2, 16)).prev_sample
    with pytest.raises(ValueError, match=r"sample at step 1 \(timestep \d+\) has shape \(3, 16\), torch.float32 on "
                                         r"cpu, but this run began with \(2, 16\).*call set_timesteps"):
        scheduler.step(torch.zeros(3, 16), t[1], torch.zeros(3, 16))
    with pytest.raises(ValueError, match=r"model_output has shape \(1, 16\) but sample has shape \(2, 16\)"):
        scheduler.step(torch.zeros(1, 16), t[1], x)
    scheduler.set_timesteps(4)  # a new run takes the new batch
    scheduler.step(torch.zeros(3, 16), t[0], torch.zeros(3, 16))


# ---- values outside their meaning --------------------------------------------------------------------------------


def test_optimal_variance_refuses_a_negative_gamma():
    ac = fd.ddpm_alphas_cumprod(100)
    with pytest.raises(ValueError, match=r"gamma must be finite and >= 0 \(a mean square\), got gamma\[1\] = -0.5"):
        fd.analytic_dpm.optimal_variance(ac, [50, 10], torch.tensor([0.5, -0.5]))


def small_eps_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 16), torch.nn.Unflatten(1, (1, 4, 4)))


class EpsOfT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_eps_model()

    def forward(self, x, t):
        return self.net(x)


def test_estimate_gamma_refuses_data_outside_its_range():
    data = torch.rand(20, 1, 4, 4) * 255
    with pytest.raises(ValueError, match=r"data holds values in \[.*\], outside data_range=\(-1.0, 1.0\).*for \[0, 255\] "
                                         r"pixels data / 127.5 - 1"):
        fd.analytic_dpm.estimate_gamma(EpsOfT(), fd.ddpm_alphas_cumprod(10), data, samples_per_step=2)
    estimate = fd.analytic_dpm.estimate_gamma(EpsOfT(), fd.ddpm_alphas_cumprod(10), data, samples_per_step=2,
                                              data_range=None, cache=False)
    assert estimate.samples == 2


def test_gamma_cache_notices_edits_through_data():
    model, ac = EpsOfT(), fd.ddpm_alphas_cumprod(10)
    data = torch.rand(20, 1, 4, 4) * 2 - 1
    options = dict(samples_per_step=4, generator=torch.Generator().manual_seed(0))
    first = fd.analytic_dpm.estimate_gamma(model, ac, data, **options)
    assert fd.analytic_dpm.estimate_gamma(model, ac, data, **options) is first  # cached
    model.net[1].weight.data.mul_(2)  # invisible to version counters
    second = fd.analytic_dpm.estimate_gamma(model, ac, data, **options)
    assert second is not first and not torch.equal(second.gamma, first.gamma)
    data.data[0] = 0.5  # the data's contents count too
    assert fd.analytic_dpm.estimate_gamma(model, ac, data, **options) is not second


# ---- the command line ---------------------------------------------------------------------------------------------


def generate_error(tmp_path, capsys, out):
    from fused_diffusion import __main__ as cli

    import sys

    saved = sys.argv
    sys.argv = ["python -m fused_diffusion", "generate", "-n", "2", "--calls", "1", "--out", str(out)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    finally:
        sys.argv = saved
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    (line,) = [line for line in error.splitlines() if ": error: " in line]  # after argparse's usage, if any
    return line


def test_generate_out_naming_a_file_is_an_argument_error(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    error = generate_error(tmp_path, capsys, tmp_path / "file")
    assert "argument --out: " in error and "is a file, not a folder" in error
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("manifest, match", [
    ("[1, 2]", "TypeError: list indices"),
    ('{"config": [1]}', "its 'config' is a list, not an object"),
    ('{"shards": []}', "KeyError: 'config'"),
    ("{not json", "JSONDecodeError"),
])
def test_generate_manifest_of_the_wrong_schema_is_an_argument_error(tmp_path, capsys, manifest, match):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    error = generate_error(tmp_path, capsys, out)
    assert "argument --out: " in error and "is not a manifest of this command" in error and match in error
    assert json.dumps(sorted(p.name for p in out.iterdir())) == '["manifest.json"]'


# ---- found by the second probe: each class again, on more entry points ------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return fd.zoo.digits()


@pytest.fixture(scope="module")
def shipped_amed(digits):
    return fd.zoo.digits_amed(digits.denoiser)


@pytest.mark.parametrize("call", [
    lambda gmm, x: fd.sample_dpm_adaptive(gmm, x, 0.01, SIGMA_MAX, return_info="no", disable=True),
    lambda gmm, x: fd.amed.schedule(5, 0.01, SIGMA_MAX, afs="no"),
    lambda gmm, x: fd.amed.distill(gmm, fd.amed.schedule(3, 0.01, SIGMA_MAX), (4,), balance_steps="no"),
    lambda gmm, x: fd.amed.distill(gmm, fd.amed.schedule(3, 0.01, SIGMA_MAX), (4,), teacher_forcing="no"),
    lambda gmm, x: fd.sample_amed(gmm, x, fd.get_sigmas_karras(4, 0.01, SIGMA_MAX), afs="no", disable=True),
    lambda gmm, x: fd.sample_ipndm(gmm, x, fd.get_sigmas_karras(4, 0.01, SIGMA_MAX), afs="no", disable=True),
    lambda gmm, x: fd.sample_euler(gmm, x, fd.get_sigmas_karras(4, 0.01, SIGMA_MAX), k_diffusion_rng="no"),
    lambda gmm, x: fd.shortcut.ShortcutUNet(fd.zoo.digits_shortcut().model.unet, step_conditioned="no"),
], ids=["return_info", "schedule-afs", "balance_steps", "teacher_forcing", "amed-afs", "ipndm-afs",
        "k_diffusion_rng", "step_conditioned"])
def test_flags_must_be_bools(gmm, call):
    """'no' would be read as True."""
    with pytest.raises(TypeError, match=r"must be a bool, got 'no' \(str\)"):
        call(gmm, torch.randn(2, gmm.dim) * SIGMA_MAX)


@pytest.mark.parametrize("arguments, error, match", [
    ((torch.tensor([10.0, 1.0, -1.0]), 1), ValueError, r"sigmas\[2\] = -1.0 must be >= 0"),
    ((torch.tensor([0.1, 1.0, 10.0]), 1), ValueError, "sigmas must be decreasing"),
    ((torch.tensor([[10.0, 1.0]]), 1), ValueError, "sigmas must be a 1-D tensor"),
    (([10.0, 1.0], 1), TypeError, "sigmas must be a torch.Tensor"),
    ((torch.tensor([10.0, 1.0]), -1), ValueError, "M must be an integer >= 0"),
    ((torch.tensor([10.0, 1.0]), 1.5), TypeError, "M must be an integer >= 0"),
    ((torch.tensor([10.0, 1.0]), 1, -7.0), ValueError, "rho must be > 0"),
])
def test_amed_refine_checks_its_arguments(arguments, error, match):
    with pytest.raises(error, match=match):
        fd.amed.refine(*arguments)


def test_meaningless_options_are_refused_where_they_would_be_ignored():
    with pytest.raises(ValueError, match="kind='logsnr' takes none, got rho=3.0"):
        fd.amed.schedule(5, 0.01, SIGMA_MAX, kind="logsnr", rho=3.0)
    with pytest.raises(ValueError, match="mode='uniform' takes neither, got calls=0"):
        fd.unet.DeepCacheConfig(calls=0)
    with pytest.raises(ValueError, match="bottleneck_out must be >= 1 for a predictor that reads a bottleneck"):
        fd.amed.Predictor(bottleneck_dim=4, bottleneck_out=0)
    config = fd.unet.DeepCacheConfig(mode="quadratic", calls=np.int64(10), interval=2, center=np.int64(3))
    assert len(config.full_calls) == 5  # numpy integers are integers
    with pytest.raises(TypeError, match=r"center must be an integer >= 0, got True \(bool\)"):
        fd.unet.DeepCacheConfig(mode="quadratic", calls=10, center=True)


def test_a_solver_that_needs_options_names_them(gmm):
    with pytest.raises(TypeError, match=r"solver 'ddim' needs the options \['alphas_cumprod'\]"):
        fd.Sampler(gmm, "ddim", torch.tensor([999, 0]))
    with pytest.raises(TypeError, match=r"solver 'ddim' needs the options \['alphas_cumprod'\]"):
        fd.sdo.sample(gmm, torch.randn(2, gmm.dim), torch.tensor([999, 0]), "ddim")
    out = fd.sdo.sample(gmm, torch.randn(2, gmm.dim) * SIGMA_MAX, fd.get_sigmas_karras(3, 0.01, SIGMA_MAX),
                        disable=True)  # every sampler takes disable
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(calls=5.0), TypeError, r"calls must be an integer >= 1, got 5.0 \(float\)"),
    (dict(calls="5"), TypeError, "calls must be an integer"),
    (dict(student=["amed"]), ValueError, r"student must be one of \('amed', 'ipndm'\)"),
])
def test_zoo_amed_arguments_are_named(digits, kwargs, error, match):
    with pytest.raises(error, match=match):
        fd.zoo.digits_amed(digits.denoiser, **kwargs)


def test_zoo_amed_given_the_model_tuple_names_its_denoiser(digits):
    with pytest.raises(TypeError, match=r"model must be the denoiser module, got a ZooModel: pass its .denoiser"):
        fd.zoo.digits_amed(digits)


@pytest.mark.parametrize("config, match", [
    (dict(cls="DPMSolverMultistepScheduler", use_flow_sigmas=True), "use_flow_sigmas=True is not supported"),
    (dict(cls="EulerDiscreteScheduler", interpolation_type="log_linear"), "interpolation_type='log_linear' is not"),
    (dict(cls="DPMSolverMultistepScheduler", use_dynamic_shifting=True), "use_dynamic_shifting=True is not"),
])
def test_from_diffusers_refuses_every_setting_it_would_not_reproduce(config, match):
    cls = getattr(diffusers, config.pop("cls"))
    with pytest.raises(ValueError, match=match):
        fd.from_diffusers(cls(**config), 10)


def test_from_diffusers_refuses_a_setting_it_does_not_know():
    """A setting a later diffusers adds is refused unless at its default (here: a field the class never had)."""
    scheduler = diffusers.EulerDiscreteScheduler()
    scheduler.register_to_config(final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="final_sigmas_type='sigma_min' is not supported"):
        fd.from_diffusers(scheduler, 10)


@pytest.mark.parametrize("options, error, match", [
    (dict(s_churn=1.0), ValueError, r"s_churn=1.0 \(EulerDiscreteScheduler's churn\) is not supported"),
    (dict(variance_noise=torch.zeros(2, 16)), ValueError, "variance_noise is not supported"),
    (dict(eta=0.5), ValueError, "eta=0.5 is a step option of DDIMScheduler and TCDScheduler; this scheduler "
                                "reproduces EulerDiscreteScheduler"),
    (dict(etaa=0.5), TypeError, "unexpected keyword argument 'etaa'"),
])
def test_fused_scheduler_refuses_step_options_it_would_drop(options, error, match):
    scheduler = fd.integrations.FusedScheduler.from_config(diffusers.DDIMScheduler().config, solver="euler")
    scheduler.set_timesteps(4)
    with pytest.raises(error, match=match):
        scheduler.step(torch.zeros(2, 16), scheduler.timesteps[0], torch.zeros(2, 16), **options)


def test_fused_scheduler_a_refused_first_step_or_device_changes_nothing():
    scheduler = fd.integrations.FusedScheduler.from_config(diffusers.DDIMScheduler().config, solver="ddim")
    scheduler.set_timesteps(4)
    t = scheduler.timesteps
    with pytest.raises(TypeError, match="model_output must be a floating-point tensor"):
        scheduler.step(torch.zeros(2, 16, dtype=torch.long), t[0], torch.zeros(2, 16), eta=0.5)
    scheduler.step(torch.zeros(3, 16), t[0], torch.zeros(3, 16), eta=0.0)  # the corrected retry starts the run
    before = scheduler.timesteps.clone(), scheduler.num_inference_steps
    with pytest.raises(ValueError, match="device must name a torch device, got 'bogus'"):
        scheduler.set_timesteps(7, device="bogus")
    assert torch.equal(scheduler.timesteps, before[0]) and scheduler.num_inference_steps == before[1]
    scheduler.step(torch.zeros(3, 16), t[1], torch.zeros(3, 16), eta=0.0)  # the run goes on
    fresh = fd.integrations.FusedScheduler.from_config(diffusers.EulerDiscreteScheduler().config, solver="euler")
    with pytest.raises(RuntimeError, match=r"call set_timesteps\(num_inference_steps\) before scale_model_input"):
        fresh.scale_model_input(torch.zeros(2, 16), 999)


@pytest.mark.parametrize("solver", ["ddim", "euler", "dpmpp_2m"])
def test_fused_scheduler_in_diffusers_img2img_loop_equals_the_diffusers_scheduler(solver):
    """StableDiffusionImg2ImgPipeline's loop: get_timesteps, set_begin_index where the scheduler has it, the image
    noised by add_noise at the first kept timestep, then a step per timestep."""
    name = fd.integrations.FusedScheduler.SOLVERS[solver]

    def img2img_loop(scheduler, steps=10, strength=0.5):
        generator = torch.Generator().manual_seed(0)
        image, noise = torch.rand(2, 16, generator=generator) * 2 - 1, torch.randn(2, 16, generator=generator)
        scheduler.set_timesteps(steps)
        start = steps - int(steps * strength)
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        x = scheduler.add_noise(image, noise, timesteps[:1])
        for t in timesteps:
            eps = torch.tanh(scheduler.scale_model_input(x, t) * 0.3 + t / 1000)
            x = scheduler.step(eps, t, x).prev_sample
        return x

    expected = img2img_loop(getattr(diffusers, name)())
    got = img2img_loop(fd.integrations.FusedScheduler(getattr(diffusers, name)(), solver))
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def test_deepcache_refuses_a_compiled_unet_and_a_unet_without_up_blocks():
    unet = unet_models.build("plain")[0]
    with pytest.raises(TypeError, match=r"goes on the U-Net itself, before torch.compile.*unet._orig_mod"):
        fd.unet.enable_deepcache(torch.compile(unet, backend="eager"))
    unet.up_blocks = torch.nn.ModuleList()
    for enable in (fd.unet.enable_deepcache, lambda u: fd.unet.enable_skip_tuning(u, 0.5)):
        with pytest.raises(TypeError, match="needs a U-Net with at least one up block"):
            enable(unet)


def test_deepcache_in_a_pipelines_own_loop_starts_each_call_afresh(digits):
    """A diffusers pipeline sets no engine context: each new call (its timestep rising again) starts a new run,
    so identical calls give identical images."""
    unet = copy.deepcopy(digits.denoiser.inner_model)
    pipe = diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    handle = fd.unet.enable_deepcache(unet, interval=3)
    images = [pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                   output_type="np").images for _ in range(2)]
    handle.disable()
    assert (images[0] == images[1]).all()


def accelerated_ddim(digits):
    unet = copy.deepcopy(digits.denoiser.inner_model)
    pipe = diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_accelerated_pipeline_keeps_the_pipelines_signature(digits):
    pipe = accelerated_ddim(digits)
    expected = pipe(2, torch.Generator().manual_seed(0), 1.0, 3, None, "np").images  # positional, the own order
    fd.integrations.accelerate(pipe, solver="ddim")
    got = pipe(2, torch.Generator().manual_seed(0), 1.0, 3, None, "np").images
    assert abs(got - expected).max() < 1e-4
    with pytest.raises(ValueError, match=r"an accelerated DDIMPipeline does not take \['use_clipped_model_output'\]"):
        pipe(2, None, 0.0, 3, True)
    with pytest.raises(ValueError, match="generator: a list of generators cannot seed ddim's step noise"):
        pipe(2, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)], 1.0, 3)
    ddpm = diffusers.DDPMPipeline(pipe.unet, diffusers.DDPMScheduler())
    fd.integrations.accelerate(ddpm, solver="euler")
    import inspect as inspect_

    assert inspect_.signature(type(ddpm).__mro__[1].__call__).parameters["num_inference_steps"].default == 1000
    fd.integrations.undo(ddpm)


def test_accelerated_pipeline_refuses_a_replaced_unet_or_scheduler(digits):
    pipe = accelerated_ddim(digits)
    fd.integrations.accelerate(pipe, solver="ddim")
    pipe.scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing")
    with pytest.raises(ValueError, match=r"pipe.scheduler was replaced after accelerate\(pipe\); call undo\(pipe\)"):
        pipe(batch_size=1, num_inference_steps=2)
    fd.integrations.undo(pipe)


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x: fd.shortcut.loss(m, x, (torch.randn_like(x) * 3).long()), ValueError,
     "x_noise must be a floating-point tensor"),
    (lambda m, x: fd.shortcut.loss(lambda x, t, d: (x * 10).long(), x), ValueError,
     "a velocity is a floating-point tensor"),
    (lambda m, x: fd.shortcut.loss(m, x, generator=0), TypeError, r"generator must be a torch.Generator or None, got 0"),
    (lambda m, x: fd.shortcut.loss(m, x, levels=70), ValueError, "levels must be at most 24"),
    (lambda m, x: m(x, torch.zeros(3), 0.5), ValueError, r"t must be a number or a floating-point tensor of shape \[\] or "
                                                         r"\[2\] \(x's batch\)"),
    (lambda m, x: m(x, 0.5, torch.full((3,), 0.5)), ValueError, r"d must be a number or a floating-point tensor"),
], ids=["int-noise", "int-output", "generator", "levels", "t-batch", "d-batch"])
def test_shortcut_models_and_tensors_that_do_not_fit(call, error, match):
    model = fd.zoo.digits_shortcut().model
    with pytest.raises(error, match=match):
        call(model, torch.randn(2, 1, 8, 8))


def test_shortcut_model_runs_in_its_own_dtype_under_any_state():
    model = fd.zoo.digits_shortcut(dtype=torch.float64).model
    x = torch.randn(2, 1, 8, 8)
    out = fd.sample_shortcut(model, x, 2, disable=True)  # a float32 state, a float64 model
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_dpm_adaptive_names_the_noise_sampler_and_h_init(gmm):
    x = torch.randn(4, gmm.dim) * SIGMA_MAX
    with pytest.raises(ValueError, match=r"dpm_adaptive step at sigma=20: noise_sampler returned shape \(1, 4\), "
                                         r"expected a tensor of shape \(4, 4\)"):
        fd.sample_dpm_adaptive(gmm, x, 0.01, SIGMA_MAX, eta=1.0, noise_sampler=lambda s, t: torch.randn(1, 4),
                               disable=True)
    with pytest.raises(FloatingPointError, match="noise_sampler returned non-finite values"):
        fd.sample_dpm_adaptive(gmm, x, 0.01, SIGMA_MAX, eta=1.0, disable=True,
                               noise_sampler=lambda s, t: torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match="h_init=1e-300 is below the float32 resolution"):
        fd.sample_dpm_adaptive(gmm, x, 0.01, SIGMA_MAX, h_init=1e-300, disable=True)
    out = fd.sample_dpm_adaptive(gmm, x, 0.01, SIGMA_MAX, icoeff=1e3, disable=True)  # the factor saturates
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sigma_min, sigma_max, n, match", [
    (1e-50, 10.0, 5, "sigma_min=1e-50 underflows float32"),
    (0.01, 1e39, 5, "sigma_max=1e[+]39 overflows float32"),
    (1e-25, 80.0, 4, "folds epsilon into update weights of .*raise sigma_min or nfe"),
])
def test_dpm_fast_names_sigmas_float32_cannot_hold(gmm, sigma_min, sigma_max, n, match):
    with pytest.raises(ValueError, match=match):
        fd.sample_dpm_fast(gmm, torch.randn(2, gmm.dim), sigma_min, sigma_max, n, disable=True)


@pytest.mark.parametrize("sampler", [fd.sample_dpmpp_sde, fd.sample_dpmpp_2m_sde, fd.sample_dpmpp_3m_sde])
def test_sde_samplers_take_a_one_step_schedule(gmm, sampler):
    """The only step is the final denoise: no noise, so no Brownian tree (whose range would be empty)."""
    x = torch.randn(2, gmm.dim) * 10
    out = sampler(gmm, x, torch.tensor([10.0, 0.0]), disable=True)
    assert torch.equal(out, gmm(x, torch.full((2,), 10.0)))


def test_predictor_sample_attaches_to_the_model_it_is_given(digits, shipped_amed):
    other = fd.zoo.digits().denoiser
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * shipped_amed.sigmas[0]
    assert torch.equal(shipped_amed.sample(other, x), shipped_amed.sample(digits.denoiser, x))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got builtins.list"):
        shipped_amed.sample(digits.denoiser, [[0.0] * 8])


def test_predictor_with_the_wrong_call_signature_is_named(gmm):
    with pytest.raises(TypeError, match=r"predictor must be callable as predictor\(x, sigma, sigma_next, analytic\)"):
        fd.sample_amed(gmm, torch.randn(2, gmm.dim), fd.get_sigmas_karras(3, 0.01, SIGMA_MAX),
                       predictor=lambda x, s: 0.5)


def test_distill_continues_a_trained_predictor_and_ignores_a_schedules_autograd(gmm):
    sigmas = fd.amed.schedule(3, 0.01, SIGMA_MAX).requires_grad_()
    first = fd.amed.distill(gmm, sigmas, (gmm.dim,), trajectories=4, batch=4, progress=False)
    again = fd.amed.distill(gmm, sigmas, (gmm.dim,), trajectories=4, batch=4, progress=False, predictor=first)
    assert again is first and not any(p.requires_grad for p in again.parameters())


def test_a_damaged_file_of_the_right_kind_is_named(tmp_path):
    files.save(tmp_path / "g.safetensors", {"gamma": torch.ones(2), "stderr": torch.zeros(2)}, files.GAMMA_ESTIMATE,
               samples=2)
    with pytest.raises(ValueError, match=r"is an Analytic-DPM Γ estimate file that is damaged: it lacks \['timesteps'\]"):
        GammaEstimate.load(tmp_path / "g.safetensors")
    files.save(tmp_path / "p.safetensors", {"sigmas": torch.ones(2)}, files.AMED_PREDICTOR, config="nonsense",
               student="amed", afs=True, max_order=4)
    with pytest.raises(ValueError, match="is an AMED predictor file that is damaged: TypeError"):
        fd.amed.load(tmp_path / "p.safetensors")


def test_saving_onto_a_folder_or_into_a_missing_one_names_the_path(tmp_path):
    estimate = GammaEstimate(torch.arange(3), torch.ones(3), torch.zeros(3), 2)
    with pytest.raises(IsADirectoryError, match=f"path '{tmp_path}' is a folder"):
        estimate.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="the folder '.*missing' does not exist"):
        estimate.save(tmp_path / "missing" / "g.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_gamma_values_and_schedules_that_do_not_belong(tmp_path):
    ac = fd.ddpm_alphas_cumprod(10)
    with pytest.raises(TypeError, match="gamma must be a real floating-point tensor, got dtype torch.complex64"):
        fd.analytic_dpm.optimal_variance(ac, [9, 5, 0], torch.full((3,), 0.5) + 3j)
    data = torch.rand(20, 1, 4, 4) * 2 - 1
    with pytest.raises(ValueError, match="expected a floating-point tensor of the same shape"):
        fd.analytic_dpm.estimate_gamma(lambda x, t: (x * 100).long(), ac, data, [5], samples_per_step=4, cache=False)
    estimate = fd.analytic_dpm.estimate_gamma(EpsOfT(), ac, data, samples_per_step=4)
    estimate.save(tmp_path / "g.safetensors")
    other = fd.ddpm_alphas_cumprod(10, 0.01, 0.3)
    for gamma in (estimate, GammaEstimate.load(tmp_path / "g.safetensors")):
        with pytest.raises(ValueError, match="gamma was estimated on another alphas_cumprod"):
            fd.analytic_dpm.optimal_variance(other, [9, 5, 0], gamma)
        fd.analytic_dpm.optimal_variance(ac, [9, 5, 0], gamma)


def test_metrics_inputs_are_named():
    with pytest.raises(ValueError, match=r"images must be real floating-point samples \[N, ...\]"):
        fd.metrics.trajectory_error(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(ValueError, match="images must be real floating-point samples"):
        fd.metrics.trajectory_error(torch.ones(2, 4) + 1j, torch.zeros(2, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="a and b must have one feature size, got 64 and 32"):
        fd.metrics.frechet_distance_of_features(torch.randn(5, 64), torch.randn(5, 32))
    with pytest.raises(ValueError, match=r"b must be real floating-point features \[N, D\] with N >= 2"):
        fd.metrics.frechet_distance_of_features(torch.randn(5, 4), torch.randn(1, 4))
    images = fd.zoo.data.load_digits_split().heldout_images[:50]
    assert fd.metrics.frechet_distance(images, images) >= 0


def test_img2img_names_its_tensors():
    sigmas = fd.get_sigmas_karras(5, 0.01, SIGMA_MAX)
    image = torch.zeros(2, 4)
    image[0, 0] = float("nan")
    with pytest.raises(ValueError, match="image contains NaN or inf"):
        fd.img2img(image, torch.randn(2, 4), sigmas, 0.6)
    with pytest.raises(ValueError, match="image and noise must be on one device, got cpu and meta"):
        fd.img2img(torch.zeros(2, 4), torch.randn(2, 4, device="meta"), sigmas, 0.6)


def cli_error(capsys, *argv):
    import sys

    from fused_diffusion import __main__ as cli

    saved = sys.argv
    sys.argv = ["python -m fused_diffusion", *argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    finally:
        sys.argv = saved
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    (line,) = [line for line in error.splitlines() if ": error: " in line]
    return line


def test_command_line_paths_and_options_are_checked_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    cases = [
        (["generate", "-n", "2", "--out", ""], "argument --out: must name a folder, got ''"),
        (["generate", "-n", "2", "--out", str(tmp_path / "file" / "sub")], "is a file, not a folder"),
        (["demo", "--out", str(tmp_path / "file")], "argument --out: '" + str(tmp_path / "file") + "' is a file"),
        (["demo", "--seed", str(2**64)], "argument --seed: must be an integer in [0, 9223372036854775807]"),
        (["train", "digits", "--workdir", str(tmp_path / "file")], "argument --workdir: "),
        (["train", "digits", "--out", str(tmp_path)], "is a folder, not a file"),
        (["train", "digits-classifier", "--lr", "0.5"], "argument --lr: not used by `train digits-classifier`"),
        (["train", "digits-amed", "--iterations", "5"], "argument --iterations: not used by `train digits-amed`"),
        (["train", "digits", "--calls", "7"], "argument --calls: not used by `train digits`"),
        (["train", "digits", "--distance", "l2"], "argument --distance: not used by `train digits`"),
        (["train", "digits-consistency", "--distance", "l1"], "argument --distance: invalid choice: 'l1'"),
        (["train", "digits-pcm", "--distance", "pseudo_huber"],
         "argument --distance: `train digits-pcm` takes l2, huber, got 'pseudo_huber'"),
        (["train", "digits-consistency", "--distance", "huber"],
         "argument --distance: `train digits-consistency` takes l2, pseudo_huber, got 'huber'"),
    ]
    for argv, message in cases:
        assert message in cli_error(capsys, *argv), argv
    assert (tmp_path / "file").read_text() == "mine"


def test_train_resume_from_another_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"junk")
    line = cli_error(capsys, "train", "digits", "--workdir", str(tmp_path), "--resume", "--iterations", "1",
                     "--out", str(tmp_path / "w.safetensors"))
    assert "argument --workdir: " in line and "is not a readable training checkpoint" in line


# ---- found by the third probe ---------------------------------------------------------------------------------


def test_deepcache_in_a_pipelines_loop_starts_back_to_back_one_step_runs_afresh(digits):
    unet = copy.deepcopy(digits.denoiser.inner_model)
    pipe = diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    plain = [pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(s), output_type="np")
             .images for s in (0, 1)]
    handle = fd.unet.enable_deepcache(unet, interval=3)
    cached = [pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(s), output_type="np")
              .images for s in (0, 1)]
    handle.disable()
    for a, b in zip(plain, cached):  # one call per run: always a full call, equal to the plain U-Net
        assert abs(a - b).max() < 1e-5


def test_a_hooked_unet_refuses_deepcopy():
    unet = unet_models.build("plain")[0]
    for enable in (lambda u: fd.unet.enable_deepcache(u), lambda u: fd.unet.enable_skip_tuning(u, 0.5)):
        handle = enable(unet)
        with pytest.raises(TypeError, match="cannot be deep-copied .*disable\\(\\) the handles, copy, then enable"):
            copy.deepcopy(unet)
        handle.disable()
        copy.deepcopy(unet)  # fine once disabled


def test_gamma_cache_sees_hooks_and_train_eval():
    model, ac = EpsOfT(), fd.ddpm_alphas_cumprod(10)
    data = torch.rand(20, 1, 4, 4) * 2 - 1
    first = fd.analytic_dpm.estimate_gamma(model.train(), ac, data, samples_per_step=4)
    model.eval()
    assert fd.analytic_dpm.estimate_gamma(model, ac, data, samples_per_step=4) is not first
    model.eval()
    handle = model.net.register_forward_hook(lambda m, i, o: o * 2)
    assert fd.analytic_dpm.estimate_gamma(model, ac, data, samples_per_step=4) is not first
    handle.remove()


@pytest.mark.parametrize("scale", [lambda x: (x + 1) / 2 - 0.01, lambda x: (x + 1) * 127.5 - 0.5])
def test_metrics_refuse_pixel_images_with_a_few_negative_values(scale):
    images = scale(fd.zoo.data.load_digits_split().heldout_images[:50])
    assert images.min() < 0
    with pytest.raises(ValueError, match=r"images must be scaled to \[-1, 1\]"):
        fd.metrics.frechet_distance(images)


def test_ddim_refuses_eta_above_one():
    for make in (lambda: fd.sample_ddim(lambda x, t: x, torch.randn(2, 4), fd.ddpm_alphas_cumprod(), 5, eta=1.5),
                 lambda: fd.from_diffusers(diffusers.DDIMScheduler(), 5, eta=1.5)):
        with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
            make()


def test_a_refused_distill_leaves_the_predictor_as_it_was(gmm):
    sigmas = fd.amed.schedule(3, 0.01, SIGMA_MAX)
    predictor = fd.amed.distill(gmm, sigmas, (gmm.dim,), trajectories=4, batch=4, progress=False)
    before = (predictor.sigmas.clone(), predictor.student, predictor.afs, predictor.training)
    with pytest.raises(ValueError):
        fd.amed.distill(gmm, fd.amed.schedule(4, 0.01, SIGMA_MAX, afs=False), (gmm.dim,), trajectories=4, batch=4,
                        progress=False, predictor=predictor, student="ipndm", afs=False, teacher_forcing=True)
    assert torch.equal(predictor.sigmas, before[0]) and (predictor.student, predictor.afs, predictor.training) == \
        before[1:]


def test_amed_numbers_of_any_kind_save(gmm, tmp_path):
    sigmas = fd.amed.schedule(3, 0.01, SIGMA_MAX)
    predictor = fd.amed.distill(gmm, sigmas, (gmm.dim,), trajectories=np.int64(4), batch=np.int64(4),
                                lr=np.float32(1e-3), M=np.int64(1), seed=np.int64(3), progress=False)
    predictor.save(tmp_path / "p.safetensors")
    assert fd.amed.load(tmp_path / "p.safetensors").info["seed"] == 3
    fd.amed.Predictor(hidden_dim=np.int64(8)).config["hidden_dim"].bit_length()


def test_small_refusals_name_their_argument(digits, tmp_path):
    setup = fd.from_diffusers(diffusers.DDIMScheduler(), 5)
    image = torch.zeros(2, 4)
    image[0, 0] = float("nan")
    with pytest.raises(ValueError, match="image contains NaN or inf"):
        setup.sample(lambda x, t: x, torch.randn(2, 4), image=image, strength=0.5)
    with pytest.raises(TypeError, match="image must be a floating-point tensor"):
        setup.sample(lambda x, t: x, torch.randn(2, 4), image=torch.zeros(2, 4, dtype=torch.uint8), strength=0.5)
    with pytest.raises(ValueError, match="device 'cuda' needs a CUDA GPU"):
        setup.sampler(lambda x, t: x, device="cuda")
    fused = fd.integrations.FusedScheduler(diffusers.DDIMScheduler())
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1, got 0"):
        fused.set_timesteps(0)
    with pytest.raises(TypeError, match="step_generator must be a torch.Generator or None, got 5"):
        fd.sdo.sample(lambda x, s: x, torch.randn(2, 4), fd.get_sigmas_karras(3, 0.1, 10.0), grad_step=0,
                      step_generator=5)
    handle = fd.unet.enable_skip_tuning(unet_models.build("plain")[0], 0.5)
    handle.disable()
    with pytest.raises(RuntimeError, match="this Skip-Tuning was disabled"):
        handle.set_rho(0.7)


def test_accelerated_unconditional_pipeline_takes_what_its_own_takes(digits):
    pipe = accelerated_ddim(digits)
    fd.integrations.accelerate(pipe, solver="ddim")
    pipe(batch_size=1, num_inference_steps=2, use_clipped_model_output=False)  # False means what None does
    with pytest.raises(ValueError, match="generator: a list of 1 generators for batch_size=2"):
        pipe(batch_size=2, num_inference_steps=2, generator=[torch.Generator()])
    fd.integrations.undo(pipe)


def test_damaged_digits_metadata_is_named(tmp_path):
    tensors, metadata = files.read_any(DIGITS_WEIGHTS)
    for change in ({"schedule": {}}, {"config": "nonsense"}, {"schedule": {**metadata["schedule"], "beta_end": 2.0}}):
        files.save(tmp_path / "d.safetensors", tensors, files.DIGITS_UNET, **{**metadata, **change})
        with pytest.raises(ValueError, match="is a digits U-Net .* file that is damaged"):
            fd.zoo.digits(path=tmp_path / "d.safetensors")


def test_demo_and_train_refuse_the_other_modes_options(tmp_path, capsys):
    assert "argument --calls: belongs to the solver grid (--solvers)" in cli_error(capsys, "demo", "--gmm", "--calls",
                                                                                   "3")
    assert "argument --calls: belongs to the solver grid (--solvers)" in cli_error(capsys, "demo", "--calls", "3")
    assert "argument --samples: belongs to the digits model demos" in cli_error(capsys, "demo", "--gmm", "--samples",
                                                                                "5")
    assert "argument --gmm: not allowed with argument --solvers" in cli_error(capsys, "demo", "--solvers", "--gmm")
    assert "argument --steps: belongs to the Gaussian mixture demo" in cli_error(capsys, "demo", "--steps", "3")
