import math

import pytest
import torch

import fused_diffusion as fd


def k_diffusion_karras(n, sigma_min, sigma_max, rho=7.0):
    """k-diffusion 0.1.1's get_sigmas_karras, verbatim."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


@pytest.mark.parametrize("n,rho", [(1, 7.0), (10, 7.0), (35, 3.0)])
def test_karras_equals_k_diffusion(n, rho):
    assert torch.equal(fd.get_sigmas_karras(n, 0.002, 80.0, rho), k_diffusion_karras(n, 0.002, 80.0, rho))


def test_polynomial_is_karras_in_float64():
    torch.testing.assert_close(fd.get_sigmas_polynomial(18, 0.002, 80.0), fd.get_sigmas_karras(18, 0.002, 80.0))


def test_exponential_is_uniform_in_log_snr():
    s = fd.get_sigmas_exponential(9, 0.01, 10.0).double()
    log_snr = -2 * s[:-1].log()
    steps = log_snr[1:] - log_snr[:-1]
    torch.testing.assert_close(steps, steps[:1].expand_as(steps), rtol=1e-5, atol=1e-5)
    assert fd.get_sigmas_logsnr is fd.get_sigmas_exponential


def test_vp_matches_formula():
    s = fd.get_sigmas_vp(5)
    t = torch.linspace(1, 1e-3, 5)
    torch.testing.assert_close(s[:-1], torch.sqrt(torch.exp(19.9 * t**2 / 2 + 0.1 * t) - 1))


def test_time_uniform_hits_endpoints_and_is_uniform_in_t():
    s = fd.get_sigmas_time_uniform(10, 0.002, 80.0).double()
    assert math.isclose(s[0], 80.0, rel_tol=1e-5) and math.isclose(s[-2], 0.002, rel_tol=1e-4)
    # invert the fitted VP schedule: t is uniform from 1 to eps_s
    log_max, log_min, eps = math.log(80.0**2 + 1), math.log(0.002**2 + 1), 1e-3
    beta_d = 2 * (log_min / eps - log_max) / (eps - 1)
    beta_min = log_max - 0.5 * beta_d
    t = ((beta_min**2 + 2 * beta_d * (s[:-1] ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    torch.testing.assert_close(t, torch.linspace(1, eps, 10, dtype=torch.float64), rtol=1e-4, atol=1e-5)


def test_discrete_sigmas_come_from_alphas_cumprod():
    ac = fd.ddpm_alphas_cumprod(1000)
    train = fd.sigmas_from_alphas_cumprod(ac)
    torch.testing.assert_close(train, ((1 - ac.double()) / ac.double()).sqrt())
    s = fd.get_sigmas_discrete(10, ac).double()
    assert math.isclose(s[0], train[-1], rel_tol=1e-6) and math.isclose(s[-2], train[0], rel_tol=1e-6)


def test_flow_times():
    torch.testing.assert_close(fd.get_flow_times(4), torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: fd.get_sigmas_karras(0, 0.002, 80.0), "n must be an integer >= 1"),
        (lambda: fd.get_sigmas_karras(5, 80.0, 0.002), "sigma_min < sigma_max"),
        (lambda: fd.get_sigmas_exponential(5, 0.0, 1.0), "sigma_min < sigma_max"),
        (lambda: fd.ddpm_alphas_cumprod(beta_schedule="cosine"), "beta_schedule"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
