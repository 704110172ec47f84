"""Denoiser adapters and the analytic Gaussian mixture against hand-written formulas."""
import math

import pytest
import torch

import fused_diffusion as fd
from fused_diffusion.ops import count_op_launches


class Output:
    def __init__(self, sample):
        self.sample = sample


def eps_model(x, t, **kwargs):
    return torch.sin(x) * (1 + t.reshape(-1, *([1] * (x.dim() - 1))) / 1000)


def test_eps_denoiser_matches_k_diffusion_formula():
    ac = fd.ddpm_alphas_cumprod(1000)
    den = fd.EpsDenoiser(lambda x, t: Output(eps_model(x, t)), ac)  # diffusers-style output object
    x = torch.randn(3, 2, 5, 5)
    sigma = torch.tensor([0.5, 3.0, 14.0])
    log_sigmas = fd.sigmas_from_alphas_cumprod(ac).log().float()
    # t from log-sigma interpolation between the two neighbouring training sigmas
    t = []
    for s in sigma.tolist():
        hi = int((log_sigmas < math.log(s)).sum())
        lo = hi - 1
        w = (math.log(s) - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        t.append(lo + float(w))
    t = torch.tensor(t)
    torch.testing.assert_close(den.sigma_to_t(sigma), t, rtol=1e-4, atol=1e-4)
    c_in = 1 / (sigma**2 + 1).sqrt()
    expected = x - sigma[:, None, None, None] * eps_model(x * c_in[:, None, None, None], t)
    torch.testing.assert_close(den(x, sigma), expected, rtol=1e-4, atol=1e-4)


def test_v_denoiser_recovers_x0_from_the_true_velocity():
    ac = fd.ddpm_alphas_cumprod(1000)
    x0, noise = torch.randn(4, 6), torch.randn(4, 6)
    sigma = torch.tensor([0.1, 1.0, 5.0, 40.0])
    alpha = 1 / (sigma**2 + 1).sqrt()
    v_true = alpha[:, None] * noise - sigma[:, None] * alpha[:, None] * x0  # v = alpha eps - sigma_vp x0 (VP units)
    den = fd.VDenoiser(lambda x_in, t: v_true, ac)
    torch.testing.assert_close(den(x0 + sigma[:, None] * noise, sigma), x0, rtol=1e-4, atol=1e-4)


def test_cfg_combines_in_one_batched_call_and_one_launch():
    calls = []

    def inner(x, sigma, cond):
        calls.append(x.shape[0])
        return x * cond[:, None]

    cfg = fd.CFGDenoiser(inner, scale=7.5)
    x, sigma = torch.randn(3, 4), torch.ones(3)
    cond, uncond = torch.full((3,), 2.0), torch.full((3,), 0.5)
    with count_op_launches() as launches:
        out = cfg(x, sigma, cond=cond, uncond=uncond)
    assert calls == [6] and launches.count == 1
    torch.testing.assert_close(out, x * 0.5 + 7.5 * (x * 2.0 - x * 0.5))
    cfg.set_scale(1.0)
    torch.testing.assert_close(cfg(x, sigma, cond=cond, uncond=uncond), x * 2.0)
    with pytest.raises(ValueError, match="uncond must have batch 3"):
        cfg(x, sigma, cond=cond, uncond=uncond[:2])


def test_cfg_broadcasts_a_batch_1_uncond_and_doubles_batch_conditioning():
    seen = {}

    def inner(x, sigma, cond, class_labels, added_cond_kwargs, scale):
        seen.update(labels=class_labels, added=added_cond_kwargs, scale=scale)
        return x * cond[:, :1] + class_labels[:, None] + added_cond_kwargs["time_ids"][:, :1] * scale

    cfg = fd.CFGDenoiser(inner, scale=3.0)
    x, sigma = torch.randn(3, 4), torch.ones(3)
    cond, uncond = torch.randn(3, 5), torch.randn(1, 5)  # one negative prompt for the whole batch
    labels, time_ids = torch.tensor([1.0, 2.0, 3.0]), torch.randn(3, 6)
    out = cfg(x, sigma, cond=cond, uncond=uncond, class_labels=labels,
              added_cond_kwargs={"time_ids": time_ids, "note": "kept"}, scale=torch.tensor(0.5))
    assert torch.equal(seen["labels"], torch.cat([labels, labels]))
    assert torch.equal(seen["added"]["time_ids"], torch.cat([time_ids, time_ids])) and seen["added"]["note"] == "kept"
    assert seen["scale"].shape == ()  # not a batch tensor: passed as it is
    expected_uncond = x * uncond[:, :1] + labels[:, None] + time_ids[:, :1] * 0.5
    expected_cond = x * cond[:, :1] + labels[:, None] + time_ids[:, :1] * 0.5
    torch.testing.assert_close(out, expected_uncond + 3.0 * (expected_cond - expected_uncond))
    # a batch-1 cond is broadcast as well; the result equals the explicitly repeated one
    repeated = cfg(x, sigma, cond=cond[:1].expand(3, 5), uncond=uncond.expand(3, 5), class_labels=labels,
                   added_cond_kwargs={"time_ids": time_ids}, scale=torch.tensor(0.5))
    torch.testing.assert_close(cfg(x, sigma, cond=cond[:1], uncond=uncond, class_labels=labels,
                                   added_cond_kwargs={"time_ids": time_ids}, scale=torch.tensor(0.5)), repeated)


def test_cfg_inside_a_sampler_passes_extra_args():
    gmm = fd.GaussianMixture.random(2, 3, seed=1)
    cfg = fd.CFGDenoiser(lambda x, s, cond: gmm(x, s) * cond[:, None], scale=2.0)
    x = torch.randn(2, 3) * 10
    s = fd.get_sigmas_karras(4, 0.01, 10.0)
    cond, uncond = torch.ones(2), torch.zeros(2)
    out = fd.sample_euler(cfg, x, s, extra_args=dict(cond=cond, uncond=uncond), disable=True)
    expected = fd.sample_euler(lambda x, s: 2.0 * gmm(x, s), x, s, disable=True)
    torch.testing.assert_close(out, expected)


class TestGaussianMixture:
    gmm = fd.GaussianMixture.random(3, 5, seed=2)

    def log_density(self, x, sigma):
        var = self.gmm.stds**2 + sigma**2
        d2 = ((x[:, None, :] - self.gmm.means[None]) ** 2).sum(-1)
        return torch.logsumexp(self.gmm.log_weights - 0.5 * d2 / var - 2.5 * torch.log(2 * math.pi * var), dim=1)

    @pytest.mark.parametrize("sigma", [0.05, 1.0, 30.0])
    def test_denoiser_is_tweedie(self, sigma):
        """D(x, sigma) = x + sigma^2 grad log p_sigma(x), by autograd through the mixture density."""
        x = (torch.randn(6, 5, dtype=torch.float64) * (1 + sigma)).requires_grad_()
        (score,) = torch.autograd.grad(self.log_density(x, sigma).sum(), x)
        expected = x + sigma**2 * score
        torch.testing.assert_close(self.gmm(x.detach(), torch.full((6,), sigma, dtype=torch.float64)), expected.detach())

    def test_float32_matches_float64(self):
        x = torch.randn(4, 5, dtype=torch.float64) * 3
        s = torch.full((4,), 2.0, dtype=torch.float64)
        torch.testing.assert_close(self.gmm(x.float(), s.float()), self.gmm(x, s).float(), rtol=1e-5, atol=1e-5)

    def test_ode_solution_matches_scipy(self):
        integrate = pytest.importorskip("scipy.integrate")
        x = torch.randn(2, 5, dtype=torch.float64) * 10

        def rhs(sigma, y):
            y = torch.from_numpy(y).reshape(2, 5)
            return self.gmm.ode_derivative(y, torch.full((2,), sigma, dtype=torch.float64)).reshape(-1).numpy()

        sol = integrate.solve_ivp(rhs, (10.0, 0.0), x.reshape(-1).numpy(), method="DOP853", rtol=1e-11, atol=1e-11)
        expected = torch.from_numpy(sol.y[:, -1]).reshape(2, 5)
        torch.testing.assert_close(self.gmm.ode_solution(x, 10.0), expected, rtol=1e-8, atol=1e-8)

    def test_samples_have_the_mixture_moments(self):
        samples = self.gmm.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64)
        w = self.gmm.log_weights.exp()
        mean = w @ self.gmm.means
        torch.testing.assert_close(samples.mean(0), mean, rtol=0, atol=0.03)

    def test_bad_parameters(self):
        with pytest.raises(ValueError, match="stds and weights must have shape"):
            fd.GaussianMixture(torch.zeros(2, 3), torch.ones(3), torch.ones(2))
        with pytest.raises(ValueError, match="5 elements"):
            self.gmm(torch.zeros(2, 4), torch.ones(2))


def test_eps_denoiser_drives_a_real_diffusers_unet():
    """A diffusers UNet2DModel (returns an output object with .sample, takes float timesteps) through
    EpsDenoiser and a sampler: the adapter's formula, checked on the real model."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    den = fd.EpsDenoiser(unet, fd.ddpm_alphas_cumprod(1000))
    x, sigma = torch.randn(2, 3, 8, 8) * 5, torch.tensor([5.0, 0.7])
    with torch.no_grad():
        got = den(x, sigma)
        c_in = (1 / (sigma**2 + 1).sqrt()).reshape(-1, 1, 1, 1)
        expected = x - sigma.reshape(-1, 1, 1, 1) * unet(x * c_in, den.sigma_to_t(sigma)).sample
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        sigmas = fd.get_sigmas_karras(3, den.sigma_min, den.sigma_max)
        out = fd.sample_dpmpp_2m(den, torch.randn(2, 3, 8, 8) * sigmas[0], sigmas, disable=True)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
