"""sample_ddim against a loop over diffusers' DDIMScheduler with the same configuration."""
import pytest
import torch

import fused_diffusion as fd

diffusers = pytest.importorskip("diffusers")


def eps_model(x, t):
    return torch.tanh(x) * (0.5 + t.float().reshape(-1, *([1] * (x.dim() - 1))) / 2000)


def diffusers_loop(x, steps, eta, generator, **config):
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", **config)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps = eps_model(x, t.expand(x.shape[0]))
        x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return x


@pytest.mark.parametrize(
    "steps,eta,config",
    [
        (10, 0.0, dict(timestep_spacing="leading")),
        (7, 0.0, dict(timestep_spacing="trailing")),
        (12, 0.0, dict(timestep_spacing="linspace", set_alpha_to_one=False)),
        (10, 1.0, dict(timestep_spacing="leading", steps_offset=1)),
        (5, 0.3, dict(timestep_spacing="leading", clip_sample=True, clip_sample_range=0.8)),
    ],
)
def test_ddim_equals_diffusers_scheduler_loop(steps, eta, config):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = diffusers_loop(x, steps, eta, torch.Generator().manual_seed(1), **config)
    got = fd.sample_ddim(eps_model, x, fd.ddpm_alphas_cumprod(1000), steps, eta=eta,
                         generator=torch.Generator().manual_seed(1), disable=True, **config)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5
