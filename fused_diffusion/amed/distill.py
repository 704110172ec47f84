"""Training the AMED predictor by distillation (Zhou et al. 2024, sec. 3.2-3.3 and their `training/loss.py`).

A teacher solves the ODE on a finer schedule (M extra points in every interval of the student's schedule); at each
coarse time the student takes one step from the teacher's point of the previous time (teacher forcing; a multistep
student keeps its own trajectory and history, as the AMED code), and the loss is the squared distance between the
student's and the teacher's points, through the model's call at the predicted midpoint. One optimiser step per
student step.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import trange

from .. import checks, schedules, solvers
from ..checks import describe
from .predictor import STUDENTS, Predictor, bottleneck_dim

SCHEDULES = {"polynomial": schedules.get_sigmas_polynomial, "time_uniform": schedules.get_sigmas_time_uniform,
             "logsnr": schedules.get_sigmas_logsnr}
DEFAULT_RHO = {"polynomial": 7.0, "time_uniform": 1.0}


def schedule(calls: int, sigma_min: float, sigma_max: float, afs: bool = True, kind: str = "polynomial",
             rho: float | None = None) -> Tensor:
    """The student's schedule for `calls` model calls: steps + 1 sigmas from sigma_max down to sigma_min (not 0),
    each step two calls (an AMED step, or an AMED-Plugin step), one less with AFS. As the AMED code: `kind` is
    'polynomial' (EDM's, exponent rho, default 7), 'time_uniform' (VP time, rho default 1: uniform; the paper's
    choice for AMED-Solver) or 'logsnr'."""
    calls, afs = checks.check_count("calls", calls), checks.check_bool("afs", afs)
    if kind == "logsnr" and rho is not None:
        raise ValueError(f"rho shapes the 'polynomial' and 'time_uniform' schedules; kind='logsnr' takes none, got "
                         f"rho={rho!r}")
    student = solvers.AMED(afs=afs)  # an AMED-Plugin step makes the calls of an AMED step
    steps = student.steps_for(calls, to_zero=False)
    if steps is None or student.calls(steps, to_zero=False) != calls:
        raise ValueError(f"with afs={afs} a schedule costs {'an odd' if afs else 'an even'} number of calls (two per "
                         f"step{', one saved on the first' if afs else ''}); got calls={calls}: use afs={not afs}")
    if not isinstance(kind, str) or kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {sorted(SCHEDULES)}, got {kind!r}")
    options = {} if kind == "logsnr" else {"rho": rho if rho is not None else DEFAULT_RHO[kind]}
    return SCHEDULES[kind](steps + 1, sigma_min, sigma_max, **options)[:-1]


def refine(sigmas: Tensor, M: int, rho: float = 7.0) -> Tensor:
    """`sigmas` with M points inserted in every interval, uniformly in sigma^(1/rho) (for EDM's polynomial schedule
    this is the same schedule with (M + 1) n + 1 points, as the AMED code's teacher)."""
    sigmas = schedules.validate_sigmas(sigmas).detach().double()
    M, rho = checks.check_count("M", M, minimum=0), checks.check_real("rho", rho, above=0)
    ramp = sigmas ** (1 / rho)
    fractions = torch.arange(M + 1, dtype=torch.float64) / (M + 1)
    inner = ramp[:-1, None] + fractions * (ramp[1:] - ramp[:-1])[:, None]
    fine = torch.cat([inner.reshape(-1), ramp[-1:]]) ** rho
    fine[:: M + 1] = sigmas  # the student's times exactly, not through the round trip
    return fine


def teacher_points(teacher: solvers.Plan, model: Callable[..., Tensor], noise: Tensor, M: int,
                   extra_args: dict | None) -> Tensor:
    """The teacher's solution at each of the student's times after the first: [steps, B, ...]."""
    run = solvers.Run(teacher, model, noise, extra_args=extra_args)
    trajectory = noise.new_empty((teacher.n_steps + 1, *noise.shape))
    trajectory[0].copy_(noise)
    with torch.no_grad():
        solvers.run_steps(run, noise, True, trajectory)
    run.raise_if_not_finite(run.finite_flags())
    return trajectory[M + 1 :: M + 1]


def distill(
    denoiser: Callable[..., Tensor],
    sigmas: Tensor,
    shape: tuple[int, ...],
    *,
    student: str = "amed",
    teacher: str | solvers.Solver = "heun",
    M: int = 1,
    afs: bool = True,
    max_order: int = 4,
    scale_dir: float = 0.01,
    scale_time: float = 0.0,
    trajectories: int = 10_000,
    batch: int = 128,
    lr: float = 5e-3,
    seed: int = 0,
    teacher_forcing: bool | None = None,
    balance_steps: bool = True,
    extra_args: dict | None = None,
    progress: bool = True,
    predictor: Predictor | None = None,
) -> Predictor:
    """Trains an AMED predictor for `denoiser` (model(x, sigma[B]) -> x0, EDM convention) and the student's
    schedule `sigmas` (decreasing, ending above 0, e.g. `fd.amed.schedule(5, sigma_min, sigma_max)`).

    `shape` is one sample's shape. The student is 'amed' (AMED-Solver) or 'ipndm' (AMED-Plugin on iPNDM with
    `max_order`; max_order=1 is the plugin on Euler); the teacher any deterministic solver of the library on the
    schedule refined by M points per interval. Defaults are the paper's CIFAR-10 settings: Heun teacher, M = 1, AFS,
    scale_dir 0.01, 10k trajectories in batches of 128, Adam lr 5e-3. The predictor reads the bottleneck of the
    U-Net inside `denoiser` when there is one (a diffusers `mid_block`), else only the times. Seeded: the same
    arguments give the same predictor. `teacher_forcing`: each student step starts from the teacher's point (the
    AMED code's choice for single-step students, the default for them) or from the student's own previous output
    (its choice for multistep students, whose history needs their own trajectory). `balance_steps` (default) divides
    each step's loss by its squared step size (sigma_i - sigma_{i+1})^2, so that the small last steps, which decide
    the final image, are learned as fast as the large first ones; the AMED code weights them equally
    (balance_steps=False), which on the digits model left the last step's r wherever the seed put it (FD 8.9 to 35
    over four seeds at 5 calls, against 8.3 to 9.3 balanced: bench/results/amed_digits_cpu.csv). Returns the
    predictor attached to the denoiser, in eval mode.
    """
    sigmas, shape, teacher = _check(denoiser, sigmas, shape, student, teacher, M, trajectories, batch, max_order, lr,
                                    seed, extra_args, predictor, afs=afs, teacher_forcing=teacher_forcing,
                                    balance_steps=balance_steps, progress=progress)
    M, trajectories, batch, seed, lr = int(M), int(trajectories), int(batch), int(seed), float(lr)
    if teacher_forcing is None:
        teacher_forcing = student == "amed" or max_order == 1
    if teacher_forcing and student == "ipndm" and max_order > 1:
        raise ValueError("teacher_forcing=True needs a single-step student (amed, or ipndm with max_order=1): a "
                         "multistep student's history comes from its own trajectory")
    device = sigmas.device
    if predictor is None:
        dim = bottleneck_dim(denoiser, (batch, *shape), sigmas[:1], extra_args)
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's generator untouched
            torch.manual_seed(seed)
            predictor = Predictor(dim, scale_dir=scale_dir, scale_time=scale_time)
    before = (predictor.sigmas, predictor.student, predictor.afs, predictor.max_order)
    try:  # a predictor given to train further is changed only once its student and schedule are valid
        predictor.sigmas = sigmas.cpu()
        predictor.set_student(student, afs, max_order)
        student_solver = predictor.solver()
        plan = solvers.Plan(student_solver, sigmas)
        teacher_plan = solvers.Plan(teacher, refine(sigmas.cpu(), M).to(device, sigmas.dtype))
        predictor.to(device).attach(denoiser)
    except BaseException:
        predictor.sigmas = before[0]
        predictor.set_student(*before[1:])
        raise
    predictor.train().requires_grad_(True)  # load and distill return it frozen
    optimizer = torch.optim.Adam(predictor.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator(device).manual_seed(seed)
    model_params = [p for p in denoiser.parameters() if p.requires_grad] if isinstance(denoiser, nn.Module) else []
    iterations = math.ceil(trajectories / batch)
    host = sigmas.detach().double().cpu()  # sync-ok: once
    step_weights = (host[:-1] - host[1:]) ** -2 if balance_steps else torch.ones(len(host) - 1, dtype=torch.float64)
    losses: list[float] = []
    start = time.perf_counter()
    try:
        for p in model_params:  # gradients flow through the model's input only
            p.requires_grad_(False)
        bar = trange(iterations, disable=not progress, desc=f"AMED distillation ({student}, {predictor.calls} calls)")
        for _ in bar:
            noise = torch.randn((batch, *shape), generator=generator, device=device) * sigmas[0]
            targets = teacher_points(teacher_plan, denoiser, noise, M, extra_args)
            run = solvers.Run(plan, denoiser, noise, extra_args=extra_args, check_finite=False)
            x, total = noise, noise.new_zeros((), dtype=torch.float64)
            for i in range(plan.n_steps):
                optimizer.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    out = student_solver.step(run, i, x)
                    loss = (out - targets[i]).square().sum() / batch  # the AMED code's loss.sum() / batch
                (loss * float(step_weights[i])).backward()
                for p in predictor.parameters():  # as the AMED code: a rare non-finite gradient must not end the run
                    if p.grad is not None:
                        torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
                optimizer.step()
                _detach_history(run)
                x = targets[i] if teacher_forcing else out.detach()
                total += loss.detach()
            losses.append(total.item() / plan.n_steps)  # one host sync per iteration, not per step
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
    finally:
        for p in model_params:
            p.requires_grad_(True)
    predictor.info = {"teacher": teacher.name, "M": M, "trajectories": iterations * batch, "batch": batch, "lr": lr,
                      "seed": seed, "seconds": round(time.perf_counter() - start, 1),
                      "loss_first": losses[0], "loss_last": losses[-1]}
    return predictor.eval().requires_grad_(False)


def _check(denoiser: Any, sigmas: Tensor, shape: Any, student: str, teacher: Any, M: int, trajectories: int,
           batch: int, max_order: int, lr: float, seed: int, extra_args: Any, predictor: Any,
           **flags: Any) -> tuple[Tensor, tuple[int, ...], solvers.Solver]:
    """The arguments checked before any model call: (sigmas without autograd, shape as a tuple, the teacher solver);
    `flags` are bools (teacher_forcing may be None)."""
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x, sigma[B]) -> x0, got {describe(denoiser)}")
    schedules.validate_sigmas(sigmas)
    if sigmas[-1] <= 0:  # sync-ok: once
        raise ValueError("distill needs the student's schedule ending above 0 (at sigma_min, as AMED's; the step to "
                         f"0 has no midpoint to learn); got sigmas[-1] = {float(sigmas[-1])}")
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape:
        raise TypeError(f"shape must be one sample's shape, a non-empty tuple of ints such as (1, 8, 8), got "
                        f"{describe(shape)}")
    shape = tuple(checks.check_count(f"shape[{i}]", size) for i, size in enumerate(shape))
    if not isinstance(student, str) or student not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
    for name, value, low in (("M", M, 0), ("trajectories", trajectories, 1), ("batch", batch, 1), ("seed", seed, 0)):
        checks.check_count(name, value, minimum=low)
    checks.check_real("lr", lr, above=0)  # (distill reads them as plain numbers: the predictor's info is JSON)
    if student == "ipndm" and max_order not in (1, 2, 3, 4):
        raise ValueError(f"max_order must be 1, 2, 3 or 4, got {max_order!r}")
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError(f"extra_args must be a dict of keyword arguments for the model or None, got "
                        f"{describe(extra_args)}")
    if predictor is not None and not isinstance(predictor, Predictor):
        raise TypeError(f"predictor must be an fd.amed.Predictor to train further, or None, got {describe(predictor)}")
    for name, flag in flags.items():
        if not (name == "teacher_forcing" and flag is None):
            checks.check_bool(name, flag)
    return sigmas.detach(), shape, teacher_solver(teacher)


def teacher_solver(teacher: Any) -> solvers.Solver:
    """The teacher as a solver: a deterministic ODE solver on sigmas that needs no arguments (by name), or such a
    Solver instance. A stochastic one would make the targets, and so the predictor, differ run to run."""
    if isinstance(teacher, str):
        if teacher not in solvers.SOLVERS:
            raise ValueError(f"teacher must be a solver that can teach, one of {teachers()}, or a Solver instance; "
                             f"got {teacher!r}")
        try:
            solver = solvers.get_solver(teacher)
        except (TypeError, ValueError) as e:
            raise ValueError(f"teacher={teacher!r} cannot be built without options ({e}); choose one of "
                             f"{teachers()}, or pass a Solver instance") from None
    elif isinstance(teacher, solvers.Solver):
        solver = teacher
    else:
        raise TypeError(f"teacher must be a solver name or a Solver instance, got {describe(teacher)}")
    if solver.schedule_kind != "sigmas" or solver.model_output != "denoised":
        raise ValueError(f"teacher={solver.name!r} solves over {solver.schedule_kind} with a model predicting "
                         f"{solver.model_output}, not over the student's sigmas with a denoiser; choose one of "
                         f"{teachers()}")
    if solver.stochastic:
        raise ValueError(f"teacher={solver.name!r} draws noise at every step with these options, so the targets (and "
                         f"the predictor) would differ from run to run; the teacher solves the ODE: choose one of "
                         f"{teachers()} (or an ancestral solver with eta=0 as an instance)")
    return solver


def teachers() -> list[str]:
    """The solver names that can teach with their default options."""
    names = []
    for name, cls in solvers.SOLVERS.items():
        try:
            solver = cls()
        except (TypeError, ValueError):
            continue
        if solver.schedule_kind == "sigmas" and solver.model_output == "denoised" and not solver.stochastic:
            names.append(name)
    return sorted(names)


def _detach_history(run: solvers.Run) -> None:
    """A multistep student's history carries no graph into the next optimiser step (the AMED code's .detach())."""
    kept = [h.detach() for h in run.history]
    run.history.clear()
    run.history.extend(kept)
