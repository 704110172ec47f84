"""fd.sdo: the one-step gradient against explicit Jacobian products and hand-written loops (float64, Gaussian
mixture), full backpropagation against autograd through the plain sampler, autograd memory at 20 steps, arguments."""
import math

import pytest
import torch
from torch import nn

import fused_diffusion as fd

SIGMA_MIN, SIGMA_MAX = 0.02, 20.0


@pytest.fixture(scope="module")
def gmm():
    return fd.GaussianMixture.random(3, 4, seed=0).double()


def start(batch: int = 3, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(batch, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * SIGMA_MAX
    return noise.requires_grad_()


def loss_weights(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))


def sigmas(steps: int) -> torch.Tensor:
    return fd.get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX).double()


@pytest.mark.parametrize("kept", [0, 3, 5])
def test_euler_gradient_is_the_one_step_term_of_the_jacobian_product(gmm, kept):
    """x_{j+1} = a_j x_j + b_j D(x_j), a_j = s_{j+1}/s_j, b_j = 1 - a_j: full backprop multiplies the Jacobians
    a_j I + b_j dD/dx; SDO keeps dD/dx at step `kept` and the constant-noise Jacobian I (D = x - s eps, eps held)
    elsewhere."""
    s = sigmas(6)
    x = start()
    w = loss_weights()
    (fd.sdo.sample(gmm, x, s, "euler", grad_step=kept) * w).sum().backward()

    trajectory = [x.detach()]
    for j in range(6):
        with torch.no_grad():
            trajectory.append(fd.sample_euler(gmm, trajectory[-1], s[j: j + 2], disable=True))
    for b in range(3):
        product = torch.eye(4, dtype=torch.float64)
        for j in range(6):
            a = (s[j + 1] / s[j]).item()
            if j == kept:
                point = trajectory[j][b: b + 1]
                jacobian = torch.autograd.functional.jacobian(
                    lambda y: gmm(y, s[j].expand(1).double()), point).reshape(4, 4)
            else:
                jacobian = torch.eye(4, dtype=torch.float64)
            product = (a * torch.eye(4, dtype=torch.float64) + (1 - a) * jacobian) @ product
        torch.testing.assert_close(x.grad[b], product.T @ w[b], rtol=1e-10, atol=1e-12)


def dpmpp_2m_by_hand(model, x, s, kept, **extra):
    """k-diffusion's sample_dpmpp_2m with every step but `kept` holding the noise estimate constant."""
    old = None
    for i in range(len(s) - 1):
        d = model(x, s[i].expand(len(x)), **extra)
        if kept != "all" and i != kept:
            d = x + (d - x).detach()
        t, t_next = -s[i].log(), -s[i + 1].log()
        h = t_next - t
        if old is None or s[i + 1] == 0:
            x = (s[i + 1] / s[i]) * x - torch.expm1(-h) * d
        else:
            r = (t - (-s[i - 1].log())) / h
            x = (s[i + 1] / s[i]) * x - torch.expm1(-h) * ((1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old)
        old = d
    return x


def heun_by_hand(model, x, s, kept, **extra):
    def denoise(y, sigma):
        d = model(y, sigma.expand(len(y)), **extra)
        return d if kept in ("all", i) else y + (d - y).detach()

    for i in range(len(s) - 1):
        d = (x - denoise(x, s[i])) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoise(x_2, s[i + 1])) / s[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


class ScaledMixture(nn.Module):
    """The mixture's denoiser with a learnable output scale and a conditioning shift: gradients reach a parameter
    and an extra argument only through the kept step's calls."""

    def __init__(self, gmm):
        super().__init__()
        self.gmm = gmm
        self.scale = nn.Parameter(torch.tensor(1.1, dtype=torch.float64))

    def forward(self, x, sigma, shift):
        return self.scale * self.gmm(x - shift, sigma) + shift


@pytest.mark.parametrize("solver, by_hand", [("dpmpp_2m", dpmpp_2m_by_hand), ("heun", heun_by_hand)])
@pytest.mark.parametrize("kept", [0, 4, 7])
def test_gradients_equal_a_hand_written_loop(gmm, solver, by_hand, kept):
    s = sigmas(8)
    w = loss_weights()
    grads = []
    for run in ("library", "by hand"):
        model = ScaledMixture(gmm)
        x = start()
        shift = torch.full((3, 4), 0.3, dtype=torch.float64, requires_grad=True)
        if run == "library":
            out = fd.sdo.sample(model, x, s, solver, grad_step=kept, extra_args={"shift": shift})
        else:
            out = by_hand(model, x, s, kept, shift=shift)
        (out * w).sum().backward()
        grads.append((out.detach(), x.grad, shift.grad, model.scale.grad))
    for library, by_hand_value in zip(*grads):
        torch.testing.assert_close(library, by_hand_value, rtol=1e-10, atol=1e-12)


def euler_by_hand(model, x, s, kept, **extra):
    for i in range(len(s) - 1):
        d = model(x, s[i].expand(len(x)), **extra)
        if kept != "all" and i != kept:
            d = x + (d - x).detach()
        x = x + (x - d) / s[i] * (s[i + 1] - s[i])
    return x


@pytest.mark.parametrize("solver, by_hand", [("euler", euler_by_hand), ("dpmpp_2m", dpmpp_2m_by_hand),
                                             ("heun", heun_by_hand)])
def test_all_steps_is_full_backpropagation(gmm, solver, by_hand):
    s = sigmas(7)
    w = loss_weights()
    x = start()
    (fd.sdo.sample(gmm, x, s, solver, grad_step="all") * w).sum().backward()
    reference = start()
    (by_hand(gmm, reference, s, kept="all") * w).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-10, atol=1e-12)


def test_the_sample_itself_is_the_plain_samplers(gmm):
    s = sigmas(9)
    x = start()
    out = fd.sdo.sample(gmm, x, s, "dpmpp_2m", grad_step=4)
    assert out.requires_grad
    assert torch.equal(out.detach(), fd.sample_dpmpp_2m(gmm, x.detach(), s, disable=True))


def test_eps_and_velocity_solvers_keep_their_linear_path():
    """DDIM (eps) and shortcut (velocity) outputs are held constant as they are: the gradient of a sample with the
    model detached everywhere but one step is the product of the x-coefficients plus that step's term."""
    calls = []

    def velocity(x, t, d):
        calls.append(torch.is_grad_enabled())
        return torch.tanh(x) * (1 - t.view(-1, 1))

    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out = fd.sdo.sample(velocity, x, fd.get_flow_times(4).double(), "shortcut", grad_step=2)
    out.sum().backward()
    assert calls == [False, False, True, False]
    y = x.detach().clone()
    with torch.no_grad():
        for i in range(2):
            y = y + 0.25 * velocity(y, torch.full((2,), i / 4, dtype=torch.float64), None)
    calls.clear()
    y.requires_grad_()
    z = y + 0.25 * velocity(y, torch.full((2,), 0.5, dtype=torch.float64), None)
    z = z + 0.25 * velocity(z, torch.full((2,), 0.75, dtype=torch.float64), None).detach()
    (grad,) = torch.autograd.grad(z.sum(), y)
    torch.testing.assert_close(x.grad, grad, rtol=1e-12, atol=1e-12)


class Wide(nn.Module):
    """A denoiser with sizeable activations per call (a 2-hidden-layer MLP of width 512 on 64 dims)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(65, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(), nn.Linear(512, 64))

    def forward(self, x, sigma):
        return x / (1 + sigma[:, None] ** 2) + self.net(torch.cat([x, sigma[:, None].log()], 1))


def saved_bytes(function) -> int:
    """Bytes autograd saves for backward while `function` runs (what backpropagation must keep in memory)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return total


def test_autograd_memory_at_20_steps_is_5x_lower():
    model = Wide()
    s = fd.get_sigmas_karras(20, 0.01, 10.0)
    x = (torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 10).requires_grad_()
    one_step = saved_bytes(lambda: fd.sdo.sample(model, x, s, "dpmpp_2m", grad_step=10))
    full = saved_bytes(lambda: fd.sdo.sample(model, x, s, "dpmpp_2m", grad_step="all"))
    assert full >= 5 * one_step, (full, one_step)  # measured 20x: one model call's activations against 20


def test_random_step_comes_from_the_step_generator():
    n = 10
    drawn = [fd.sdo.pick_grad_step("random", n, torch.Generator().manual_seed(seed)) for seed in range(200)]
    assert sorted(set(drawn)) == list(range(n))
    assert fd.sdo.pick_grad_step("random", n, torch.Generator().manual_seed(3)) == drawn[3]
    assert fd.sdo.pick_grad_step(-1, n) == n - 1 and fd.sdo.pick_grad_step("all", n) is None


@pytest.mark.parametrize("grad_step, error, match", [
    (10, ValueError, r"grad_step must be a step index in \[-10, 9\] \(the schedule has 10 steps\), got 10"),
    (-11, ValueError, "grad_step must be an integer >= -10, got -11"),
    ("first", ValueError, "grad_step must be a step index, 'random' or 'all', got 'first'"),
    (2.0, TypeError, "grad_step must be an integer"),
    (True, TypeError, "grad_step must be an integer"),
])
def test_bad_grad_steps_are_named(gmm, grad_step, error, match):
    with pytest.raises(error, match=match):
        fd.sdo.sample(gmm, start(), sigmas(10), "euler", grad_step=grad_step)


def test_bad_step_generator_is_named(gmm):
    with pytest.raises(TypeError, match="step_generator must be a torch.Generator or None, got 3"):
        fd.sdo.sample(gmm, start(), sigmas(4), "euler", step_generator=3)


def test_an_unknown_solver_is_named(gmm):
    with pytest.raises(ValueError, match="unknown solver 'eulr'"):
        fd.sdo.sample(gmm, start(), sigmas(4), "eulr")


def test_stochastic_solvers_give_finite_gradients(gmm):
    x = start()
    out = fd.sdo.sample(gmm, x, sigmas(8), "dpmpp_2m_sde", generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not math.isnan(out.sum().item())


@pytest.mark.gpu
def test_cuda_gradients_equal_cpu_ones():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gradients = {}
    for device in ("cpu", "cuda"):
        model = ScaledMixture(fd.GaussianMixture.random(3, 4, seed=0, spread=1.0).double()).to(device)
        x, shift = start().detach().to(device).requires_grad_(), torch.full((3, 4), 0.1, dtype=torch.float64,
                                                                            device=device, requires_grad=True)
        out = fd.sdo.sample(model, x, sigmas(8).to(device), "dpmpp_2m", grad_step=3, extra_args={"shift": shift})
        (out * loss_weights().to(device)).sum().backward()
        gradients[device] = [t.cpu() for t in (x.grad, shift.grad, model.scale.grad)]
    for cpu, cuda in zip(gradients["cpu"], gradients["cuda"]):
        torch.testing.assert_close(cuda, cpu, rtol=1e-10, atol=1e-12)
