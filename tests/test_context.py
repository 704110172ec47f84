"""The per-call context: which model call of which run is under way, as model-side features see it."""
import pytest
import torch

import fused_diffusion as fd


class Recorder:
    """A denoiser that records the current ModelCall of each call."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __call__(self, x, sigma, **kwargs):
        self.seen.append(fd.current_model_call())
        return self.inner(x, sigma, **kwargs)


gmm = fd.GaussianMixture.random(3, 4, seed=0)
noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(0)) * 20


def test_no_call_outside_a_loop():
    assert fd.current_model_call() is None


def test_heun_calls_are_numbered_with_step_stage_label_and_sigma():
    model = Recorder(gmm)
    sigmas = fd.get_sigmas_karras(4, 0.01, 20.0)
    fd.sample_heun(model, noise * sigmas[0], sigmas, disable=True)
    calls = model.seen
    assert [c.index for c in calls] == list(range(7))  # 2n - 1 calls
    assert [c.step for c in calls] == [0, 0, 1, 1, 2, 2, 3]
    assert [c.call_in_step for c in calls] == [0, 1, 0, 1, 0, 1, 0]
    assert [c.label for c in calls] == ["sigma_hat", "sigma_next"] * 3 + ["sigma_hat"]
    assert all(c.n_steps == 4 for c in calls) and len({c.run for c in calls}) == 1
    torch.testing.assert_close(calls[1].sigma, sigmas[1].expand(2))
    assert fd.current_model_call() is None


def test_every_run_counts_from_zero_with_a_new_run_id():
    model = Recorder(gmm)
    sampler = fd.Sampler(model, "dpmpp_2m", fd.get_sigmas_karras(3, 0.01, 20.0))
    sampler(noise)
    sampler(noise)
    first, second = model.seen[:3], model.seen[3:]
    assert [c.index for c in first] == [c.index for c in second] == [0, 1, 2]
    assert first[0].run != second[0].run


def test_ddim_and_amed_label_their_calls():
    model = Recorder(lambda x, t: torch.zeros_like(x))
    fd.sample_ddim(model, noise, fd.ddpm_alphas_cumprod(), 3, disable=True)
    assert [c.label for c in model.seen] == ["timestep"] * 3
    amed = Recorder(gmm)
    sigmas = fd.get_sigmas_karras(3, 0.01, 20.0)
    fd.sample_amed(amed, noise * sigmas[0], sigmas, disable=True)  # AFS: the first step calls only the midpoint
    assert [(c.step, c.label) for c in amed.seen] == [(0, "sigma_mid"), (1, "sigma"), (1, "sigma_mid"), (2, "sigma")]


def test_a_hand_written_loop_can_set_the_call():
    call = fd.ModelCall(run=7, index=3, step=1, n_steps=5, call_in_step=0, label="sigma", sigma=None)
    with fd.model_call(call):
        assert fd.current_model_call() is call
    assert fd.current_model_call() is None


@pytest.mark.gpu
def test_captured_pattern_follows_the_call_index():
    """A model that branches on the call index in Python: the graph holds the pattern of one whole run, and the
    warm-up before capture does not shift it."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")

    def every_other(x, sigma):
        call = fd.current_model_call()
        scale = 0.9 if call.index % 2 == 0 else 1.1
        return x * scale / (1 + sigma.reshape(-1, 1) ** 2)

    sigmas = fd.get_sigmas_karras(5, 0.01, 20.0, device="cuda")
    x = noise.cuda() * 20
    sampler = fd.Sampler(every_other, "heun", sigmas)
    expected = fd.sample_heun(every_other, x, sigmas, disable=True)
    torch.testing.assert_close(sampler(x), expected)
    torch.testing.assert_close(sampler(x), expected)
    assert sampler.captures == 1
