"""The shipped digits model: sample quality against model calls, the training-resolution choice, and load time.

    python bench/bench_digits.py quality      # every ODE solver at 5..100 calls, 1500 samples -> digits_quality_<machine>.csv/.png
    python bench/bench_digits.py resolution --minutes 6   # 8x8 vs 16x16 training for equal wall time -> digits_resolution_<machine>.csv
    python bench/bench_digits.py load         # import and load time of fd.zoo.digits() -> digits_load_<machine>.csv

Quality is fd.metrics (Frechet distance in the digits classifier's features against the 297 held-out digits, not
FID) on 1500 samples, the size of the train split, so the data floor (the train split itself against the held-out
digits) is measured with the same set size. Every row carries the machine, thread count, versions and command.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import fused_diffusion as fd
from common import write_csv
from fused_diffusion.provenance import machine
from fused_diffusion import demo, metrics
from fused_diffusion.zoo.data import load_digits_split

def quality(args: argparse.Namespace) -> None:
    denoiser, alphas_cumprod, shape = fd.zoo.digits()
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed))
    split = load_digits_split()
    floor = metrics.evaluate(split.train_images[: args.samples])
    rows = [{"solver": "data (train split)", "calls": 0, "ms": 0.0, **floor, "trajectory_error": 0.0}]
    print(f"data floor: FD {floor['fd']:.2f} ({len(split.train_images[: args.samples])} train digits vs held-out)")
    start = time.perf_counter()
    reference = metrics.reference_solution(denoiser, noise[: args.reference_samples] * denoiser.sigma_max,
                                           denoiser.sigma_min, denoiser.sigma_max)
    print(f"reference solve: {time.perf_counter() - start:.0f} s")
    for budget in args.calls:
        for run in demo.solver_runs(budget, denoiser.sigma_min, denoiser.sigma_max, alphas_cumprod):
            start = time.perf_counter()
            images = run.sample(denoiser, noise)
            ms = (time.perf_counter() - start) * 1e3
            row = {"solver": run.solver, "calls": run.calls, "ms": ms, **metrics.evaluate(images),
                   "trajectory_error": metrics.trajectory_error(images[: args.reference_samples], reference)}
            rows.append(row)
            print(f"{run.solver:<10}{run.calls:>5}  FD {row['fd']:7.2f}  conf {row['confidence']:.3f}  "
                  f"H {row['class_entropy']:.3f}  traj {row['trajectory_error']:.4f}  {ms / 1e3:6.1f} s", flush=True)
    heun = max((r for r in rows if r["solver"] == "heun"), key=lambda r: r["calls"])
    print(f"target: Heun {heun['calls']} calls FD {heun['fd']:.2f} = {heun['fd'] / floor['fd']:.2f} x the data floor "
          f"(target <= 1.5 x)")
    path = write_csv("digits_quality", rows)
    plot_quality(rows, path.with_suffix(".png"), floor["fd"])


def plot_quality(rows: list[dict], path: Path, floor: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for solver in dict.fromkeys(r["solver"] for r in rows if r["calls"]):
        mine = [r for r in rows if r["solver"] == solver]
        axes[0].plot([r["calls"] for r in mine], [r["fd"] for r in mine], "o-", label=solver)
        axes[1].plot([r["calls"] for r in mine], [r["trajectory_error"] for r in mine], "o-", label=solver)
    axes[0].axhline(floor, color="gray", linestyle="--", label="train split (data floor)")
    axes[0].set_ylabel("Frechet distance (digits classifier features)")
    axes[1].set_ylabel("trajectory error (RMS vs 1000-call solve)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model calls")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"digits model, {machine()}: quality against model calls")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def resolution(args: argparse.Namespace) -> None:
    from fused_diffusion.zoo.data import resize
    from fused_diffusion.zoo.train import TrainConfig, train_digits

    def train(res: int, iterations: int, max_minutes: float | None, tmp: str) -> Path:
        cfg = TrainConfig(resolution=res, iterations=iterations, warmup=min(200, iterations // 10),
                          max_minutes=max_minutes, workdir=Path(tmp), out=Path(tmp) / "w.safetensors")
        return train_digits(cfg, progress=False)

    rows = []
    for res in args.resolutions:
        # two short probes (their difference leaves out start-up) size the cosine schedule to what fits in the
        # time, so each run completes its decay
        probes = []
        for probe in (20, 80):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                train(res, probe, None, tmp)
                probes.append(time.perf_counter() - start)
        iterations = int(args.minutes * 60 / ((probes[1] - probes[0]) / 60))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = train(res, iterations, 1.1 * args.minutes, tmp)
            minutes = (time.perf_counter() - start) / 60
            denoiser, _, shape = fd.zoo.digits(path=path)
            iterations = fd.files.read_any(path)[1]["info"]["iterations"]
        noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(0))
        sigmas = fd.get_sigmas_karras(50, denoiser.sigma_min, denoiser.sigma_max)
        images = fd.sample_heun(denoiser, noise * sigmas[0], sigmas, disable=True)
        # 16x16 samples are compared at the classifier's 8x8 (area averaging), against held-out digits that went
        # through the same bilinear-up / area-down round trip
        split = load_digits_split(res)
        reference = resize(split.heldout_images, 8)
        row = {"resolution": res, "minutes": round(minutes, 2), "iterations": iterations,
               "s_per_iteration": round(60 * minutes / iterations, 3),
               "heun_calls": fd.solvers.get_solver("heun").calls(len(sigmas) - 1),
               "fd": metrics.frechet_distance(images, reference), "samples": args.samples,
               "data_fd": metrics.frechet_distance(split.train_images[: args.samples], reference)}
        # the two resolutions are scored against differently blurred references: compare each to its own floor
        row["fd_over_data_fd"] = row["fd"] / row["data_fd"]
        rows.append(row)
        print(row, flush=True)
    write_csv("digits_resolution", rows)


def load(args: argparse.Namespace) -> None:
    import subprocess

    # three parts of a first load in a fresh process: this package, diffusers' UNet2DModel (a lazy import inside
    # diffusers), and fd.zoo.digits() itself (read the safetensors file, build, load the state dict)
    code = ("import time; a = time.perf_counter(); import fused_diffusion as fd; b = time.perf_counter(); "
            "from diffusers import UNet2DModel; c = time.perf_counter(); fd.zoo.digits(); d = time.perf_counter(); "
            "print(b - a, c - b, d - c)")
    rows = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        package_s, unet_import_s, load_s = map(float, out.split())
        rows.append({"import_fused_diffusion_s": round(package_s, 3), "import_UNet2DModel_s": round(unet_import_s, 3),
                     "zoo_digits_s": round(load_s, 3)})
        print(rows[-1])
    write_csv("digits_load", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--calls", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    q.add_argument("--samples", type=int, default=1500)
    q.add_argument("--reference-samples", type=int, default=200)
    q.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("resolution")
    r.add_argument("--resolutions", type=int, nargs="+", default=[8, 16])
    r.add_argument("--minutes", type=float, default=6.0)
    r.add_argument("--samples", type=int, default=500)
    ld = sub.add_parser("load")
    ld.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    {"quality": quality, "resolution": resolution, "load": load}[args.command](args)


if __name__ == "__main__":
    main()
