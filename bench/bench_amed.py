"""AMED distillation on the digits model: the choices behind the shipped predictor, and its cost.

    python bench/bench_amed.py            # -> results/amed_digits_cpu.csv

At 5 model calls (3 AMED steps with AFS), 10k trajectories, batch 128, one thread (the CPU figure the issue's
<= 10 min target is about): the seed spread of the AMED code's equal step weights against fd.amed's balanced ones
(time_uniform schedule, Heun teacher with M = 3, seeds 0-3), then with balanced weights the other schedule kinds
(polynomial rho 7, logsnr) and the paper's M = 1. Each row: the FD of the Heun teacher itself on the same noise, of
AMED with r = 1/2 on the same schedule, of the distilled student, the distillation's wall time and loss. 1500 samples
from fixed noise, fd.metrics' FD against the held-out digits.
"""
from __future__ import annotations

import argparse
import time

import torch

import fused_diffusion as fd
from common import write_csv
from fused_diffusion import metrics, solvers
from fused_diffusion.amed.distill import refine


CONFIGS = ([("time_uniform", 3, balance, seed) for balance in (False, True) for seed in range(4)]
           + [("polynomial", 3, True, 0), ("logsnr", 3, True, 0), ("time_uniform", 1, True, 0)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--trajectories", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    denoiser, _, shape = fd.zoo.digits()
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(0))
    afs = args.calls % 2 == 1
    heun = solvers.get_solver("heun")
    rows, known = [], {}
    for kind, M, balance, seed in CONFIGS:
        sigmas = fd.amed.schedule(args.calls, float(denoiser.sigma_min), float(denoiser.sigma_max), afs=afs, kind=kind)
        fine = refine(sigmas, M)  # the teacher's schedule, ending at sigma_min
        x = noise * sigmas[0]
        if (kind, M) not in known:  # the teacher's and r = 1/2's quality on this schedule, once
            teacher = solvers.sample(heun, denoiser, x, fine.float(), disable=True)
            half = fd.sample_amed(denoiser, x, sigmas, afs=afs, disable=True)
            known[kind, M] = metrics.frechet_distance(teacher), metrics.frechet_distance(half)
        start = time.perf_counter()
        predictor = fd.amed.distill(denoiser, sigmas, shape, M=M, afs=afs, trajectories=args.trajectories,
                                    balance_steps=balance, seed=seed, progress=False)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            learned = metrics.frechet_distance(predictor.sample(denoiser, x))
        rows.append({"schedule": kind, "sigmas": " ".join(f"{s:.4g}" for s in sigmas.tolist()), "M": M,
                     "balance_steps": balance, "seed": seed, "calls": args.calls,
                     "teacher_calls": heun.calls(len(fine) - 1, to_zero=False), "teacher_fd": known[kind, M][0],
                     "r_half_fd": known[kind, M][1], "learned_fd": learned, "distill_s": round(seconds, 1),
                     "trajectories": predictor.info["trajectories"], "loss_first": predictor.info["loss_first"],
                     "loss_last": predictor.info["loss_last"]})
        print(rows[-1], flush=True)
    write_csv("amed_digits", rows)


if __name__ == "__main__":
    main()
