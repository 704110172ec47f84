"""Command line: `python -m fused_diffusion demo` samples the built-in Gaussian mixture with every ODE solver
(no downloads) and prints the error against the exact ODE solution and the time per run;
`python -m fused_diffusion backends` prints which op backends are active and why."""
from __future__ import annotations

import argparse
import json
import time

import torch

import fused_diffusion as fd

DEMO_SOLVERS = {
    "euler": fd.sample_euler,
    "heun": fd.sample_heun,
    "dpm_2": fd.sample_dpm_2,
    "dpmpp_2m": fd.sample_dpmpp_2m,
    "amed": fd.sample_amed,
}
MODEL_CALLS = {  # per n-step run, k-diffusion schedules ending in 0
    "euler": lambda n: n,
    "heun": lambda n: 2 * n - 1,
    "dpm_2": lambda n: 2 * n - 1,
    "dpmpp_2m": lambda n: n,
    "amed": lambda n: 2 * n - 2,
}


def demo(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    gmm = fd.GaussianMixture.random(args.components, args.dim, seed=0).to(device)
    noise = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(0)).to(device) * args.sigma_max
    exact = gmm.ode_solution(noise.double(), args.sigma_max).float()
    print(f"Gaussian mixture: {args.components} components in {args.dim} dims, batch {args.batch}, {device}; "
          f"backend {fd.backends()['active'][device.type]}")
    print(f"error = median over samples of ||x - exact ODE solution|| / ||exact|| "
          f"(Karras schedule, sigma {args.sigma_min}..{args.sigma_max})")
    print(f"{'solver':<10}{'steps':>6}{'calls':>7}{'error':>11}{'ms':>9}")
    for name, sampler in DEMO_SOLVERS.items():
        for steps in args.steps:
            sigmas = fd.get_sigmas_karras(steps, args.sigma_min, args.sigma_max, device=device)
            start = time.perf_counter()
            x = sampler(gmm, noise, sigmas, disable=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - start) * 1e3
            error = ((x - exact).norm(dim=1) / exact.norm(dim=1)).median().item()
            print(f"{name:<10}{steps:>6}{MODEL_CALLS[name](steps):>7}{error:>11.2e}{ms:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fused_diffusion")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="sample the built-in Gaussian mixture with every solver")
    d.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 40])
    d.add_argument("--dim", type=int, default=64)
    d.add_argument("--components", type=int, default=8)
    d.add_argument("--batch", type=int, default=256)
    d.add_argument("--sigma-min", type=float, default=0.002)
    d.add_argument("--sigma-max", type=float, default=80.0)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sub.add_parser("backends", help="print which op backends are available and active")
    args = parser.parse_args()
    if args.command == "demo":
        demo(args)
    else:
        print(json.dumps(fd.backends(), indent=2))


if __name__ == "__main__":
    main()
