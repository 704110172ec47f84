"""The shipped AMED predictors for the digits model (`python -m fused_diffusion train digits-amed`), distilled by
fd.amed.distill with the paper's settings on the model's own sigma range."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..amed import Predictor, distill, schedule
from ..amed.predictor import STUDENTS
from ..checks import check_count
from .digits_unet import digits
from .store import WEIGHTS_DIR

# the student's schedule kind (fd.amed.schedule) as the AMED code's launch.sh: uniform VP time for AMED-Solver (on
# this model it also beat the polynomial and logSNR ones, bench/results/amed_digits_cpu.csv), EDM's polynomial one
# for the AMED-Plugin on iPNDM
SCHEDULE_KIND = {"amed": "time_uniform", "ipndm": "polynomial"}


def digits_amed_path(student: str = "amed", calls: int = 5) -> Path:
    return WEIGHTS_DIR / f"digits_amed_{student}_{calls}.safetensors"


def shipped() -> list[tuple[str, int]]:
    """(student, calls) of the predictors that ship."""
    found = []
    for path in sorted(WEIGHTS_DIR.glob("digits_amed_*_*.safetensors")):
        student, calls = path.stem.removeprefix("digits_amed_").rsplit("_", 1)
        found.append((student, int(calls)))
    return found


def digits_amed(denoiser: Any, student: str = "amed", calls: int = 5) -> Predictor:
    """The shipped AMED predictor for the digits model, attached to `denoiser` (from fd.zoo.digits()).

    >>> denoiser, _, shape = fd.zoo.digits()
    >>> predictor = fd.zoo.digits_amed(denoiser)          # AMED-Solver, 5 model calls
    >>> images = predictor.sample(denoiser, torch.randn(16, *shape) * predictor.sigmas[0])
    """
    if not isinstance(student, str) or student not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
    path = digits_amed_path(student, check_count("calls", calls))
    if not path.is_file():
        raise ValueError(f"no shipped AMED predictor for student={student!r}, calls={calls}; shipped: {shipped()} "
                         f"(train one with `python -m fused_diffusion train digits-amed --student {student} "
                         f"--calls {calls}`)")
    return Predictor.load(path, model=denoiser)


def train_digits_amed(student: str = "amed", calls: int = 5, trajectories: int = 30_000, seed: int = 0,
                      out: Path | None = None, progress: bool = True, M: int = 3, **options: Any) -> Path:
    """Distils a predictor for the shipped digits model and writes it (default: the shipped file). The teacher is
    Heun with M = 3 points per interval, not the paper's M = 1: on this model Heun with M = 1 (11 calls) reaches FD
    10.1 only, which caps the student; M = 3 (23 calls) reaches 6.18, the data floor being 5.93."""
    denoiser, _, shape = digits()
    sigmas = schedule(calls, float(denoiser.sigma_min), float(denoiser.sigma_max), afs=calls % 2 == 1,
                      kind=SCHEDULE_KIND[student])
    predictor = distill(denoiser, sigmas, shape, student=student, afs=calls % 2 == 1, trajectories=trajectories,
                        seed=seed, progress=progress, M=M, **options)
    predictor.info["schedule"] = SCHEDULE_KIND[student]
    out = out or digits_amed_path(student, calls)
    predictor.save(out)
    return out
