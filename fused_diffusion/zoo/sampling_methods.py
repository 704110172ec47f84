"""Every way the library samples the shipped digits model: the baseline solvers and each faster method it ships
(learned AMED predictors, the few-step models trained here, DeepCache and Skip-Tuning on the digits U-Net), with the
model-call budgets each is shown at and what it cost to get. One registry: `python -m fused_diffusion demo` and
bench/bench_few_step.py read it, so a method that ships is a method they show.

    >>> zoo = fd.zoo.digits()
    >>> for method in fd.zoo.methods():
    ...     sample = method.prepare(zoo)                    # loads what the method needs
    ...     images = sample(torch.randn(16, *zoo.sample_shape), method.calls[0], torch.Generator())
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .. import files, sampling, solvers
from ..schedules import get_sigmas_karras
from ..unet import DeepCacheConfig, SkipTuningConfig, apply_deepcache, apply_skip_tuning
from .digits_amed import digits_amed, digits_amed_path, shipped
from .digits_consistency import digits_consistency, digits_pcm
from .digits_shortcut import digits_shortcut
from .digits_unet import ZooModel
from .train import WEIGHTS

# (unit-variance noise [N, 1, R, R], model calls, generator of any draws after the first noise) -> images in [-1, 1]
SampleFn = Callable[[Tensor, int, torch.Generator], Tensor]

# the baselines' model-call budgets (each runs the most calls within one): from few calls to converged (DPM++(2M)
# at 20 calls is within 1% of its FD at 50 on this model, bench/results/unet_quality_cpu.csv), so that a method's
# quality falls on their curve and its equal-quality cost can be read off
BASELINE_CALLS = (5, 8, 12, 20)
BASELINE_SOLVERS = ("dpmpp_2m", "heun")
# the U-Net methods' settings, from the digits sweeps of `python bench/bench_unet.py quality`: Skip-Tuning lifts
# the first-order DDIM most (rho_bottom 0.4 best at 9 calls); DeepCache at interval 3 on the converged solver
SKIP_TUNING = SkipTuningConfig(rho_bottom=0.4)
SKIP_TUNING_CALLS = (5, 9)
DEEPCACHE = DeepCacheConfig(interval=3)
DEEPCACHE_SOLVER, DEEPCACHE_CALLS = "dpmpp_2m", (20,)


@dataclass(frozen=True)
class Method:
    """One way to sample the digits model. `kind`: "baseline" (a solver of the library on the model as trained),
    "learned solver", "few-step model" or "U-Net method"; `calls`: the model-call budgets it is shown at;
    `prepare(zoo)` loads what it needs and returns its SampleFn; `weights`: the shipped file whose metadata records
    its training (None: nothing was trained for it)."""
    label: str
    kind: str
    calls: tuple[int, ...]
    prepare: Callable[[ZooModel], SampleFn]
    weights: Path | None = None

    def training_cost(self) -> dict:
        """{"train_minutes", "teacher_calls"} from the shipped file's metadata; zeros for what trains nothing,
        blanks where the file does not record them."""
        if self.weights is None:
            return {"train_minutes": 0, "teacher_calls": 0}
        info = files.read_any(self.weights)[1].get("info", {})
        minutes = info.get("train_minutes", round(info["seconds"] / 60, 2) if "seconds" in info else "")
        return {"train_minutes": minutes, "teacher_calls": info.get("teacher_calls", "")}


def solver_run(zoo: ZooModel, name: str, calls: int, **options) -> Callable[[Tensor], Tensor]:
    """The library's solver `name` with the most steps within `calls` model calls on a Karras schedule from the
    model's sigma_max to 0: a function of unit-variance noise."""
    denoiser = zoo.denoiser
    solver = solvers.get_solver(name, **options)
    sigmas = get_sigmas_karras(solver.steps_for(calls), float(denoiser.sigma_min), float(denoiser.sigma_max))
    return lambda noise: solvers.sample(solver, denoiser, noise * sigmas[0], sigmas.to(noise.device), disable=True)


def ddim_run(eps_model: Callable[..., Tensor], alphas_cumprod: Tensor, sigma_max: float,
             calls: int) -> Callable[[Tensor], Tensor]:
    """DDIM at `calls` steps with trailing spacing, which starts at the last training step (sigma_max), so it solves
    the same ODE from the same noise as `solver_run`; DDIM takes variance-preserving noise."""
    scale = sigma_max / (1 + sigma_max**2) ** 0.5
    return lambda noise: sampling.sample_ddim(eps_model, noise * scale, alphas_cumprod, calls,
                                              timestep_spacing="trailing", clip_sample=False, disable=True)


def _zoo_ddim_run(zoo: ZooModel, calls: int) -> Callable[[Tensor], Tensor]:
    return ddim_run(zoo.denoiser.inner_model, zoo.alphas_cumprod, float(zoo.denoiser.sigma_max), calls)


def _baseline(name: str) -> Method:
    solver = solvers.get_solver(name)
    calls = tuple(dict.fromkeys(solver.calls(solver.steps_for(budget)) for budget in BASELINE_CALLS))
    return Method(solver.label, "baseline", calls,
                  lambda zoo: lambda noise, calls, generator: solver_run(zoo, name, calls)(noise))


def _ddim() -> Method:
    return Method("DDIM", "baseline", SKIP_TUNING_CALLS,
                  lambda zoo: lambda noise, calls, generator: _zoo_ddim_run(zoo, calls)(noise))


def _with_unet_feature(apply: Callable, config, run: Callable[[ZooModel, int], Callable[[Tensor], Tensor]]):
    """prepare() of a U-Net method: the feature applied for the run and removed after it (the U-Net is shared)."""
    def prepare(zoo: ZooModel) -> SampleFn:
        def sample(noise: Tensor, calls: int, generator: torch.Generator) -> Tensor:
            handle = apply(zoo.denoiser.inner_model, config)
            try:
                return run(zoo, calls)(noise)
            finally:
                handle.disable()
        return sample
    return prepare


def _amed(student: str, calls: int) -> Method:
    def prepare(zoo: ZooModel) -> SampleFn:
        predictor = digits_amed(zoo.denoiser, student, calls)
        return lambda noise, _calls, generator: predictor.sample(zoo.denoiser, noise * predictor.sigmas[0])
    label = "AMED (learned)" if student == "amed" else f"AMED-Plugin on {solvers.get_solver(student).label}"
    return Method(label, "learned solver", (calls,), prepare, digits_amed_path(student, calls))


def _shortcut() -> Method:
    def prepare(zoo: ZooModel) -> SampleFn:
        model = digits_shortcut(zoo.denoiser.inner_model.device).model
        return lambda noise, calls, generator: sampling.sample_shortcut(model, noise, calls, disable=True)
    return Method("shortcut model", "few-step model", (1, 2, 4), prepare, WEIGHTS["shortcut"])


def _consistency() -> Method:
    def prepare(zoo: ZooModel) -> SampleFn:
        cm = digits_consistency(zoo.denoiser.inner_model.device)
        return lambda noise, calls, generator: sampling.sample_consistency(
            cm.model, noise * cm.sigma_max, cm.sigmas(calls, device=noise.device), sigma_min=cm.model.sigma_min,
            generator=generator, disable=True)
    return Method("consistency model (CD)", "few-step model", (1, 2, 4), prepare, WEIGHTS["consistency"])


def _pcm() -> Method:
    phases = files.read_any(WEIGHTS["pcm"])[1]["distillation"]["phases"]

    def prepare(zoo: ZooModel) -> SampleFn:
        pcm = digits_pcm(zoo.denoiser.inner_model.device)
        return lambda noise, calls, generator: sampling.sample_pcm(pcm.unet, noise, pcm.alphas_cumprod, pcm.phases,
                                                                  calls, disable=True)
    return Method(f"phased consistency model ({phases} phases)", "few-step model", (phases, 2 * phases), prepare,
                  WEIGHTS["pcm"])


def methods() -> list[Method]:
    """The registry, baselines first: DPM++(2M) and Heun over BASELINE_CALLS, DDIM where Skip-Tuning runs; each
    shipped AMED predictor; the shortcut, consistency and phased consistency models; DeepCache and Skip-Tuning."""
    deepcache_label = f"DeepCache (interval {DEEPCACHE.interval}) on {solvers.get_solver(DEEPCACHE_SOLVER).label}"
    return [
        *(_baseline(name) for name in BASELINE_SOLVERS),
        _ddim(),
        *(_amed(student, calls) for student, calls in shipped()),
        _shortcut(),
        _consistency(),
        _pcm(),
        Method(deepcache_label, "U-Net method", DEEPCACHE_CALLS,
               _with_unet_feature(apply_deepcache, DEEPCACHE, lambda zoo, calls: solver_run(zoo, DEEPCACHE_SOLVER,
                                                                                            calls))),
        Method(f"Skip-Tuning (rho {SKIP_TUNING.rho_bottom}) on DDIM", "U-Net method", SKIP_TUNING_CALLS,
               _with_unet_feature(apply_skip_tuning, SKIP_TUNING, _zoo_ddim_run)),
    ]
