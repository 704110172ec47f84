"""Steer the shipped digits model to a chosen class by optimising its initial noise through the sampler, with the
shipped classifier's cross-entropy as the loss: SDO (fd.sdo, one step keeps its graph) or full backpropagation. The
optimisation loop is fused_diffusion.demo.steer_digits, which bench/bench_sdo.py times.

    python examples/sdo_steer_digits.py --target 3 --steps 20            # -> sdo_steer_digits.png
    python examples/sdo_steer_digits.py --target 3 --steps 20 --full     # the same with full backpropagation
"""
from __future__ import annotations

import argparse

import torch

import fused_diffusion as fd
from fused_diffusion.demo import save_panels, steer_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=int, default=3, choices=range(10))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--full", action="store_true", help="full backpropagation instead of SDO")
    parser.add_argument("--out", default="sdo_steer_digits.png")
    args = parser.parse_args()

    denoiser, _, shape = fd.zoo.digits()
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(0))
    steered, hits = steer_digits(denoiser, noise, args.target, args.steps, "all" if args.full else "random",
                                 iterations=args.iterations)
    sigmas = fd.get_sigmas_karras(args.steps, denoiser.sigma_min, denoiser.sigma_max)
    before = fd.sample_dpmpp_2m(denoiser, noise * sigmas[0], sigmas, disable=True)
    after = fd.sample_dpmpp_2m(denoiser, steered * sigmas[0], sigmas, disable=True)
    print(f"classified as {args.target}: {hits[0]:.0%} before, {hits[-1]:.0%} after {args.iterations} iterations")
    save_panels({"initial noise": before, f"steered to {args.target}": after}, 4, args.out)


if __name__ == "__main__":
    main()
