"""DeepCache and Skip-Tuning: speed on an SD-1.5-config U-Net and the digits model, the fused concat against torch,
and the quality cost on the digits model.

    python bench/bench_unet.py speed      # time per full sample, DeepCache interval 1/2/3/5 and Skip-Tuning
    python bench/bench_unet.py overhead   # Skip-Tuning's cost per SD-1.5 U-Net forward, interleaved repeats
    python bench/bench_unet.py concat     # skip_concat vs torch.cat([h, rho * skip]) at SD-1.5 up-block shapes
    python bench/bench_unet.py quality    # digits: FD / trajectory error of DeepCache settings, Skip-Tuning rho sweep
    python bench/bench_unet.py pictures   # the same digits noise without and with each feature (a PNG)
    python bench/bench_unet.py all

Writes bench/results/unet_<part>_<machine>.csv (machine, threads, versions, command in every row) and plots. On CPU
the samplers run eagerly; with --device cuda `fd.Sampler` captures the whole loop (DeepCache's full and shallow
calls in one graph) and replays are timed. Speed ratios are taken between rows of one run, settings interleaved.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import fused_diffusion as fd
from common import RESULTS, write_csv
from fused_diffusion.provenance import environment
from fused_diffusion import demo, metrics, ops
from fused_diffusion.zoo.data import load_digits_split

INTERVALS = [1, 2, 3, 5]


def sd15_unet(device: str):
    """The SD-1.5 U-Net configuration (runwayml/stable-diffusion-v1-5), random weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    ).eval().requires_grad_(False).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def enable(unet, interval: int, rho: float | None) -> list:
    """Handles of the features of one setting (interval 1 and rho None: the plain U-Net)."""
    handles = [fd.unet.enable_deepcache(unet, interval=interval)] if interval > 1 else []
    return handles + ([fd.unet.enable_skip_tuning(unet, rho)] if rho is not None else [])


def sample_timer(den, shape: tuple, extra: dict, steps: int, device: str) -> Callable[[], float]:
    """A function timing one full sample (Euler, `steps` model calls): eager on CPU, a graph replay on CUDA."""
    sigmas = fd.get_sigmas_karras(steps, 0.03, 14.6, device=device)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device) * sigmas[0]
    if device.startswith("cuda"):
        sampler = fd.Sampler(den, "euler", sigmas, extra_args=extra)
        sampler(noise)  # warm-up and capture
        run = lambda: sampler(noise)  # noqa: E731
    else:
        run = lambda: fd.sample_euler(den, noise, sigmas, extra_args=extra, disable=True)  # noqa: E731

    def timed() -> float:
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        return time.perf_counter() - start

    return timed


def speed(args: argparse.Namespace) -> None:
    device = args.device
    rows = []
    cases = [("sd15", b) for b in (1, 2)] + [("digits", args.digits_batch)]
    for model, batch in cases:
        if model == "sd15":
            unet = sd15_unet(device)
            den = fd.EpsDenoiser(unet, fd.ddpm_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear"))
            shape = (batch, 4, args.latent, args.latent)
            extra = {"encoder_hidden_states": torch.randn(batch, 77, 768, device=device)}
        else:
            den, _, sample_shape = fd.zoo.digits(device=device)
            unet, shape, extra = den.inner_model, (batch, *sample_shape), {}
        settings = {"plain": (1, None)} | {f"deepcache_{i}": (i, None) for i in INTERVALS[1:]} | {
            "skip_tuning": (1, 0.9)}
        times = {name: [] for name in settings}
        if device.startswith("cuda"):  # one captured graph per setting, its replays timed
            for name, setting in settings.items():
                handles = enable(unet, *setting)
                timer = sample_timer(den, shape, extra, args.steps, device)
                times[name] = [timer() for _ in range(args.repeats)]
                for h in handles:
                    h.disable()
        else:  # eager: settings interleaved, so drift of the machine hits every setting alike
            timer = sample_timer(den, shape, extra, args.steps, device)
            for repeat in range(args.repeats + 1):
                for name, setting in settings.items():
                    handles = enable(unet, *setting)
                    elapsed = timer()
                    for h in handles:
                        h.disable()
                    if repeat > 0:  # the first round warms up
                        times[name].append(elapsed)
        base = statistics.median(times["plain"])
        for name, values in times.items():
            median = statistics.median(values)
            rows.append({"model": model, "batch": batch, "latent": shape[-1], "steps": args.steps, "setting": name,
                         "s_per_sample": round(median, 4), "vs_plain": round(median / base, 4),
                         "runs": len(values)})
            print(f"{model:<7}{batch:>3}  {name:<13}{median:9.3f} s  {median / base:6.3f}x plain", flush=True)
        del unet, den
    path = write_csv("unet_speed", rows)
    plot_speed(rows, path.with_suffix(".png"))


def plot_speed(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["model"], r["batch"]) for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, ax = plt.subplots(figsize=(10.5, 4))
    width = 0.8 / len(settings)
    for k, setting in enumerate(settings):
        values = [next(r["vs_plain"] for r in rows if (r["model"], r["batch"]) == c and r["setting"] == setting)
                  for c in cases]
        ax.bar([i + k * width for i in range(len(cases))], values, width, label=setting)
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="target for DeepCache interval 3")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], [f"{m} B={b}" for m, b in cases])
    ax.set_ylabel("time per sample / plain U-Net")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"DeepCache and Skip-Tuning (rho_bottom 0.9), {environment()['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def overhead(args: argparse.Namespace) -> None:
    """Skip-Tuning's cost on one SD-1.5-config U-Net forward: plain and Skip-Tuning forwards interleaved, many times
    (the per-sample timings of `speed` vary by several percent on a shared CPU)."""
    device = args.device
    unet = sd15_unet(device)
    rows = []
    for batch in (1, 2):
        x = torch.randn(batch, 4, args.latent, args.latent, device=device)
        t = torch.full((batch,), 500, device=device)
        context = torch.randn(batch, 77, 768, device=device)
        times = {"plain": [], "skip_tuning": []}
        for repeat in range(args.repeats * 5 + 1):
            for name in times:
                handle = fd.unet.enable_skip_tuning(unet, 0.9) if name == "skip_tuning" else None
                sync(device)
                start = time.perf_counter()
                unet(x, t, encoder_hidden_states=context)
                sync(device)
                if repeat > 0:
                    times[name].append(time.perf_counter() - start)
                if handle is not None:
                    handle.disable()
        plain, tuned = (statistics.median(times[n]) for n in ("plain", "skip_tuning"))
        spread = statistics.quantiles(times["plain"], n=4)
        rows.append({"model": "sd15", "batch": batch, "latent": args.latent, "plain_ms": round(plain * 1e3, 2),
                     "skip_tuning_ms": round(tuned * 1e3, 2), "overhead_pct": round(100 * (tuned / plain - 1), 2),
                     "plain_iqr_ms": round((spread[2] - spread[0]) * 1e3, 2), "runs": len(times["plain"])})
        print(rows[-1], flush=True)
    write_csv("unet_overhead", rows)


def concat(args: argparse.Namespace) -> None:
    """The fused skip concatenation against torch's at the SD-1.5 up path's shapes (32x32 latent, batch 2)."""
    device = args.device
    shapes = [((2, 1280, 4, 4), (2, 1280, 4, 4)), ((2, 1280, 8, 8), (2, 640, 8, 8)), ((2, 640, 16, 16), (2, 320, 16, 16)),
              ((2, 320, 32, 32), (2, 320, 32, 32))]
    rows = []
    for dtype in ([torch.float32] if device == "cpu" else [torch.float32, torch.float16]):
        for h_shape, s_shape in shapes:
            h, skip = torch.randn(h_shape, device=device, dtype=dtype), torch.randn(s_shape, device=device, dtype=dtype)
            rho = torch.full((1,), 0.8, device=device)
            fused = lambda: ops.skip_concat(h, skip, rho)  # noqa: E731
            eager = lambda: torch.cat([h, skip * rho.to(dtype)], dim=1)  # noqa: E731
            plain = lambda: torch.cat([h, skip], dim=1)  # noqa: E731
            result = {}
            for name, fn in (("skip_concat", fused), ("torch_cat_scaled", eager), ("torch_cat", plain)):
                for _ in range(5):
                    fn()
                values = []
                for _ in range(args.repeats * 10):
                    sync(device)
                    start = time.perf_counter()
                    fn()
                    sync(device)
                    values.append(time.perf_counter() - start)
                result[name] = statistics.median(values) * 1e6
            rows.append({"h": "x".join(map(str, h_shape)), "skip": "x".join(map(str, s_shape)),
                         "dtype": str(dtype).removeprefix("torch."), "backend": ops.backends()["active"][device],
                         **{f"{k}_us": round(v, 1) for k, v in result.items()},
                         "scaled_cat_over_fused": round(result["torch_cat_scaled"] / result["skip_concat"], 2)})
            print(rows[-1], flush=True)
    write_csv("unet_concat", rows)


def quality(args: argparse.Namespace) -> None:
    """The quality cost of each DeepCache setting and the Skip-Tuning rho_bottom sweep on the digits model."""
    den, alphas_cumprod, shape = fd.zoo.digits()
    unet = den.inner_model
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(0))
    reference = metrics.reference_solution(den, noise[: args.reference_samples] * den.sigma_max, den.sigma_min,
                                           den.sigma_max)
    floor = metrics.frechet_distance(load_digits_split().train_images[: args.samples])
    print(f"data floor FD {floor:.2f}")
    rows = []

    def measure(feature: str, setting: str, solver: str, budget: int, handles: list) -> None:
        run = next(r for r in demo.solver_runs(budget, den.sigma_min, den.sigma_max, alphas_cumprod)
                   if r.solver == solver)
        start = time.perf_counter()
        images = run.sample(den, noise)
        seconds = time.perf_counter() - start
        for h in handles:
            h.disable()
        row = {"feature": feature, "setting": setting, "solver": solver, "calls": run.calls, "samples": args.samples,
               "s": round(seconds, 2), **metrics.evaluate(images), "data_fd": floor,
               "trajectory_error": metrics.trajectory_error(images[: args.reference_samples], reference)}
        rows.append(row)
        print(f"{feature:<12}{setting:<22}{solver:<10}{run.calls:>4}  FD {row['fd']:7.2f}  "
              f"traj {row['trajectory_error']:.4f}  {seconds:6.1f} s", flush=True)

    for solver in ("dpmpp_2m", "heun"):
        for budget in (20, 50):
            for interval in INTERVALS:
                for branch in ((0, 2) if interval > 1 else (0,)):
                    handles = [fd.unet.enable_deepcache(unet, interval=interval, branch=branch)] if interval > 1 else []
                    measure("deepcache", f"interval={interval} branch={branch}", solver, budget, handles)
    for solver in ("euler", "heun", "dpmpp_2m", "ddim"):
        for budget in (5, 9, 15):
            for rho in args.rhos:
                handles = [fd.unet.enable_skip_tuning(unet, rho)] if rho != 1.0 else []
                measure("skip_tuning", f"rho_bottom={rho}", solver, budget, handles)
    path = write_csv("unet_quality", rows)
    plot_rho_sweep(rows, path.with_suffix(".png"), floor)


def plot_rho_sweep(rows: list[dict], path: Path, floor: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["feature"] == "skip_tuning"]
    solvers = list(dict.fromkeys(r["solver"] for r in sweep))
    fig, axes = plt.subplots(1, len(solvers), figsize=(4 * len(solvers), 3.6), squeeze=False)
    for ax, solver in zip(axes[0], solvers):
        for calls in sorted({r["calls"] for r in sweep if r["solver"] == solver}):
            mine = [r for r in sweep if r["solver"] == solver and r["calls"] == calls]
            ax.plot([float(r["setting"].split("=")[1]) for r in mine], [r["fd"] for r in mine], "o-",
                    label=f"{calls} calls")
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(solver)
        ax.set_xlabel("rho_bottom (rho_top = 1)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("FD (digits classifier features)")
    fig.suptitle("Skip-Tuning on the digits model: FD against rho_bottom (dashed: train split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def pictures(args: argparse.Namespace) -> None:
    """The same digits noise without and with each feature, to look at: DDIM at 5 and 9 calls with Skip-Tuning,
    DPM++(2M) at 20 calls with DeepCache."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    den, alphas_cumprod, shape = fd.zoo.digits()
    unet = den.inner_model
    noise = torch.randn(36, *shape, generator=torch.Generator().manual_seed(1))
    panels = [("ddim", 5, "plain", []), ("ddim", 5, "Skip-Tuning rho_bottom 0.4", [("skip", 0.4)]),
              ("ddim", 9, "plain", []), ("ddim", 9, "Skip-Tuning rho_bottom 0.4", [("skip", 0.4)]),
              ("dpmpp_2m", 20, "plain", []), ("dpmpp_2m", 20, "DeepCache interval 3", [("cache", 3)])]
    fig, axes = plt.subplots(3, 2, figsize=(6, 9.5))
    for ax, (solver, budget, label, features) in zip(axes.flat, panels):
        handles = [fd.unet.enable_skip_tuning(unet, v) if kind == "skip" else fd.unet.enable_deepcache(unet, interval=v)
                   for kind, v in features]
        run = next(r for r in demo.solver_runs(budget, den.sigma_min, den.sigma_max, alphas_cumprod)
                   if r.solver == solver)
        images = run.sample(den, noise)
        for h in handles:
            h.disable()
        ax.imshow(demo.image_grid(images, 6), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{solver}, {run.calls} calls\n{label}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = RESULTS / "unet_samples_cpu.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["speed", "overhead", "concat", "quality", "pictures", "all"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="model calls per sample in the speed part")
    parser.add_argument("--latent", type=int, default=32, help="SD-1.5 latent size (32: a 256x256 image)")
    parser.add_argument("--digits-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000, help="digits samples per quality setting")
    parser.add_argument("--reference-samples", type=int, default=200)
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    args = parser.parse_args()
    parts = ("speed", "overhead", "concat", "quality", "pictures") if args.part == "all" else (args.part,)
    for part in parts:
        {"speed": speed, "overhead": overhead, "concat": concat, "quality": quality, "pictures": pictures}[part](args)


if __name__ == "__main__":
    main()
