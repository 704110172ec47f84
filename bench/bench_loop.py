"""Whole sampling loops on one GPU, side by side in one run: the same U-Net, the same 18-step Heun schedule
(35 model calls), five ways of running it.

    python bench/bench_loop.py                                  # both models, batches 1/128 (CIFAR) and 1/8 (SD)
    python bench/bench_loop.py --models ddpm-cifar10 --batches 1
    python bench/bench_loop.py --device cpu --tiny              # smoke test of the script itself; writes nothing

methods:
  eager            k-diffusion-style Python loop, eager model, torch ops for the solver arithmetic
  diffusers        diffusers HeunDiscreteScheduler loop (Karras sigmas), eager model
  reduce_overhead  the eager loop around torch.compile(model, mode="reduce-overhead")
  fd_graph         fd.Sampler: the whole loop in one CUDA graph, eager model, fused solver stages
  fd_graph_inductor fd.Sampler around torch.compile(model, mode=--inductor-mode), "default" unless told
plus "model_graph": one model call captured alone, whose replay time x 35 is the floor for the loop overhead.

Writes bench/results/loop_<gpu>.csv (GPU name, torch/triton/diffusers versions, the command) and a plot.
Random weights: timing does not depend on them. SD runs classifier-free guidance (batch doubled in the model).
"""
from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import fused_diffusion as fd
from common import RESULTS
from fused_diffusion.ops import use_backend

STEPS = 18  # Heun: 35 model calls


def cifar_unet(tiny: bool):
    from diffusers import UNet2DModel

    channels = (32, 32, 32, 32) if tiny else (128, 256, 256, 256)  # google/ddpm-cifar10-32
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=channels,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), freq_shift=1,
        flip_sin_to_cos=False, norm_num_groups=32 if not tiny else 8,
    ), (3, 32, 32), None


def sd_unet(tiny: bool):
    from diffusers import UNet2DConditionModel

    channels = (32, 32, 64, 64) if tiny else (320, 640, 1280, 1280)  # runwayml/stable-diffusion-v1-5 unet
    cross = 32 if tiny else 768
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross, attention_head_dim=8, norm_num_groups=32 if not tiny else 8,
    )
    return unet, (4, 16, 16) if tiny else (4, 64, 64), (77, cross)


MODELS = {"ddpm-cifar10": (cifar_unet, (1, 128)), "sd15": (sd_unet, (1, 8))}


class Case:
    """One model at one batch size: the U-Net, its denoiser (with CFG for SD), inputs and schedule."""

    def __init__(self, name: str, batch: int, device: str, dtype: torch.dtype, tiny: bool):
        build, _ = MODELS[name]
        unet, shape, cond = build(tiny)
        self.name, self.batch, self.device, self.dtype = name, batch, device, dtype
        self.unet = unet.to(device, dtype).eval().requires_grad_(False)
        self.alphas_cumprod = fd.ddpm_alphas_cumprod(1000, beta_schedule="scaled_linear" if cond else "linear")
        generator = torch.Generator().manual_seed(0)
        self.noise_unit = torch.randn(batch, *shape, generator=generator).to(device, dtype)
        self.extra: dict = {}
        if cond is not None:
            text = torch.randn(2, batch, *cond, generator=generator).to(device, dtype)
            self.extra = dict(cond=text[0], uncond=text[1])
        den = fd.EpsDenoiser(self.unet, self.alphas_cumprod).to(device)
        self.sigmas = fd.get_sigmas_karras(STEPS, den.sigma_min, den.sigma_max, device=device)
        self.noise = self.noise_unit * self.sigmas[0]

    def denoiser(self, unet: Callable) -> Callable:
        den = fd.EpsDenoiser(unet, self.alphas_cumprod).to(self.device)
        return fd.CFGDenoiser(den, 7.5, cond_kwarg="encoder_hidden_states") if self.extra else den

    def model_once(self, unet: Callable) -> Callable[[], object]:
        """One model call as the loop makes it (CFG doubles the batch)."""
        x = self.noise_unit.repeat(2 if self.extra else 1, *[1] * (self.noise_unit.dim() - 1))
        t = torch.full((x.shape[0],), 500.0, device=self.device)
        kwargs = {"encoder_hidden_states": torch.cat([self.extra["uncond"], self.extra["cond"]])} if self.extra else {}
        return lambda: unet(x, t, **kwargs)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, reps: int) -> tuple[float, float]:
    """(seconds of the first call, median ms of `reps` later calls)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return first, statistics.median(times)


def eager_heun(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra: dict) -> torch.Tensor:
    """k-diffusion 0.1.1's sample_heun (no churn) as users run it: Python loop, torch arithmetic."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra)
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def diffusers_heun(case: Case) -> Callable[[], torch.Tensor]:
    from diffusers import HeunDiscreteScheduler

    scheduler = HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear" if case.extra else "linear",
                                      use_karras_sigmas=True)

    def loop():
        scheduler.set_timesteps(STEPS, device=case.device)
        x = case.noise_unit * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            if case.extra:
                model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
                hidden = torch.cat([case.extra["uncond"], case.extra["cond"]])
                uncond, cond = case.unet(model_in, t, encoder_hidden_states=hidden).sample.chunk(2)
                eps = uncond + 7.5 * (cond - uncond)
            else:
                eps = case.unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(eps, t, x).prev_sample
        return x

    return loop


def graph_replay_ms(fn: Callable[[], object], reps: int) -> float:
    """Median ms of replaying `fn` captured alone in a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return timed(graph.replay, "cuda", reps)[1]


def memory_stats(device: str) -> dict:
    if device != "cuda":
        return {"peak_alloc_mib": "", "nvml_used_mib": ""}
    row = {"peak_alloc_mib": round(torch.cuda.max_memory_allocated() / 2**20)}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        row["nvml_used_mib"] = round(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
    except Exception as error:  # noqa: BLE001 - nvml is optional; say why it is missing
        row["nvml_used_mib"] = f"n/a ({type(error).__name__})"
    return row


def run_case(case: Case, methods: list[str], reps: int, inductor_mode: str) -> list[dict]:
    device, rows = case.device, []
    calls = fd.solvers.get_solver("heun").calls(STEPS)

    def record(method: str, fn: Callable[[], object], floor_ms: float | None = None, setup_note: str = ""):
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        first, ms = timed(fn, device, reps)
        row = dict(model=case.name, batch=case.batch, method=method, model_calls=calls, ms=round(ms, 3),
                   first_call_s=round(first, 3), setup=setup_note, **memory_stats(device))
        row["loop_overhead_pct"] = round(100 * (ms / floor_ms - 1), 2) if floor_ms else ""
        rows.append(row)
        print(f"{case.name:<13}{case.batch:>5}  {method:<18}{ms:>10.2f} ms  first call {first:7.2f} s", flush=True)

    with torch.inference_mode(), use_backend("torch"):
        eager_model = case.denoiser(case.unet)
        if "eager" in methods:
            record("eager", lambda: eager_heun(eager_model, case.noise, case.sigmas, case.extra))
        if "diffusers" in methods:
            record("diffusers", diffusers_heun(case))
        if "reduce_overhead" in methods and device == "cuda":
            compiled = case.denoiser(torch.compile(case.unet, mode="reduce-overhead"))
            record("reduce_overhead", lambda: eager_heun(compiled, case.noise, case.sigmas, case.extra),
                   setup_note="first call = compile + cudagraph record")
    with torch.inference_mode():
        floor = graph_replay_ms(case.model_once(case.unet), reps) * calls if device == "cuda" else None
        if "fd_graph" in methods:
            sampler = fd.Sampler(case.denoiser(case.unet), "heun", case.sigmas, extra_args=case.extra)
            record("fd_graph", lambda: sampler(case.noise), floor, "first call = warm-up + capture")
        if "fd_graph_inductor" in methods and device == "cuda":
            inductor = torch.compile(case.unet, mode=inductor_mode)
            compiled_floor = graph_replay_ms(case.model_once(inductor), reps) * calls
            sampler = fd.Sampler(case.denoiser(inductor), "heun", case.sigmas, extra_args=case.extra)
            record("fd_graph_inductor", lambda: sampler(case.noise), compiled_floor,
                   f"inductor mode={inductor_mode}; first call = capture (compiled just before, for the floor)")
        if floor:
            rows.append(dict(model=case.name, batch=case.batch, method=f"model_graph_x{calls}", model_calls=calls,
                             ms=round(floor, 3), first_call_s="", setup=f"one model call graphed, replay x {calls}",
                             peak_alloc_mib="", nvml_used_mib="", loop_overhead_pct=""))
    by_method = {r["method"]: r["ms"] for r in rows}
    for r in rows:
        r["vs_eager"] = round(r["ms"] / by_method["eager"], 4) if "eager" in by_method else ""
        r["vs_reduce_overhead"] = round(r["ms"] / by_method["reduce_overhead"], 4) if "reduce_overhead" in by_method else ""
    return rows


def environment() -> dict:
    import diffusers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return dict(gpu=gpu, torch=torch.__version__, triton=triton_version, diffusers=diffusers.__version__,
                command=" ".join(shlex.quote(a) for a in ["python", *sys.argv]))


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4), squeeze=False)
    for ax, (model, batch) in zip(axes[0], groups):
        sub = [r for r in rows if (r["model"], r["batch"]) == (model, batch)]
        ax.bar([r["method"] for r in sub], [r["ms"] for r in sub])
        ax.set_title(f"{model}, batch {batch}")
        ax.set_ylabel(f"ms per sample loop ({sub[0]['model_calls']} model calls)")
        ax.set_yscale("log")
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", help="default: 1 and 128 (CIFAR), 1 and 8 (SD)")
    parser.add_argument("--methods", nargs="+",
                        default=["eager", "diffusers", "reduce_overhead", "fd_graph", "fd_graph_inductor"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--inductor-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"])
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny U-Nets, to smoke-test this script")
    parser.add_argument("--tag", default="", help="suffix for the results file name")
    args = parser.parse_args()
    if args.device == "cpu" and not args.tiny:
        print("bench_loop measures GPU sampling; without CUDA run it with --device cpu --tiny as a smoke test")
        return 0
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.device == "cpu":
        dtype = torch.float32
    env = environment()
    rows = []
    for model in args.models:
        for batch in args.batches or MODELS[model][1]:
            rows += run_case(Case(model, batch, args.device, dtype, args.tiny), args.methods, args.reps,
                             args.inductor_mode)
    if args.device != "cuda":
        print("smoke test done; nothing written (numbers only ever come from a GPU)")
        return 0
    RESULTS.mkdir(exist_ok=True)
    stem = f"loop_{env['gpu'].replace(' ', '_')}{args.tag}"
    fields = [*env, "dtype", "model", "batch", "method", "model_calls", "ms", "vs_eager", "vs_reduce_overhead",
              "loop_overhead_pct", "first_call_s", "setup", "peak_alloc_mib", "nvml_used_mib"]
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**env, "dtype": args.dtype, **r})
    plot(rows, RESULTS / f"{stem}.png", f"{env['gpu']}, torch {env['torch']}, {args.dtype}")
    print(f"wrote {RESULTS / stem}.csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
