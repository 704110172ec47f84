"""Steer the shipped digits model to a chosen class by optimising its initial noise through the sampler, with the
shipped classifier's cross-entropy as the loss: SDO (fd.sdo, one step keeps its graph) or full backpropagation.

    python examples/sdo_steer_digits.py --target 3 --steps 20            # -> sdo_steer_digits.png
    python examples/sdo_steer_digits.py --target 3 --steps 20 --full     # the same with full backpropagation
"""
from __future__ import annotations

import argparse
import torch
import torch.nn.functional as F

import fused_diffusion as fd
from fused_diffusion.demo import save_panels


def steer(denoiser, noise: torch.Tensor, target: int, steps: int, grad_step: int | str = "random",
          iterations: int = 30, lr: float = 0.05, solver: str = "dpmpp_2m", seed: int = 0):
    """Optimises unit-variance `noise` [B, 1, 8, 8] with Adam so that the sample is classified as `target`; the
    noise is renormalised to its norm after each step (it stays a plausible Gaussian draw). Returns the final noise
    and, per iteration, the fraction of samples classified as `target` (of the sample the step was taken on)."""
    classifier = fd.metrics.digits_classifier()
    sigmas = fd.get_sigmas_karras(steps, denoiser.sigma_min, denoiser.sigma_max)
    z = noise.clone().requires_grad_()
    norm = noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    optimizer = torch.optim.Adam([z], lr=lr)
    labels = torch.full((len(noise),), target)
    step_generator = torch.Generator().manual_seed(seed)
    hit_rates = []
    for _ in range(iterations):
        images = fd.sdo.sample(denoiser, z * sigmas[0], sigmas, solver, grad_step=grad_step,
                               step_generator=step_generator)
        logits = classifier(images.clamp(-1, 1))
        hit_rates.append((logits.argmax(1) == labels).float().mean().item())
        optimizer.zero_grad()
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        with torch.no_grad():  # back onto the sphere of the starting noise
            z.mul_(norm / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    return z.detach(), hit_rates


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
    steered, hits = steer(denoiser, noise, args.target, args.steps, "all" if args.full else "random",
                          iterations=args.iterations)
    sigmas = fd.get_sigmas_karras(args.steps, denoiser.sigma_min, denoiser.sigma_max)
    before = fd.sample_dpmpp_2m(denoiser, noise * sigmas[0], sigmas, disable=True)
    after = fd.sample_dpmpp_2m(denoiser, steered * sigmas[0], sigmas, disable=True)
    print(f"classified as {args.target}: {hits[0]:.0%} before, {hits[-1]:.0%} after {args.iterations} iterations")
    save_panels({"initial noise": before, f"steered to {args.target}": after}, 4, args.out)


if __name__ == "__main__":
    main()
