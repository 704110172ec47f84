"""fd.pcm and the phased sampler: the loss against a restatement of the PCM code's objective, gradients only into the
student, the sampler against a hand-written phased loop and against diffusers' TCDScheduler at gamma 0, the phase
grid, bad arguments, and the shipped digits PCM."""
import copy

import pytest
import torch
from torch import nn

import fused_diffusion as fd
from fused_diffusion.solvers.pcm_sampler import PCM, ddim_grid, pcm_timesteps, phase_starts

ALPHAS = fd.ddpm_alphas_cumprod(1000, 1e-4, 0.02, "linear").double()


class TinyEps(nn.Module):
    """eps(x, t) for [B, 4] data: an MLP of x and t / 1000."""

    def __init__(self, seed: int = 0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(5, 32), nn.SiLU(), nn.Linear(32, 4)).to(dtype)

    def forward(self, x, t):
        t = torch.as_tensor(t).to(x.dtype).expand(len(x))
        return self.net(torch.cat([x, t[:, None] / 1000], 1))


def test_the_phase_grid_is_the_codes():
    assert ddim_grid(1000).tolist() == list(range(19, 1000, 20))
    assert phase_starts(4).tolist() == [0, 12, 25, 37]  # floor(linspace(0, 50, 4, endpoint=False))
    assert pcm_timesteps(4, 4).tolist() == [999, 739, 499, 239]
    assert pcm_timesteps(4, 8).tolist() == [999, 859, 739, 619, 499, 359, 239, 119]
    assert pcm_timesteps(4, 2).tolist() == [999, 499] and pcm_timesteps(4, 1).tolist() == [999]


@pytest.mark.parametrize("kind", ["l2", "huber"])
def test_loss_restates_the_code(kind):
    student, target, teacher = TinyEps(0), TinyEps(1), TinyEps(2)
    data = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    value = fd.pcm.loss(student, target, teacher, data, ALPHAS, phases=4, distance=kind,
                        generator=torch.Generator().manual_seed(3))

    generator = torch.Generator().manual_seed(3)
    index = torch.randint(50, (64,), generator=generator)
    z = torch.randn(data.shape, generator=generator, dtype=torch.float64)
    losses = []
    for row in range(64):
        i = int(index[row])
        t = 20 * (i + 1) - 1
        t_prev = max(t - 20, 0)  # the code's start_timesteps - topk, clamped at 0
        first = max(e for e in (0, 12, 25, 37) if e <= i)  # the phase's first index; its edge is tau_{first - 1}
        t_edge = 20 * first - 1 if first > 0 else 0
        a, a_prev, a_edge = ALPHAS[t], ALPHAS[t_prev], ALPHAS[t_edge]
        x_t = a.sqrt() * data[row] + (1 - a).sqrt() * z[row]

        def to(a_s, x, a_from, eps):
            return a_s.sqrt() * (x - (1 - a_from).sqrt() * eps) / a_from.sqrt() + (1 - a_s).sqrt() * eps

        pred = to(a_edge, x_t, a, student(x_t[None], torch.tensor([t]))[0])
        x_prev = to(a_prev, x_t, a, teacher(x_t[None], torch.tensor([t]))[0])
        goal = x_prev if i == first else to(a_edge, x_prev, a_prev, target(x_prev[None], torch.tensor([t_prev]))[0])
        diff = pred - goal
        losses.append(diff.pow(2) if kind == "l2" else (diff.pow(2) + 0.001**2).sqrt() - 0.001)
    torch.testing.assert_close(value, torch.stack(losses).mean(), rtol=1e-10, atol=1e-14)


def test_gradients_reach_only_the_student():
    student, teacher = TinyEps(0), TinyEps(2)
    target = copy.deepcopy(student)
    fd.pcm.loss(student, target, teacher, torch.randn(16, 4, dtype=torch.float64), ALPHAS, phases=2).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in (*target.parameters(), *teacher.parameters()))


@pytest.mark.parametrize("phases, steps", [(4, 4), (4, 8), (4, 2), (4, 1), (3, 6)])
def test_sampler_equals_a_hand_written_phased_loop(phases, steps):
    model = TinyEps(0)
    noise = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = fd.sample_pcm(model, noise, ALPHAS, phases, steps, disable=True)
        timesteps = pcm_timesteps(phases, steps).tolist()
        x = noise
        for t, s in zip(timesteps, timesteps[1:] + [0]):  # each start maps to the next start (an edge or a cut)
            eps = model(x, torch.full((8,), t))
            x0 = (x - (1 - ALPHAS[t]).sqrt() * eps) / ALPHAS[t].sqrt()
            x = ALPHAS[s].sqrt() * x0 + (1 - ALPHAS[s]).sqrt() * eps
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def tcd_loop(model, noise, timesteps=None, steps=None):
    from diffusers import TCDScheduler

    scheduler = TCDScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(steps)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(len(x))), t, x, eta=0.0).prev_sample
    return x, scheduler.timesteps.tolist()


@pytest.mark.parametrize("phases, steps", [(1, 1), (2, 2), (5, 5), (4, 4), (4, 8)])
def test_sample_pcm_equals_tcd_at_gamma_zero(phases, steps):
    """TCDScheduler's own timesteps are the phase edges for 1, 2, 5 phases (its skipping over 50 divides evenly);
    for 4 phases they are not (999, 759, 499, 259), so it is given the phased timesteps."""
    model = TinyEps(0, torch.float32)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = fd.sample_pcm(model, noise, ALPHAS.float(), phases, steps, disable=True)
        if phases in (1, 2, 5):
            expected, used = tcd_loop(model, noise, steps=steps)
            assert used == pcm_timesteps(phases, steps).tolist()
        else:
            expected, _ = tcd_loop(model, noise, timesteps=pcm_timesteps(phases, steps).tolist())
            assert tcd_loop(model, noise, steps=4)[1] == [999, 759, 499, 259]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_solver_facts():
    solver = fd.solvers.get_solver("pcm", alphas_cumprod=ALPHAS)
    assert isinstance(solver, PCM) and not solver.stochastic and solver.calls(8) == 8


@pytest.mark.parametrize("call, error, match", [
    (lambda: pcm_timesteps(4, 3), ValueError, r"steps must be a multiple of phases \(4\) or divide it, got 3"),
    (lambda: pcm_timesteps(0, 4), ValueError, "phases must be an integer >= 1, got 0"),
    (lambda: pcm_timesteps(51, 51), ValueError, "phases must be at most ddim_steps = 50 .*got 51"),
    (lambda: pcm_timesteps(25, 75), ValueError, "steps = 75 cuts a phase of 25 over 50 DDIM timesteps"),
    (lambda: fd.pcm.loss(TinyEps(), TinyEps(), TinyEps(), torch.randn(4, 4, dtype=torch.float64), ALPHAS, phases=4,
                         distance="l1"), ValueError, r"distance must be one of \('l2', 'huber'\), got 'l1'"),
    (lambda: fd.pcm.loss(TinyEps(), TinyEps(), "teacher", torch.randn(4, 4), ALPHAS, phases=4), TypeError,
     r"teacher must be callable as teacher\(x, t\) -> eps"),
    (lambda: fd.pcm.loss(TinyEps(), TinyEps(), TinyEps(), torch.randn(4, 4), ALPHAS, phases=4, huber_c=0.0),
     ValueError, "huber_c must be > 0, got 0.0"),
    (lambda: fd.pcm.loss(lambda x, t: x[:, :1], TinyEps(), TinyEps(), torch.randn(4, 4, dtype=torch.float64), ALPHAS,
                         phases=4), ValueError, r"student returned a tensor of shape \(4, 1\)"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_shipped_model_samples():
    unet, alphas_cumprod, phases, shape = fd.zoo.digits_pcm()
    assert phases == 4 and fd.zoo.train.WEIGHTS["pcm"].stat().st_size <= 5 * 2**20
    noise = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    for steps in (1, 2, 4, 8):
        with torch.no_grad():
            images = fd.sample_pcm(unet, noise, alphas_cumprod, phases, steps, disable=True)
        assert images.shape == (16, *shape) and torch.isfinite(images).all()
    info = fd.files.read_any(fd.zoo.train.WEIGHTS["pcm"])[1]["info"]
    assert info["train_minutes"] <= 60 and info["teacher_calls"] > 0
