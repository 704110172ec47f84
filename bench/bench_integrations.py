"""diffusers pipelines with this library's schedulers against their own, on the shipped digits U-Net: the time of a
whole `DDPMPipeline` call (its loop, the U-Net and the scheduler) at equal steps, and the scheduler's own share with
a U-Net that is one multiply.

    python bench/bench_integrations.py --threads 2    # -> results/integrations_speed_cpu.csv
    python bench/bench_integrations.py pipelines --threads 2   # -> results/integrations_pipelines_cpu.csv
    python bench/readme_tables.py integrations

`pipelines`: host time per step of each conditional pipeline family (SD, SDXL, SD3, Flux; the tiny random ones of
fused_diffusion/testing/tiny_pipelines.py, guidance on) with a network that is one multiply, its own loop against
`accelerate(pipe)`, the pipeline's own scheduler, the same images checked first: whole calls at 1 and at --steps
steps, interleaved, the minimum each; a step's time is their difference over steps - 1, and the whole call's is
reported too.

For each scheduler (DDIM, DPM-Solver++(2M), built from one config): diffusers' scheduler in the pipeline,
`FusedScheduler.from_config(config, solver=...)` in the same pipeline, the pipeline after
`fd.integrations.accelerate(pipe, solver)`, and `fd.from_diffusers(scheduler, steps).sample` (this library's loop,
no pipeline); the minimum of --repeats runs each, interleaved, after a warm-up.
The outputs are checked equal before timing.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import fused_diffusion as fd
from common import write_csv
from fused_diffusion.integrations.diffusers import FusedScheduler

# the variance-preserving ones, which DDPMPipeline's loop (no scale_model_input, unit noise) drives as intended
SOLVERS = ("ddim", "dpmpp_2m")


class OneMultiply(torch.nn.Module):
    """A U-Net stand-in whose forward is one multiply: what remains of the time is the loop's and scheduler's."""

    def __init__(self, unet):
        super().__init__()
        self.config, self.dtype, self.device = unet.config, unet.dtype, unet.device

    def forward(self, sample, timestep, return_dict=True):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=sample * 0.5)


def best_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def one_multiply(network: torch.nn.Module) -> None:
    """The network's forward replaced by one multiply of its sample (on the instance; every attribute stays)."""
    import inspect

    first = list(inspect.signature(type(network).forward).parameters)[1]

    def forward(*args, **kwargs):
        return (0.5 * (args[0] if args else kwargs[first]),)

    network.forward = forward


def pipelines(args: argparse.Namespace) -> None:
    from fused_diffusion.testing import tiny_pipelines as tiny  # imports transformers, which `schedulers` does not need

    families = {"StableDiffusion": (tiny.sd_components, tiny.sd_pipeline, tiny.sd_embeds(1), "unet"),
                "StableDiffusionXL": (tiny.sdxl_components, tiny.sdxl_pipeline, tiny.sdxl_embeds(1), "unet"),
                "StableDiffusion3": (tiny.sd3_components, tiny.sd3_pipeline, tiny.sd3_embeds(1), "transformer"),
                "Flux": (tiny.flux_components, tiny.flux_pipeline, tiny.flux_embeds(1, negative=True), "transformer")}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU the accelerated loop is one CUDA graph
    rows = []
    for family, (components, build, embeds, network) in families.items():
        shared = components()
        one_multiply(shared[network])
        own, accelerated = build(shared).to(device), build(shared).to(device)
        fd.integrations.accelerate(accelerated)
        options = {**{k: v.to(device) for k, v in embeds.items()}, "num_inference_steps": args.steps,
                   "output_type": "latent", **({"true_cfg_scale": 2.0} if family == "Flux" else {"guidance_scale": 5.0})}
        def call(pipe, steps):
            return pipe(generator=torch.Generator(device).manual_seed(0), **{**options, "num_inference_steps": steps}).images

        pipes = {"own loop": own, "accelerate(pipe)": accelerated}
        with torch.inference_mode():
            a, b = call(own, args.steps), call(accelerated, args.steps)
            assert ((a - b).norm() / a.norm()).item() < 1e-4, f"{family}: the accelerated latents differ"
            # whole calls at 1 and at --steps steps, interleaved: the difference over steps - 1 is the host time of a
            # step, apart from what a call costs once (prompt handling, set_timesteps, setting up the run)
            timings = {(key, steps): [] for key in pipes for steps in (1, args.steps)}
            for _ in range(args.repeats):
                for (key, steps), values in timings.items():
                    values.append(best_ms(lambda: call(pipes[key], steps), 1))
        best = {cell: min(values) for cell, values in timings.items()}
        per_step = {key: (best[key, args.steps] - best[key, 1]) / (args.steps - 1) for key in pipes}
        for key in pipes:
            rows.append({"pipeline": family, "scheduler": type(own.scheduler).__name__, "method": key,
                         "steps": args.steps, "ms": round(best[key, args.steps], 3),
                         "ms_one_step": round(best[key, 1], 3), "us_per_step": round(1e3 * per_step[key], 1),
                         "speedup_per_step": round(per_step["own loop"] / per_step[key], 3),
                         "speedup_whole_call": round(best["own loop", args.steps] / best[key, args.steps], 3)})
            print(rows[-1], flush=True)
    write_csv("integrations_pipelines", rows)


def main() -> None:
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("schedulers", "pipelines"), default="schedulers")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "pipelines":
        return pipelines(args)

    unet = fd.zoo.digits().denoiser.inner_model
    config = diffusers.DDIMScheduler(clip_sample=False).config
    rows = []
    for model_name, model in (("digits U-Net", unet), ("one multiply", OneMultiply(unet))):
        for solver in SOLVERS:
            name = FusedScheduler.SOLVERS[solver]
            own = diffusers.DDPMPipeline(model, getattr(diffusers, name).from_config(config))
            fused = diffusers.DDPMPipeline(model, FusedScheduler.from_config(config, solver=solver))
            accelerated = diffusers.DDPMPipeline(model, getattr(diffusers, name).from_config(config))
            fd.integrations.accelerate(accelerated, solver=solver)
            setup = fd.from_diffusers(own.scheduler, args.steps)
            noise = torch.randn(args.batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
            for pipe in (own, fused, accelerated):
                pipe.set_progress_bar_config(disable=True)
            call = dict(batch_size=args.batch, num_inference_steps=args.steps, output_type="np")
            runs = {"diffusers scheduler": lambda p=own: p(generator=torch.Generator().manual_seed(0), **call),
                    "FusedScheduler": lambda p=fused: p(generator=torch.Generator().manual_seed(0), **call),
                    "accelerate(pipe)": lambda p=accelerated: p(generator=torch.Generator().manual_seed(0), **call),
                    "fd.from_diffusers(...).sample": lambda: setup.sample(model, noise, disable=True)}
            with torch.inference_mode():
                a = runs["diffusers scheduler"]().images
                for key in ("FusedScheduler", "accelerate(pipe)"):
                    b = runs[key]().images
                    assert abs(a - b).max() < 1e-4, f"{solver}: {key} differs from {name} by {abs(a - b).max()}"
                timings = {key: [] for key in runs}
                for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
                    for key, fn in runs.items():
                        timings[key].append(best_ms(fn, 1))
            base = min(timings["diffusers scheduler"])
            for key, values in timings.items():
                rows.append({"model": model_name, "scheduler": name, "method": key, "steps": args.steps,
                             "batch": args.batch, "ms": round(min(values), 2),
                             "speedup_vs_diffusers": round(base / min(values), 3)})
                print(rows[-1], flush=True)
    write_csv("integrations_speed", rows)


if __name__ == "__main__":
    main()
