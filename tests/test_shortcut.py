"""fd.shortcut: the shortcut objective's targets against a re-statement of the paper's eq. 5 and reference code, a
2-D toy where 1-step shortcut sampling beats 1-step flow matching, ShortcutUNet and its bad input."""
import math

import pytest
import torch
from torch import nn

import fused_diffusion as fd
from fused_diffusion.shortcut import LEVELS, ShortcutUNet, step_index


class ToyVelocity(nn.Module):
    """v(x, t, d) for 2-D points: an MLP on x and sinusoidal features of t, plus an embedding of log2(1/d)."""

    def __init__(self, width: int = 128, conditioned: bool = True):
        super().__init__()
        self.conditioned = conditioned
        self.step = nn.Embedding(LEVELS + 1, width)
        self.inp = nn.Linear(2 + 16, width)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))

    def forward(self, x, t, d):
        t = torch.as_tensor(t, dtype=x.dtype).expand(len(x))
        scales = 2.0 ** torch.arange(8, dtype=x.dtype)
        features = torch.cat([torch.sin(t[:, None] * scales), torch.cos(t[:, None] * scales)], 1)
        k = step_index(d).expand(len(x)) if self.conditioned else torch.full((len(x),), LEVELS)
        return self.net(self.inp(torch.cat([x, features], 1)) + self.step(k))


MODES = 1.5 * torch.stack([torch.tensor([math.cos(a), math.sin(a)]) for a in torch.arange(8) * (2 * math.pi / 8)])


def ring(n: int, generator: torch.Generator) -> torch.Tensor:
    """8 tight clusters on a circle of radius 1.5."""
    return MODES[torch.randint(8, (n,), generator=generator)] + 0.05 * torch.randn(n, 2, generator=generator)


def analytic_velocity(x, t, d):
    """A deterministic nonlinear v(x, t, d) whose output depends on all three inputs."""
    t = torch.as_tensor(t, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    d = torch.as_tensor(d, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(3 * x) * (1 + t) - 2 * x * d.log2() / 7 + t * d


def test_targets_restate_the_paper(float64=torch.float64):
    generator = torch.Generator().manual_seed(3)
    data = torch.randn(64, 3, 2, 2, dtype=float64, generator=generator)
    noise = torch.randn(64, 3, 2, 2, dtype=float64, generator=generator)
    out = fd.shortcut.targets(analytic_velocity, data, noise, generator=generator)
    assert out.bootstrap == 16  # 1/4 of the batch
    for row in range(64):
        t, d = out.t[row].item(), out.d[row].item()
        x_t = (1 - t) * noise[row] + t * data[row]  # t = 0 noise, t = 1 data
        torch.testing.assert_close(out.x_t[row], x_t.float() if out.x_t.dtype == torch.float32 else x_t)
        k = round(-math.log2(d))
        assert d == 2.0**-k and (t * 2**k) == int(t * 2**k) and 0 <= t < 1  # t on the grid of the row's step
        if row < out.bootstrap:
            assert d == 2.0 ** -(row % LEVELS)  # 2d from 1 down to 1/64, cycled; d from 1/2 to 1/128
            half = d / 2
            v1 = analytic_velocity(x_t[None], torch.tensor([t]), torch.tensor([half]))[0]
            x_mid = (x_t + half * v1).clamp(-4, 4)
            v2 = analytic_velocity(x_mid[None], torch.tensor([t + half]), torch.tensor([half]))[0]
            expected = ((v1 + v2) / 2).clamp(-4, 4)
        else:
            assert d == 2.0**-LEVELS  # flow matching at the finest step, the paper's "d = 0" token
            expected = data[row] - noise[row]
        torch.testing.assert_close(out.velocity[row], expected, rtol=1e-12, atol=1e-12)


def test_target_times_cover_their_grids():
    generator = torch.Generator().manual_seed(0)
    out = fd.shortcut.targets(analytic_velocity, torch.randn(4096, 2), generator=generator)
    flow_t = out.t[out.bootstrap:]
    assert len(flow_t.unique()) == 128 and flow_t.min() == 0 and flow_t.max() == 127 / 128
    boot_d = out.d[: out.bootstrap]
    assert sorted(boot_d.unique().tolist()) == [2.0**-k for k in range(LEVELS - 1, -1, -1)]
    one_step = out.t[: out.bootstrap][boot_d == 1]
    assert (one_step == 0).all()  # a full step from noise to data starts at t = 0


def test_loss_is_the_mean_squared_error_against_the_targets():
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(40, 2, dtype=torch.float64)
    value = fd.shortcut.loss(analytic_velocity, data, generator=generator)
    generator.manual_seed(1)
    out = fd.shortcut.targets(analytic_velocity, data, generator=generator)
    expected = (analytic_velocity(out.x_t, out.t, out.d) - out.velocity).pow(2).mean()
    torch.testing.assert_close(value, expected)


def test_flow_matching_only_when_the_fraction_is_zero():
    out = fd.shortcut.targets(analytic_velocity, torch.randn(32, 2), bootstrap_fraction=0,
                              generator=torch.Generator().manual_seed(0))
    assert out.bootstrap == 0 and (out.d == 2.0**-LEVELS).all()


def train_toy(bootstrap_fraction: float, iterations: int = 500, seed: int = 0) -> ToyVelocity:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ToyVelocity(conditioned=bootstrap_fraction > 0)
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(iterations):
        loss = fd.shortcut.loss(model, ring(256, generator), generator=generator, bootstrap_fraction=bootstrap_fraction)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def distance_to_modes(model: nn.Module, steps: int) -> float:
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        samples = fd.sample_shortcut(model, noise, steps, disable=True)
    return torch.cdist(samples, MODES).min(dim=1).values.mean().item()


def test_one_shortcut_step_beats_one_flow_matching_step_on_a_toy():
    """Same network, data and iterations; measured (500 iterations, seed 0): mean distance of 1-step samples to
    the nearest of the 8 modes 0.41 for the shortcut model, 1.36 for flow matching (its 1 step lands on the data
    mean, 1.5 from every mode); at 128 steps both about 0.31."""
    shortcut, flow = train_toy(0.25), train_toy(0.0)
    one_step_shortcut, one_step_flow = distance_to_modes(shortcut, 1), distance_to_modes(flow, 1)
    assert one_step_shortcut < 0.5 * one_step_flow
    assert one_step_shortcut < 2 * distance_to_modes(shortcut, 128)


def tiny_unet(num_class_embeds: int | None = LEVELS + 1):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, num_class_embeds=num_class_embeds)


def test_shortcut_unet_gives_the_step_size_as_its_class_label():
    unet = tiny_unet()
    model = ShortcutUNet(unet)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 0.25, 0.5])
    with torch.no_grad():
        out = model(x, t, torch.tensor([1.0, 0.25, 1 / 128]))
        expected = unet(x, t * 1000, class_labels=torch.tensor([0, 2, 7])).sample
    torch.testing.assert_close(out, expected)
    with torch.no_grad():  # the flow-matching baseline ignores d
        baseline = ShortcutUNet(unet, step_conditioned=False)(x, t, torch.tensor([1.0, 0.25, 1 / 128]))
    torch.testing.assert_close(baseline, unet(x, t * 1000, class_labels=torch.full((3,), 7)).sample)


def test_shortcut_unet_samples_and_trains():
    model = ShortcutUNet(tiny_unet())
    loss = fd.shortcut.loss(model, torch.rand(8, 1, 8, 8) * 2 - 1, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.unet.class_embedding.weight.grad.abs().sum() > 0  # the step embedding learns
    with torch.no_grad():
        x = fd.sample_shortcut(model, torch.randn(2, 1, 8, 8), 4, disable=True)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize("d", [0.3, 3.0, 0.0, 2.0**-8, float("nan"), -0.5])
def test_step_sizes_must_be_trained_powers_of_two(d):
    with pytest.raises(ValueError, match=rf"d must be a power of two from 1 down to 1/128 .*got {d}"):
        step_index(torch.tensor([0.5, d]))


def test_a_model_without_a_step_input_is_named():
    def velocity(x, t):
        return x

    with pytest.raises(TypeError, match=r"model must be callable as model\(x, t, d\) -> velocity \(it must take the step size d.*velocity\(x, t\) "
                                        r"cannot"):
        fd.shortcut.loss(velocity, torch.randn(8, 2))


def test_a_unet_without_a_step_embedding_is_refused():
    with pytest.raises(ValueError, match=r"num_class_embeds >= 8 .*got num_class_embeds=None"):
        ShortcutUNet(tiny_unet(num_class_embeds=None))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bootstrap_fraction": 1.0}, ValueError, "bootstrap_fraction must be < 1"),
    ({"bootstrap_fraction": -0.1}, ValueError, "bootstrap_fraction must be >= 0"),
    ({"levels": 0}, ValueError, "levels must be an integer >= 1"),
    ({"x_noise": torch.randn(8, 3)}, ValueError, r"x_noise must be a floating-point tensor of x_data's shape \(8, 2\)"),
])
def test_loss_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        fd.shortcut.loss(analytic_velocity, torch.randn(8, 2), **kwargs)


def test_integer_data_is_refused():
    with pytest.raises(TypeError, match="x_data must be a floating-point torch.Tensor"):
        fd.shortcut.loss(analytic_velocity, torch.ones(8, 2, dtype=torch.long))


@pytest.mark.gpu
def test_cuda_graph_equals_eager():
    """A ShortcutUNet inside fd.Sampler's graph: the step size reaches its embedding without a host sync."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = ShortcutUNet(tiny_unet()).cuda().eval()
    noise = torch.randn(4, 1, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    for steps in (1, 4):
        times = fd.get_flow_times(steps, device="cuda")
        sampler = fd.Sampler(model, "shortcut", times)
        with torch.no_grad():
            expected = fd.sample_shortcut(model, noise, steps, disable=True)
            torch.testing.assert_close(sampler(noise), expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(sampler(noise * 0.5), fd.sample_shortcut(model, noise * 0.5, steps, disable=True),
                                       rtol=1e-4, atol=1e-4)
        assert sampler.captures == 1
