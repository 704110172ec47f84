"""diffusers pipelines with this library's schedulers against their own, on the shipped digits U-Net: the time of a
whole `DDPMPipeline` call (its loop, the U-Net and the scheduler) at equal steps, and the scheduler's own share with
a U-Net that is one multiply.

    python bench/bench_integrations.py --threads 2    # -> results/integrations_speed_cpu.csv
    python bench/readme_tables.py integrations

For each scheduler (DDIM, DPM-Solver++(2M), built from one config): diffusers' scheduler in the pipeline,
`FusedScheduler.from_config(config, solver=...)` in the same pipeline, the pipeline after
`fd.integrations.accelerate(pipe, solver)`, and `fd.from_diffusers(scheduler, steps).sample` (this library's loop,
no pipeline); the minimum of --repeats runs each, interleaved, after a warm-up.
The outputs are checked equal before timing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fused_diffusion as fd  # noqa: E402
from bench_digits import write_csv  # noqa: E402
from fused_diffusion.integrations.diffusers import FusedScheduler  # noqa: E402

# the variance-preserving ones, which DDPMPipeline's loop (no scale_model_input, unit noise) drives as intended
SCHEDULERS = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}


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


def main() -> None:
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    unet = fd.zoo.digits().denoiser.inner_model
    config = diffusers.DDIMScheduler(clip_sample=False).config
    rows = []
    for model_name, model in (("digits U-Net", unet), ("one multiply", OneMultiply(unet))):
        for solver, name in SCHEDULERS.items():
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
