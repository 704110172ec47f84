"""The shipped shortcut digits model against the same network trained with flow matching only (same iterations, same
data, same seed; `python -m fused_diffusion train digits-shortcut` / `digits-flow`): sample quality at 1 to 128 steps.

    python bench/bench_shortcut.py --threads 2    # -> results/shortcut_digits_cpu.csv/.png, _samples.png
    python bench/readme_tables.py shortcut

Both sample with fd.sample_shortcut (Euler steps of the flow, x_{t+d} = x_t + d v(x_t, t, d)) from the same --samples
seeded noises; the flow-matching model ignores d. Quality is fd.metrics.frechet_distance (digits classifier features
against the 297 held-out digits); the floor row is as many training digits.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import fused_diffusion as fd
from common import RESULTS, plot_fd_against_steps, save_grid, write_csv
from fused_diffusion import metrics
from fused_diffusion.zoo.data import load_digits_split

MODELS = {"shortcut": "shortcut (self-consistency + flow matching)", "flow": "flow matching only"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 128])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = load_digits_split()
    rows = [{"model": "data (train split)", "steps": 0, "samples": args.samples,
             "fd": round(metrics.frechet_distance(split.train_images[: args.samples]), 4), "seconds": 0.0}]
    pictures = {}
    for objective in MODELS:
        model, shape = fd.zoo.digits_shortcut(objective=objective)
        noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
        for steps in args.steps:
            start = time.perf_counter()
            with torch.inference_mode():
                images = fd.sample_shortcut(model, noise, steps, disable=True)
            seconds = time.perf_counter() - start
            rows.append({"model": objective, "steps": steps, "samples": args.samples,
                         "fd": round(metrics.frechet_distance(images), 4), "seconds": round(seconds, 2)})
            pictures[MODELS[objective], steps] = images[:36]
            print(rows[-1], flush=True)
    write_csv("shortcut_digits", rows)
    plot(rows, RESULTS / "shortcut_digits_cpu.png")
    save_grid(pictures, args.steps, RESULTS / "shortcut_digits_cpu_samples.png", "steps")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_fd_against_steps(ax, rows, "model", "Shortcut model vs flow matching, same network and budget (digits)",
                          labels=MODELS)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
