"""SDO (fd.sdo, one step keeps its autograd graph) against full backpropagation through the same sampler, on the
shipped digits model steered to a class by the shipped classifier's loss (examples/sdo_steer_digits.py).

    python bench/bench_sdo.py cost --threads 2     # time and peak memory per optimisation step at 10/20/50 steps
    python bench/bench_sdo.py steer --threads 2    # how often each reaches the target class -> sdo_steer_<machine>.csv

cost: one optimisation step (sample with DPM++2M, classifier loss, backward, Adam) on 16 and 64 noises; each
(batch, steps, method) in a fresh process so its peak memory is its own: the highest resident memory during the process's first
optimisation step above its memory before it (CPU: the heap keeps freed memory, so later steps show nothing) or
torch.cuda.max_memory_allocated during a step after a warm-up (GPU), the bytes autograd saved for backward, and the
median wall time of 5 more steps. steer: 8 noises for each of the 10 classes, 30 Adam steps at 20 sampler
steps, the fraction classified as the target after each; the steered samples are saved as a picture.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fused_diffusion as fd
from common import write_csv
from fused_diffusion.demo import steer_digits

METHODS = {"sdo": "random", "full": "all"}


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def one_config(steps: int, method: str, device: str, batch: int = 16, repeats: int = 5) -> dict:
    """One (steps, method) cell, measured in this process."""
    denoiser, _, shape = fd.zoo.digits(device=device)
    classifier = fd.metrics.digits_classifier().to(device)
    sigmas = fd.get_sigmas_karras(steps, denoiser.sigma_min, denoiser.sigma_max, device=device)
    z = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    optimizer = torch.optim.Adam([z], lr=0.05)
    labels = torch.full((batch,), 3, device=device)
    step_generator = torch.Generator().manual_seed(0)
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    def optimisation_step() -> None:
        images = fd.sdo.sample(denoiser, z * sigmas[0], sigmas, "dpmpp_2m", grad_step=METHODS[method],
                               step_generator=step_generator)
        loss = F.cross_entropy(classifier(images.clamp(-1, 1)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        optimisation_step()  # warm-up: cuBLAS workspaces and first-call caches stay allocated, not the step's own
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            optimisation_step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # the CPU heap keeps what a step freed, so only the first step shows its high-water mark: resident memory
        # polled every 0.2 ms during it, above the resident memory before it
        base, highest, done = rss_bytes(), [0], threading.Event()

        def poll() -> None:
            while not done.is_set():
                highest[0] = max(highest[0], rss_bytes())
                time.sleep(2e-4)

        poller = threading.Thread(target=poll)
        poller.start()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            optimisation_step()
        done.set()
        poller.join()
        peak = max(highest[0], rss_bytes()) - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimisation_step()
        times.append(time.perf_counter() - start)
    return {"steps": steps, "method": method, "batch": batch, "ms_per_step": 1e3 * statistics.median(times),
            "peak_memory_mb": max(peak, 0) / 2**20, "autograd_saved_mb": saved / 2**20}


def cost(args: argparse.Namespace) -> None:
    rows = []
    for batch in args.batches:
        for steps in (10, 20, 50):
            for method in METHODS:
                done = subprocess.run([sys.executable, __file__, "one", "--steps", str(steps), "--method", method,
                                       "--batch", str(batch), "--threads", str(args.threads), "--device", args.device],
                                      capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(row, flush=True)
            sdo, full = rows[-2], rows[-1]
            print(f"batch {batch}, {steps} steps: SDO {full['ms_per_step'] / sdo['ms_per_step']:.1f}x faster, "
                  f"{full['autograd_saved_mb'] / sdo['autograd_saved_mb']:.1f}x less autograd memory, "
                  f"{full['peak_memory_mb'] / max(sdo['peak_memory_mb'], 1e-9):.1f}x lower peak", flush=True)
    path = write_csv("sdo_cost", rows)
    plot_cost(rows, path.with_suffix(".png"))


def plot_cost(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["batch"], r["steps"]) for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, label in [(axes[0], "ms_per_step", "ms per optimisation step"),
                           (axes[1], "peak_memory_mb", "peak memory above the step's start (MB)"),
                           (axes[2], "autograd_saved_mb", "saved for backward (MB)")]:
        for k, method in enumerate(METHODS):
            cells = {(r["batch"], r["steps"]): r[key] for r in rows if r["method"] == method}
            ax.bar([i + 0.4 * k for i in range(len(groups))], [cells[g] for g in groups], width=0.4,
                   label="SDO (one step)" if method == "sdo" else "full backprop")
        ax.set_xticks([i + 0.2 for i in range(len(groups))], [f"B{b}\n{n} steps" for b, n in groups], fontsize=8)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("Digits model steered by the classifier: one optimisation step through DPM++(2M)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def steering(args: argparse.Namespace) -> None:
    from fused_diffusion.demo import save_panels

    denoiser, _, shape = fd.zoo.digits()
    sigmas = fd.get_sigmas_karras(args.steps, denoiser.sigma_min, denoiser.sigma_max)
    rows, pictures = [], {}
    for method, grad_step in METHODS.items():
        start = time.perf_counter()
        finals, curves, images = [], [], []
        for target in range(10):
            noise = torch.randn(8, *shape, generator=torch.Generator().manual_seed(100 + target))
            steered, hits = steer_digits(denoiser, noise, target, args.steps, grad_step, iterations=args.iterations)
            curves.append(hits)
            with torch.no_grad():
                x = fd.sample_dpmpp_2m(denoiser, steered * sigmas[0], sigmas, disable=True)
                finals.append((fd.metrics.digits_classifier()(x.clamp(-1, 1)).argmax(1) == target).float().mean())
            images.append(x)
        seconds = time.perf_counter() - start
        pictures[method] = torch.cat(images)
        mean_curve = [statistics.mean(c[i] for c in curves) for i in range(args.iterations)]
        rows.append({"method": method, "steps": args.steps, "iterations": args.iterations, "samples": 80,
                     "hit_rate_start": mean_curve[0], "hit_rate_final": float(torch.stack(finals).mean()),
                     "hit_rate_curve": " ".join(f"{h:.3f}" for h in mean_curve), "seconds": round(seconds, 1),
                     "fd_steered": fd.metrics.frechet_distance(pictures[method])})
        print(rows[-1], flush=True)
    path = write_csv("sdo_steer", rows)
    # one row per noise, one column per target class
    save_panels({f"{'SDO' if method == 'sdo' else 'full backprop'}: columns steered to 0..9":
                 images.view(10, 8, *shape).transpose(0, 1).reshape(80, *shape) for method, images in pictures.items()},
                10, path.with_suffix(".png"), figsize=(10, 8.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["cost", "steer", "one"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--method", choices=list(METHODS), default="sdo")
    parser.add_argument("--batch", type=int, default=16, help="one: noises per optimisation step")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64], help="cost: the batches to measure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "one":
        print(json.dumps(one_config(args.steps, args.method, args.device, args.batch)))
    elif args.what == "cost":
        cost(args)
    else:
        steering(args)


if __name__ == "__main__":
    main()
