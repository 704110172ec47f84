"""fd.amed: the predictor network (shapes, ranges, gradients, the bottleneck hook), AMED with a constant predictor
against Algorithm 1 written here, and distillation on the Gaussian mixture (it must lower the student's error
against the teacher by a measured margin)."""
import math

import pytest
import torch

import fused_diffusion as fd
from fused_diffusion.amed.distill import refine, teacher_points
from fused_diffusion import solvers

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


@pytest.fixture(scope="module")
def gmm():
    return fd.GaussianMixture.random(4, 8, seed=0, spread=2.0)


def constant_scales(scale_dir: float, scale_time: float) -> tuple[float, float]:
    """What constant_predictor's scale heads output: inside their ranges 1 +- s, 1.0 when off."""
    return 1 + 0.6 * scale_dir, 1 - 0.5 * scale_time


def constant_predictor(r: float, scale_dir: float = 0.0, scale_time: float = 0.0, bottleneck_dim: int = 0):
    """A real Predictor whose heads ignore their inputs: zero weights, bias = logit of the wanted output."""
    predictor = fd.amed.Predictor(bottleneck_dim, scale_dir=scale_dir, scale_time=scale_time).double()
    with torch.no_grad():
        dir_value, time_value = constant_scales(scale_dir, scale_time)
        for head, value, s in ((predictor.head_r, r, None), (predictor.head_scale_dir, dir_value, scale_dir),
                               (predictor.head_scale_time, time_value, scale_time)):
            if head is None:
                continue
            p = value if s is None else (value - (1 - s)) / (2 * s)  # the head's sigmoid output for `value`
            head.weight.zero_()
            head.bias.fill_(math.log(p / (1 - p)))
    return predictor


def algorithm_1(model, x, sigmas, r, scale_dir, scale_time, afs):
    """AMED-Solver, Zhou et al. 2024 Alg. 1 (t = sigma), with the analytic first step of sec. 3.3: per step
    t_mid = t_{n+1}^r t_n^(1-r); y = x + (t_mid - t_n) d(x, t_n); x <- x + c (t_{n+1} - t_n) d(y, s t_mid) with the
    direction's denominator t_mid (the AMED code's), c = scale_dir, s = scale_time."""
    ones = x.new_ones(len(x))
    for i in range(len(sigmas) - 1):
        t, t_next = sigmas[i], sigmas[i + 1]
        d = x / (1 + t**2).sqrt() if afs and i == 0 else (x - model(x, t * ones)) / t
        t_mid = t_next**r * t ** (1 - r)
        y = x + (t_mid - t) * d
        x = x + scale_dir * (t_next - t) * (y - model(y, scale_time * t_mid * ones)) / t_mid
    return x


@pytest.mark.parametrize("afs", [True, False])
@pytest.mark.parametrize("scales", [(0.0, 0.0), (0.05, 0.2)], ids=["r_only", "with_scales"])
def test_constant_predictor_equals_algorithm_1(gmm, afs, scales):
    scale_dir, scale_time = scales
    predictor = constant_predictor(0.35, scale_dir, scale_time)
    sigmas = fd.amed.schedule(7 if afs else 6, SIGMA_MIN, SIGMA_MAX, afs=afs).double()
    noise = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX
    got = fd.sample_amed(gmm, noise, sigmas, predictor=predictor, afs=afs, disable=True)
    expected = algorithm_1(gmm, noise, sigmas, 0.35, *constant_scales(scale_dir, scale_time), afs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_predictor_shapes_and_ranges():
    predictor = fd.amed.Predictor(0, scale_dir=0.01, scale_time=0.2)
    sigma = torch.tensor([80.0, 3.0, 0.5])
    r, scale_dir, scale_time = predictor(torch.zeros(3, 2), sigma, sigma / 4, False)
    assert r.shape == scale_dir.shape == scale_time.shape == (3,)
    assert ((r > 0) & (r < 1)).all()
    assert ((scale_dir > 0.99) & (scale_dir < 1.01)).all() and ((scale_time > 0.8) & (scale_time < 1.2)).all()
    assert fd.amed.Predictor(0)(torch.zeros(3, 2), sigma, sigma / 4, False)[1:] == (1.0, 1.0)
    # the time embedding sees each sample's own times
    assert r[0] != r[1]


def test_predictor_gradients_reach_every_weight_through_an_amed_step(gmm):
    """One student step under autograd: the loss reaches every predictor weight through the model's call at the
    predicted midpoint, and d loss / d bias of the r head equals a finite difference."""
    predictor = constant_predictor(0.4, scale_dir=0.05)
    with torch.no_grad():  # non-trivial weights everywhere
        predictor.head_r.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    sigmas = fd.amed.schedule(5, SIGMA_MIN, SIGMA_MAX).double()
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * sigmas[1]
    target = torch.zeros_like(x)
    solver = solvers.AMED(predictor, afs=True)
    plan = solvers.Plan(solver, sigmas)

    def loss():
        run = solvers.Run(plan, gmm, x)
        return (solver.step(run, 1, x) - target).square().sum()

    value = loss()
    value.backward()
    grads = {name: p.grad for name, p in predictor.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["head_r.bias"].abs() > 0 and grads["head_scale_dir.bias"].abs() > 0
    assert grads["time_layer.weight"].abs().sum() > 0
    eps = 1e-6
    with torch.no_grad():
        predictor.head_r.bias += eps
        up = loss()
        predictor.head_r.bias -= 2 * eps
        down = loss()
    assert grads["head_r.bias"].item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-5)


def test_unet_bottleneck_hook():
    from unet_models import build

    unet, denoiser, extra, shape = build("plain")
    dim = fd.amed.bottleneck_dim(denoiser, (2, *shape), torch.tensor([1.0]))
    assert dim == 4 * 4  # 16x16 input, two downsamplings
    predictor = fd.amed.Predictor(dim)
    sigma = torch.full((2,), 5.0)
    x = torch.randn(2, *shape)
    with pytest.raises(RuntimeError, match="no model is attached"):
        predictor(x, sigma, sigma / 2, False)
    predictor.attach(denoiser)
    denoiser(x, sigma)
    r1 = predictor(x, sigma, sigma / 2, False)[0]
    with pytest.raises(RuntimeError, match="mid block did not run"):  # each feature is read once
        predictor(x, sigma, sigma / 2, False)
    denoiser(torch.cat([x, x * 0]), torch.cat([sigma, sigma]))  # a guided batch: the conditional half is last
    r2 = predictor(x, sigma, sigma / 2, False)[0]
    assert not torch.equal(r1, r2)
    denoiser(x * 0, sigma)
    torch.testing.assert_close(predictor(x, sigma, sigma / 2, False)[0], r2)
    afs = predictor(x, sigma, sigma / 2, True)[0]  # AFS: zero bottleneck, no call needed
    assert afs.shape == (2,)
    predictor.release()
    assert not unet.mid_block._forward_hooks
    with pytest.raises(ValueError, match="no module with a `mid_block`"):
        predictor.attach(lambda x, sigma: x)


def test_unet_predictor_samples_and_recaptures_nothing_on_cpu():
    """A U-Net predictor inside sample_amed and fd.Sampler (eager on CPU) gives the same images."""
    from unet_models import build

    _, denoiser, extra, shape = build("plain")
    sigmas = fd.amed.schedule(5, 0.01, 20.0)
    predictor = fd.amed.Predictor(16).attach(denoiser)
    noise = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    eager = fd.sample_amed(denoiser, noise, sigmas, predictor=predictor, disable=True)
    sampler = fd.Sampler(denoiser, "amed", sigmas, predictor=predictor)
    torch.testing.assert_close(sampler(noise), eager)


def test_refine_matches_the_finer_polynomial_schedule():
    coarse = fd.get_sigmas_polynomial(4, SIGMA_MIN, SIGMA_MAX)[:-1].double()
    fine = fd.get_sigmas_polynomial(10, SIGMA_MIN, SIGMA_MAX)[:-1].double()
    torch.testing.assert_close(refine(coarse, 2), fine, rtol=1e-6, atol=0)
    assert torch.equal(refine(coarse, 0), coarse)


def test_schedule_costs_the_asked_calls(gmm):
    for calls, afs in ((3, True), (5, True), (4, False), (8, False)):
        sigmas = fd.amed.schedule(calls, SIGMA_MIN, SIGMA_MAX, afs=afs)
        assert sigmas[-1] == pytest.approx(SIGMA_MIN) and sigmas[0] == pytest.approx(SIGMA_MAX)
        seen = []
        counted = lambda x, sigma: seen.append(1) or gmm(x, sigma)  # noqa: E731
        predictor = constant_predictor(0.5).float()
        predictor.sigmas, predictor.afs = sigmas, afs
        predictor.sample(counted, torch.randn(2, 8) * SIGMA_MAX)
        assert len(seen) == calls == predictor.calls
    with pytest.raises(ValueError, match="afs=False"):
        fd.amed.schedule(4, SIGMA_MIN, SIGMA_MAX, afs=True)
    with pytest.raises(ValueError, match="kind"):
        fd.amed.schedule(5, SIGMA_MIN, SIGMA_MAX, kind="cosine")


def student_error(gmm, predictor, sigmas, noise, targets):
    x = fd.sample_amed(gmm, noise, sigmas, predictor=predictor, disable=True)
    return ((x - targets[-1]).norm(dim=1).mean() / targets[-1].norm(dim=1).mean()).item()


def test_distillation_lowers_the_students_error_against_its_teacher(gmm, tmp_path):
    """Measured: r = 1/2 ends 1.01 (relative) from the Heun teacher's endpoint on held-out noise, the distilled
    time-only predictor 0.27 (3.8x closer, 15 batches of 64); the bound asks for 3x."""
    sigmas = fd.amed.schedule(5, SIGMA_MIN, SIGMA_MAX)
    predictor = fd.amed.distill(gmm, sigmas, (8,), trajectories=64 * 15, batch=64, seed=0, progress=False)
    noise = torch.randn(512, 8, generator=torch.Generator().manual_seed(123)) * SIGMA_MAX
    teacher = solvers.Plan(solvers.get_solver("heun"), refine(sigmas, 1).float())
    targets = teacher_points(teacher, gmm, noise, 1, None)
    baseline = student_error(gmm, None, sigmas, noise, targets)
    learned = student_error(gmm, predictor, sigmas, noise, targets)
    print(f"student error against the teacher: r = 1/2 {baseline:.3f}, distilled {learned:.3f}")
    assert learned < baseline / 3
    assert predictor.info["loss_last"] < predictor.info["loss_first"] / 3
    predictor.save(tmp_path / "p.safetensors")
    loaded = fd.amed.load(tmp_path / "p.safetensors")
    assert torch.equal(loaded.sigmas, predictor.sigmas) and loaded.info == predictor.info
    torch.testing.assert_close(loaded.sample(gmm, noise), predictor.sample(gmm, noise))


def test_distill_is_seeded(gmm):
    sigmas = fd.amed.schedule(3, SIGMA_MIN, SIGMA_MAX)
    first, again, other = (fd.amed.distill(gmm, sigmas, (8,), trajectories=64, batch=32, seed=seed, progress=False)
                           for seed in (0, 0, 1))
    for name, a in first.state_dict().items():
        assert torch.equal(a, again.state_dict()[name]), name
    assert not torch.equal(first.head_r.weight, other.head_r.weight)


def test_distill_rejects_bad_arguments(gmm):
    sigmas = fd.amed.schedule(5, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(ValueError, match="ending above 0"):
        fd.amed.distill(gmm, fd.get_sigmas_karras(3, SIGMA_MIN, SIGMA_MAX), (8,))
    with pytest.raises(ValueError, match="student must be one of"):
        fd.amed.distill(gmm, sigmas, (8,), student="heun")
    with pytest.raises(ValueError, match="teacher must be a solver that can teach"):
        fd.amed.distill(gmm, sigmas, (8,), teacher="rk45")
    with pytest.raises(ValueError, match="M must be an integer >= 0"):
        fd.amed.distill(gmm, sigmas, (8,), M=-1)
    with pytest.raises(ValueError, match="scale_dir must be in"):
        fd.amed.Predictor(0, scale_dir=1.5)


def test_load_rejects_a_model_file():
    from fused_diffusion.zoo.digits_unet import DIGITS_WEIGHTS

    with pytest.raises(ValueError, match=r"is a digits U-Net \(epsilon prediction\) file, not an AMED predictor file: "
                                         r"load it with fd.zoo.digits\(path=path\)"):
        fd.amed.load(DIGITS_WEIGHTS)


@pytest.mark.gpu
def test_unet_predictor_inside_a_cuda_graph_equals_eager():
    """The hook's feature and the predictor's MLP are captured with the loop: replay = eager, one capture."""
    from unet_models import build

    _, denoiser, _, shape = build("plain")
    denoiser = denoiser.cuda()
    sigmas = fd.amed.schedule(5, 0.01, 20.0).cuda()
    predictor = fd.amed.Predictor(16).cuda().attach(denoiser)
    noise = torch.randn(4, *shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) * sigmas[0]
    eager = fd.sample_amed(denoiser, noise, sigmas, predictor=predictor, disable=True)
    sampler = fd.Sampler(denoiser, "amed", sigmas, predictor=predictor)
    for _ in range(2):
        torch.testing.assert_close(sampler(noise), eager, rtol=1e-4, atol=1e-4)
    assert sampler.captures == 1
