"""The few-step students distilled from the shipped digits model against their teacher, same noise: the consistency
model (`python -m fused_diffusion train digits-consistency`, sampled by fd.sample_consistency at 1, 2, 4 steps) and
the phased consistency model (`train digits-pcm --phases 4`, fd.sample_pcm at 1, 2, 4, 8 steps), with the teacher at
50 calls (DDIM and DPM-Solver++(2M)) and the teacher itself on the PCM timesteps (what the student started from).

    python bench/bench_consistency.py --threads 1    # -> results/consistency_digits_cpu.csv, _samples.png

Quality is fd.metrics.frechet_distance (digits classifier features against the 297 held-out digits) of --samples
samples from the same seeded noise; the floor row is as many training digits.
"""
from __future__ import annotations

import argparse
import time

import torch

import fused_diffusion as fd
from common import RESULTS, save_grid, write_csv
from fused_diffusion import files, metrics
from fused_diffusion.zoo.data import load_digits_split
from fused_diffusion.zoo.train import WEIGHTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = load_digits_split()
    floor = round(metrics.frechet_distance(split.train_images[: args.samples]), 4)
    rows = [{"model": "data (train split)", "steps": 0, "fd": floor, "seconds": 0.0, "train_minutes": 0.0,
             "teacher_calls": 0}]
    pictures = {}
    denoiser, alphas_cumprod, shape = fd.zoo.digits()
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    consistency = fd.zoo.digits_consistency()
    pcm = fd.zoo.digits_pcm()
    trained = {name: files.read_any(WEIGHTS[name])[1]["info"] for name in ("consistency", "pcm")}

    runs = {
        ("teacher DDIM", 50): lambda: fd.sample_ddim(denoiser.inner_model, noise, alphas_cumprod, 50,
                                                      clip_sample=False, disable=True),
        ("teacher DPM++(2M)", 50): lambda: fd.sample_dpmpp_2m(
            denoiser, noise * denoiser.sigma_max, fd.get_sigmas_karras(50, denoiser.sigma_min, denoiser.sigma_max),
            disable=True),
    }
    for steps in (4, 8):
        runs["teacher on the PCM-4 timesteps", steps] = lambda steps=steps: fd.sample_pcm(
            denoiser.inner_model, noise, alphas_cumprod, 4, steps, disable=True)
    for steps in (1, 2, 4):
        runs["consistency (CD)", steps] = lambda steps=steps: fd.sample_consistency(
            consistency.model, noise * consistency.sigma_max, consistency.sigmas(steps),
            sigma_min=consistency.model.sigma_min, generator=torch.Generator().manual_seed(args.seed + 1),
            disable=True)
    for steps in (1, 2, 4, 8):
        runs[f"PCM, {pcm.phases} phases", steps] = lambda steps=steps: fd.sample_pcm(
            pcm.unet, noise, pcm.alphas_cumprod, pcm.phases, steps, disable=True)

    for (name, steps), run in runs.items():
        start = time.perf_counter()
        with torch.inference_mode():
            images = run()
        seconds = time.perf_counter() - start
        info = trained["consistency"] if name.startswith("consistency") else trained["pcm"] if name.startswith(
            "PCM") else {}
        rows.append({"model": name, "steps": steps, "fd": round(metrics.frechet_distance(images), 4),
                     "seconds": round(seconds, 2), "train_minutes": info.get("train_minutes", 0.0),
                     "teacher_calls": info.get("teacher_calls", 0)})
        pictures[name, steps] = images[:36]
        print(rows[-1], flush=True)
    write_csv("consistency_digits", rows)
    save_grid(pictures, [1, 2, 4, 8, 50], RESULTS / "consistency_digits_cpu_samples.png", "steps")


if __name__ == "__main__":
    main()
