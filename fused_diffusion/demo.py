"""`python -m fused_diffusion demo`: the shipped digits model sampled with every ODE solver at a few model-call
budgets, with pictures and the quality metric; `demo --gmm`: the analytic Gaussian mixture against its exact ODE
solution. Also what the examples and benches do with the digits model alike: picture grids, steering noise to a
class through fd.sdo."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

import fused_diffusion as fd
from fused_diffusion import cli_args


# the solvers compared (fd.solvers names), each with the option sets it may run with; AMED's analytic first step
# saves one call, so odd budgets run it without
ODE_SOLVERS: dict[str, list[dict]] = {
    "euler": [{}],
    "heun": [{}],
    "dpm_2": [{}],
    "dpmpp_2m": [{}],
    "amed": [{"afs": True}, {"afs": False}],
}


@dataclass
class SolverRun:
    """One solver at one model-call budget: the configuration with the most calls within it."""
    solver: str
    budget: int
    calls: int
    sample: Callable[[Callable, Tensor], Tensor]  # (denoiser, unit-variance noise) -> images


def within_budget(name: str, budget: int) -> tuple[int, int, dict]:
    """(calls, steps, options) of the option set of ODE_SOLVERS[name] and step count with the most model calls
    <= budget on a schedule ending at 0 (earlier option sets win ties)."""
    candidates = []
    for k, options in enumerate(ODE_SOLVERS[name]):
        solver = fd.solvers.get_solver(name, **options)
        steps = solver.steps_for(budget)
        if steps is not None:
            candidates.append((solver.calls(steps), -k, steps, options))
    calls, _, steps, options = max(candidates, key=lambda c: c[:2])
    return calls, steps, options


def solver_runs(budget: int, sigma_min: float, sigma_max: float, alphas_cumprod: Tensor) -> list[SolverRun]:
    """Every ODE solver of the library at `budget` model calls: Karras schedules from sigma_max to 0, and DDIM."""
    runs = []
    for name in ODE_SOLVERS:
        calls, steps, options = within_budget(name, budget)
        sigmas = fd.get_sigmas_karras(steps, sigma_min, sigma_max)

        def sample(den, noise, solver=fd.solvers.get_solver(name, **options), sigmas=sigmas):
            return fd.solvers.sample(solver, den, noise * sigmas[0], sigmas.to(noise.device), disable=True)

        runs.append(SolverRun(name, budget, calls, sample))
    ddim_solver = fd.solvers.get_solver("ddim", alphas_cumprod=alphas_cumprod)
    ddim_steps = ddim_solver.steps_for(budget)

    def ddim(den, noise):
        # DDIM takes variance-preserving noise; trailing spacing starts at the last training step (sigma_max),
        # so it solves the same ODE from the same noise as the solvers above
        scale = sigma_max / (1 + sigma_max**2) ** 0.5
        return fd.sample_ddim(den.inner_model, noise * scale, alphas_cumprod, ddim_steps, timestep_spacing="trailing",
                              clip_sample=False, disable=True)

    return runs + [SolverRun("ddim", budget, ddim_solver.calls(ddim_steps), ddim)]


def image_grid(images: Tensor, columns: int) -> Tensor:
    """[N, 1, R, R] in [-1, 1] -> one [rows * R, columns * R] image in [0, 1] with 1-pixel gaps."""
    n, _, r, _ = images.shape
    rows = -(-n // columns)
    grid = torch.full((rows * (r + 1) - 1, columns * (r + 1) - 1), 0.2)  # light gray gaps
    for k, image in enumerate(images[:, 0].clamp(-1, 1).add(1).div(2)):
        i, j = divmod(k, columns)
        grid[i * (r + 1): i * (r + 1) + r, j * (r + 1): j * (r + 1) + r] = image
    return grid


def save_panels(panels: dict[str, Tensor], columns: int, path: str | Path,
                figsize: tuple[float, float] = (8, 4.5)) -> None:
    """Image grids ([N, 1, R, R] in [-1, 1]) side by side, each titled with its key, saved as one picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items()):
        ax.imshow(image_grid(images, columns), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")



def steer_digits(denoiser: Callable[..., Tensor], noise: Tensor, target: int, steps: int,
                 grad_step: int | str = "random", iterations: int = 30, lr: float = 0.05, solver: str = "dpmpp_2m",
                 seed: int = 0) -> tuple[Tensor, list[float]]:
    """Optimises unit-variance digits `noise` [B, 1, 8, 8] with Adam, through `steps` solver steps of fd.sdo.sample
    (`grad_step` "random": SDO, "all": full backpropagation), so that the shipped classifier takes the sample for
    digit `target`; the noise is renormalised to its norm after each step (it stays a plausible Gaussian draw).
    Returns the final noise and, per iteration, the fraction of samples classified as `target` (of the sample the
    step was taken on)."""
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
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        with torch.no_grad():  # back onto the sphere of the starting noise
            z.mul_(norm / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    return z.detach(), hit_rates

def save_pictures(results: list[dict], samples: dict[tuple[str, int], Tensor], budgets: list[int], data_fd: float,
                  out: Path, shown: int = 36) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    solvers = list(dict.fromkeys(r["solver"] for r in results))
    columns = int(shown**0.5)
    fig, axes = plt.subplots(len(solvers), len(budgets), figsize=(2.6 * len(budgets), 2.7 * len(solvers)),
                             squeeze=False)
    for i, solver in enumerate(solvers):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            ax.imshow(image_grid(samples[solver, budget][:shown].cpu(), columns), cmap="gray_r", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            row = next(r for r in results if r["solver"] == solver and r["budget"] == budget)
            ax.set_title(f"{row['calls']} calls, FD {row['fd']:.1f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(solver, fontsize=11)
    fig.suptitle("digits model: the same noise, one row per solver", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for solver in solvers:
        rows = [r for r in results if r["solver"] == solver]
        for k, (metric, label) in enumerate([("fd", "Frechet distance (classifier features)"),
                                             ("trajectory_error", "trajectory error (RMS vs 1000-call solve)")]):
            axes[k][0].plot([r["calls"] for r in rows], [r[metric] for r in rows], "o-", label=solver)
            axes[k][1].plot([r["ms"] for r in rows], [r[metric] for r in rows], "o-", label=solver)
            axes[k][0].set_ylabel(label)
    for ax in axes[0]:
        ax.axhline(data_fd, color="gray", linestyle="--", label="train digits (data floor)")
    for ax in axes.flat:
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1][0].set_xlabel("model calls")
    axes[1][1].set_xlabel(f"wall time for {len(next(iter(samples.values())))} samples (ms)")
    axes[0][0].legend()
    fig.suptitle("sample quality against model calls and wall time")
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=110)
    plt.close(fig)


def digits_demo(args: argparse.Namespace) -> list[dict]:
    from fused_diffusion import metrics
    from fused_diffusion.zoo.data import load_digits_split

    device = torch.device(args.device)
    denoiser, alphas_cumprod, shape = fd.zoo.digits(device=device)
    sigma_min, sigma_max = denoiser.sigma_min, denoiser.sigma_max
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    start = time.perf_counter()
    reference = metrics.reference_solution(denoiser, noise[: args.reference_samples] * sigma_max, sigma_min,
                                           sigma_max, calls=args.reference_calls)
    print(f"digits model, {args.samples} samples, {device}, backend {fd.backends()['active'][device.type]}; "
          f"reference solve ({args.reference_calls} calls, {len(reference)} samples) "
          f"{time.perf_counter() - start:.1f} s")
    print("fd: Frechet distance to the held-out digits in the digits classifier's feature space (not FID); "
          "conf: mean classifier confidence; H: entropy of predicted classes (ln 10 = 2.30 is all classes); "
          f"traj: RMS distance to the reference solve of the same noise")
    print(f"{'solver':<10}{'calls':>6}{'fd':>8}{'conf':>7}{'H':>6}{'traj':>9}{'ms':>9}")
    train = load_digits_split().train_images[: args.samples]
    data_fd = metrics.frechet_distance(train)
    confidence, entropy = metrics.classifier_scores(train)
    print(f"{'(data)':<10}{'':>6}{data_fd:>8.2f}{confidence:>7.3f}{entropy:>6.2f}  <- {len(train)} train digits")
    results, samples = [], {}
    for budget in args.calls:
        for run in solver_runs(budget, sigma_min, sigma_max, alphas_cumprod):
            start = time.perf_counter()
            images = run.sample(denoiser, noise)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - start) * 1e3
            quality = metrics.evaluate(images)
            quality["trajectory_error"] = metrics.trajectory_error(images[: len(reference)], reference)
            row = {"solver": run.solver, "budget": budget, "calls": run.calls, "ms": ms, **quality}
            results.append(row)
            samples[run.solver, budget] = images
            print(f"{run.solver:<10}{run.calls:>6}{row['fd']:>8.2f}{row['confidence']:>7.3f}"
                  f"{row['class_entropy']:>6.2f}{row['trajectory_error']:>9.4f}{ms:>9.1f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_pictures(results, samples, args.calls, data_fd, out)
    print(f"wrote {out / 'samples.png'} and {out / 'quality.png'}")
    return results


def gmm_demo(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    gmm = fd.GaussianMixture.random(args.components, args.dim, seed=0).to(device)
    noise = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(0)).to(device) * args.sigma_max
    exact = gmm.ode_solution(noise.double(), args.sigma_max).float()
    print(f"Gaussian mixture: {args.components} components in {args.dim} dims, batch {args.batch}, {device}; "
          f"backend {fd.backends()['active'][device.type]}")
    print(f"error = median over samples of ||x - exact ODE solution|| / ||exact|| "
          f"(Karras schedule, sigma {args.sigma_min}..{args.sigma_max})")
    print(f"{'solver':<10}{'steps':>6}{'calls':>7}{'error':>11}{'ms':>9}")
    for name, variants in ODE_SOLVERS.items():
        solver = fd.solvers.get_solver(name, **variants[0])
        for steps in args.steps:
            sigmas = fd.get_sigmas_karras(steps, args.sigma_min, args.sigma_max, device=device)
            start = time.perf_counter()
            x = fd.solvers.sample(solver, gmm, noise, sigmas, disable=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - start) * 1e3
            error = ((x - exact).norm(dim=1) / exact.norm(dim=1)).median().item()
            print(f"{name:<10}{steps:>6}{solver.calls(steps):>7}{error:>11.2e}{ms:>9.1f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gmm", action="store_true", help="the analytic Gaussian mixture instead of the digits model")
    parser.add_argument("--device", type=cli_args.device, default="cuda" if torch.cuda.is_available() else "cpu")
    digits = parser.add_argument_group("digits model")
    digits.add_argument("--calls", type=cli_args.count(), nargs="+", default=[5, 10, 20], help="model-call budgets")
    digits.add_argument("--samples", type=cli_args.count(2), default=300, help="samples per solver and budget (FD needs 2)")
    digits.add_argument("--reference-samples", type=cli_args.count(), default=50,
                        help="how many of the samples get the 1000-call reference solve (trajectory error)")
    digits.add_argument("--reference-calls", type=cli_args.count(), default=1000)
    digits.add_argument("--seed", type=cli_args.seed, default=0)
    digits.add_argument("--out", type=cli_args.folder, default="demo", help="folder for samples.png and quality.png")
    gmm = parser.add_argument_group("Gaussian mixture (--gmm)")
    gmm.add_argument("--steps", type=cli_args.count(), nargs="+", default=[5, 10, 20, 40])
    gmm.add_argument("--dim", type=cli_args.count(), default=64)
    gmm.add_argument("--components", type=cli_args.count(), default=8)
    gmm.add_argument("--batch", type=cli_args.count(), default=256)
    gmm.add_argument("--sigma-min", type=cli_args.real(above=0), default=0.002)
    gmm.add_argument("--sigma-max", type=cli_args.real(above=0), default=80.0)


# each mode's options: one of the other mode given another value is refused by name, not ignored
MODE_OPTIONS = {True: ("steps", "dim", "components", "batch", "sigma_min", "sigma_max"),
                False: ("calls", "samples", "reference_samples", "reference_calls", "seed", "out")}


def check_mode_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    defaults = parser.parse_args([])  # converted by the options' types, as the given values are
    for name in MODE_OPTIONS[not args.gmm]:
        if getattr(args, name) != getattr(defaults, name):
            parser.error(f"argument --{name.replace('_', '-')}: belongs to the "
                         f"{'digits demo (without --gmm)' if args.gmm else 'Gaussian mixture demo (--gmm)'}")
    if args.gmm and args.sigma_min >= args.sigma_max:
        parser.error(f"argument --sigma-min: must be below --sigma-max, got {args.sigma_min} and {args.sigma_max}")


def main(args: argparse.Namespace) -> None:
    if args.gmm:
        gmm_demo(args)
    else:
        digits_demo(args)
