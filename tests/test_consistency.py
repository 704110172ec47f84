"""fd.consistency: the CD / CT losses against a restatement of Song et al. 2023 (Algorithms 2 and 3, Appendix C),
gradients only into the student, CD on the Gaussian mixture lowering the one-step error against the exact ODE
solution, bad arguments, and the shipped digits consistency model."""
import copy
import math

import pytest
import torch
from torch import nn

import fused_diffusion as fd
from fused_diffusion.consistency import ConsistencyFunction

SIGMA_MIN, SIGMA_MAX = 0.01, 20.0


class TinyDenoiser(nn.Module):
    """D(x, sigma) = the mixture's exact denoiser plus a small MLP of (c_in x, log sigma); the MLP's last layer
    starts at 0, so the student starts as its teacher (as the paper initialises it)."""

    def __init__(self, gmm, width: int = 64, dtype=torch.float64):
        super().__init__()
        self.gmm = gmm
        self.net = nn.Sequential(nn.Linear(gmm.dim + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, gmm.dim)).to(dtype)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x, sigma):
        sigma = sigma.to(x.dtype).expand(len(x))
        features = torch.cat([x * (sigma[:, None] ** 2 + 1).rsqrt(), sigma.log()[:, None]], 1)
        return self.gmm(x, sigma) + self.net(features)


def perturbed(gmm, seed: int = 0):
    """A student whose MLP is not zero, so f differs from the teacher's and the loss is not trivially small."""
    model = TinyDenoiser(gmm)
    torch.manual_seed(seed)
    for p in model.net.parameters():
        nn.init.normal_(p, std=0.3)
    return model


def restated_f(denoiser, x, sigma, sigma_min=SIGMA_MIN, sigma_data=0.5):
    """Appendix C: f = c_skip x + c_out F with F the EDM network output of the denoiser."""
    s = sigma[:, None]
    c_skip = sigma_data**2 / ((s - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (s - sigma_min) / (s**2 + sigma_data**2).sqrt()
    edm_skip, edm_out = sigma_data**2 / (s**2 + sigma_data**2), s * sigma_data / (s**2 + sigma_data**2).sqrt()
    network = (denoiser(x, sigma) - edm_skip * x) / edm_out
    return c_skip * x + c_out * network


@pytest.mark.parametrize("teacher_given", [True, False], ids=["cd", "ct"])
@pytest.mark.parametrize("kind", ["l2", "pseudo_huber"])
def test_loss_restates_the_paper(gmm, teacher_given, kind):
    student_net, target_net = perturbed(gmm, 0), perturbed(gmm, 1)
    student, target = ConsistencyFunction(student_net, SIGMA_MIN), ConsistencyFunction(target_net, SIGMA_MIN)
    data = gmm.sample(32, torch.Generator().manual_seed(0), torch.float64)
    scales = 7
    value = fd.consistency.loss(student, target, gmm if teacher_given else None, data, sigma_min=SIGMA_MIN,
                                sigma_max=SIGMA_MAX, scales=scales, distance=kind,
                                generator=torch.Generator().manual_seed(5))

    generator = torch.Generator().manual_seed(5)
    n = torch.randint(scales - 1, (32,), generator=generator)  # 0..N-2, counted from sigma_max
    z = torch.randn(data.shape, generator=generator, dtype=torch.float64)
    i = scales - 1 - n  # the paper's 1-based t_{n+1} is t[i], t_n is t[i - 1] (t increasing from sigma_min)
    t = torch.tensor([(SIGMA_MIN ** (1 / 7) + k / (scales - 1) * (SIGMA_MAX ** (1 / 7) - SIGMA_MIN ** (1 / 7))) ** 7
                      for k in range(scales)], dtype=torch.float64)
    t_high, t_low = t[i], t[i - 1]
    x_high = data + t_high[:, None] * z
    if teacher_given:  # Heun on dx/dt = (x - D(x, t)) / t from t_{n+1} to t_n
        d = (x_high - gmm(x_high, t_high)) / t_high[:, None]
        x_euler = x_high + (t_low - t_high)[:, None] * d
        d_next = (x_euler - gmm(x_euler, t_low)) / t_low[:, None]
        x_low = x_high + (t_low - t_high)[:, None] * (d + d_next) / 2
    else:
        x_low = data + t_low[:, None] * z
    diff = restated_f(student_net, x_high, t_high) - restated_f(target_net, x_low, t_low)
    if kind == "l2":
        expected = diff.pow(2).mean(1).mean()
    else:
        c = 0.00054 * math.sqrt(gmm.dim)
        expected = ((diff.pow(2).sum(1) + c**2).sqrt() - c).mean()
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


def test_boundary_condition_and_initialisation(gmm):
    f = ConsistencyFunction(gmm, SIGMA_MIN)
    x = torch.randn(6, gmm.dim, dtype=torch.float64)
    torch.testing.assert_close(f(x, torch.full((6,), SIGMA_MIN, dtype=torch.float64)), x)  # f(x, sigma_min) = x
    sigma = torch.full((6,), 10.0, dtype=torch.float64)  # far above sigma_min: f is the denoiser it starts from
    torch.testing.assert_close(f(x, sigma), gmm(x, sigma), rtol=2e-3, atol=2e-3)


def test_gradients_reach_only_the_student(gmm):
    student_net = perturbed(gmm)
    target_net = copy.deepcopy(student_net)
    teacher = perturbed(gmm, 2)
    value = fd.consistency.loss(ConsistencyFunction(student_net, SIGMA_MIN), ConsistencyFunction(target_net, SIGMA_MIN),
                                ConsistencyFunction(teacher, SIGMA_MIN), gmm.sample(16, dtype=torch.float64),
                                sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student_net.net.parameters())
    assert all(p.grad is None for p in (*target_net.parameters(), *teacher.parameters()))


def one_step_error(model, gmm, noise):
    with torch.no_grad():
        one_step = model(noise, torch.full((len(noise),), SIGMA_MAX, dtype=noise.dtype))
    return (one_step - gmm.ode_solution(noise, SIGMA_MAX, SIGMA_MIN, steps=100)).norm(dim=1).mean().item()


def test_distillation_on_the_mixture_lowers_the_one_step_error(gmm):
    """CD from the exact denoiser as teacher, 200 Adam steps of a small MLP correction. Measured: one-step error
    against the exact ODE solution (sigma 20 -> sigma_min) 1.81 at the start (f = the teacher's D(x, 20), near
    the mixture's mean), 0.70 after."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    student_net = TinyDenoiser(gmm)
    target_net = copy.deepcopy(student_net).requires_grad_(False)
    student, target = ConsistencyFunction(student_net, SIGMA_MIN), ConsistencyFunction(target_net, SIGMA_MIN)
    noise = torch.randn(128, gmm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * SIGMA_MAX
    before = one_step_error(student, gmm, noise)
    optimizer = torch.optim.Adam(student_net.net.parameters(), 3e-3)
    for _ in range(200):
        data = gmm.sample(64, generator, torch.float64)
        value = fd.consistency.loss(student, target, gmm, data, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                                    generator=generator)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        with torch.no_grad():  # the paper's target EMA, mu = 0.95
            for p_target, p in zip(target_net.parameters(), student_net.parameters()):
                p_target.lerp_(p, 0.05)
    after = one_step_error(student, gmm, noise)
    assert after < 0.6 * before


@pytest.mark.parametrize("options, error, match", [
    ({"sigma_min": 0.0}, ValueError, "sigma_min must be > 0, got 0.0"),
    ({"sigma_max": 0.005}, ValueError, "sigma_max must be > 0.01, got 0.005"),
    ({"scales": 1}, ValueError, "scales must be an integer >= 2, got 1"),
    ({"distance": "lpips"}, ValueError, r"distance must be one of \('l2', 'pseudo_huber'\), got 'lpips'"),
    ({"huber_c": -1.0}, ValueError, "huber_c must be > 0, got -1.0"),
    ({"x_noise": torch.randn(8, 3)}, ValueError, r"x_noise must be a floating-point tensor of x_data's shape \(8, 4\)"),
    ({"generator": 3}, TypeError, r"generator must be a torch.Generator or None, got 3 \(int\)"),
])
def test_bad_arguments_are_named(gmm, options, error, match):
    f = ConsistencyFunction(gmm, SIGMA_MIN)
    arguments = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, **options}
    with pytest.raises(error, match=match):
        fd.consistency.loss(f, f, gmm, torch.randn(8, 4, dtype=torch.float64), **arguments)


def test_bad_models_and_data_are_named(gmm):
    f = ConsistencyFunction(gmm, SIGMA_MIN)
    with pytest.raises(TypeError, match="x_data must be a floating-point torch.Tensor"):
        fd.consistency.loss(f, f, gmm, torch.ones(8, 4, dtype=torch.long), sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    with pytest.raises(TypeError, match=r"teacher_denoiser must be callable as teacher_denoiser\(x, sigma\)"):
        fd.consistency.loss(f, f, "gmm", torch.randn(8, 4), sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    with pytest.raises(ValueError, match=r"student returned a tensor of shape \(8, 1\)"):
        fd.consistency.loss(lambda x, s: x[:, :1], f, gmm, torch.randn(8, 4, dtype=torch.float64),
                            sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    with pytest.raises(ValueError, match="sigma_min must be > 0, got -1.0"):
        ConsistencyFunction(gmm, -1.0)


@pytest.fixture(scope="module")
def shipped():
    return fd.zoo.digits_consistency()


def test_the_shipped_model_samples_at_1_2_4_steps(shipped):
    model, sigma_max, shape = shipped
    assert fd.zoo.train.WEIGHTS["consistency"].stat().st_size <= 5 * 2**20
    noise = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    for steps in (1, 2, 4):
        sigmas = shipped.sigmas(steps)
        assert len(sigmas) == steps + 1 and sigmas[0] == sigma_max and sigmas[-1] == 0
        with torch.no_grad():
            images = fd.sample_consistency(model, noise * sigma_max, sigmas, sigma_min=model.sigma_min,
                                           generator=torch.Generator().manual_seed(0), disable=True)
        assert images.shape == (16, *shape) and torch.isfinite(images).all()
    info = fd.files.read_any(fd.zoo.train.WEIGHTS["consistency"])[1]["info"]
    assert info["train_minutes"] <= 60 and info["teacher_calls"] > 0


def test_sampling_sigmas_and_their_bad_arguments(shipped):
    sigmas = shipped.sigmas(4, renoise_sigma=2.0)
    assert sigmas[1] == pytest.approx(2.0) and (sigmas[1:-1] > shipped.model.sigma_min).all()
    assert (sigmas[:-1] > sigmas[1:]).all()
    with pytest.raises(ValueError, match=r"renoise_sigma must be < sigma_max = 157.4.*got 200.0"):
        shipped.sigmas(2, renoise_sigma=200.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        shipped.sigmas(0)


def test_a_file_of_the_other_student_is_refused_with_its_loader_named():
    with pytest.raises(ValueError, match=r"phased-consistency-distilled digits U-Net file, not a consistency-distilled "
                                         r"digits U-Net file: load it with fd.zoo.digits_pcm\(path=path\)"):
        fd.zoo.digits_consistency(path=fd.zoo.train.WEIGHTS["pcm"])
