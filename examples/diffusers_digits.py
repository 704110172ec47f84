"""The shipped digits U-Net as a diffusers DDPMPipeline, sampled by its own loop and after
`fd.integrations.accelerate`, offline: the same images, and how long each took.

    python examples/diffusers_digits.py --solver dpmpp_2m --steps 20     # -> diffusers_digits.png
"""
from __future__ import annotations

import argparse
import time

import diffusers
import torch

import fused_diffusion as fd
from fused_diffusion.demo import save_panels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solver", choices=["ddim", "dpmpp_2m"], default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="diffusers_digits.png")
    args = parser.parse_args()

    unet = fd.zoo.digits().denoiser.inner_model
    scheduler = {"ddim": diffusers.DDIMScheduler(clip_sample=False), "dpmpp_2m": diffusers.DPMSolverMultistepScheduler()}
    pipe = diffusers.DDPMPipeline(unet, scheduler[args.solver])
    pipe.set_progress_bar_config(disable=True)
    results = {}
    for label in ("own loop", "accelerated"):
        if label == "accelerated":
            fd.integrations.accelerate(pipe, solver=args.solver)
        for _ in range(2):  # the second call is timed: the first builds tables (and on CUDA captures the graph)
            start = time.perf_counter()
            results[label] = pipe(batch_size=args.batch, num_inference_steps=args.steps, output_type="pt",
                                  generator=torch.Generator().manual_seed(0)).images
        print(f"{label}: {time.perf_counter() - start:.2f} s")
    fd.integrations.undo(pipe)
    print(f"largest pixel difference: {(results['own loop'] - results['accelerated']).abs().max():.2e}")
    save_panels({label: images * 2 - 1 for label, images in results.items()}, 8, args.out)  # pipeline: [0, 1]


if __name__ == "__main__":
    main()
