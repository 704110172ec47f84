"""`python -m fused_diffusion generate`: many samples of the shipped digits model, written as resumable shards, on
one process or on several under `torchrun --nproc_per_node N -m fused_diffusion generate ...`.

The sample set is cut into shards of `--shard-size` samples (the last may be smaller). Shard k draws its initial
noise from its own seed, `seed * 1_000_003 + k` (a CPU generator, so the noise is the same on every device), so a
shard's tensor does not depend on how many processes run or which one samples it: rank r of a world of w takes the
shards k with k % w == r. Stochastic solvers draw their per-step noise from a generator seeded from the same
shard generator, so they are reproducible per shard too.

Files in --out: `manifest.json` (the configuration, every shard's seed and size, library versions; written by
rank 0 before sampling), `shard_00000.safetensors` (tensor "images", float32 in [-1, 1], with the shard's index,
seed, size and the configuration's digest in the metadata), `shard_00000.png` with --png, `metrics.json` with
--metrics. Every file is written under a temporary name and moved into place with os.replace, so a killed run
leaves complete files or none; a rerun of the same configuration skips the complete shards (finished files are
never rewritten) and samples the rest. A folder whose manifest holds another configuration is refused before any
file is touched.

Under torchrun, spell the sample count `-n` or put `--` before `generate` (`torchrun --nproc_per_node 2 -m
fused_diffusion -- generate --num 10000 ...`): torchrun's own parser refuses `--num` as an ambiguous abbreviation of
its `--numa-binding` / `--numa_binding`.

Bit-identical shards for 1 and N processes need the same device, batch size and thread count (`--threads`,
default 1 under torchrun): CPU kernels may sum in another order with another thread count.

Test hook: with FUSED_DIFFUSION_GENERATE_PAUSE_AFTER=n in the environment a process sleeps after writing its n-th
shard, so a test can kill a run at a known point instead of racing it.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

import fused_diffusion as fd
from fused_diffusion import cli_args, files
from fused_diffusion.files import write_atomically
from fused_diffusion.sample_folder import (FORMAT, MANIFEST, SEED_MULTIPLIER, barrier, check_folder, pause_after,
                                           usage_error, write_json)

MODELS = ("digits",)
MAX_SEED = 2**63 - 1  # shard seeds stay within int64 (what torch.randint draws below and JSON readers keep exact)
METRICS = "metrics.json"


# the fd.Sampler solvers this command runs, with their default options; how many model calls a number of steps
# makes and whether they draw noise, each solver says itself (fd.solvers)
SOLVERS = ("euler", "heun", "dpm_2", "dpmpp_2m", "ipndm", "lms", "euler_ancestral", "dpm_2_ancestral",
           "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options; each bad value is argparse's one-line error naming it (cli_args)."""
    from fused_diffusion.integrations.diffusers import FusedScheduler

    parser.add_argument("--model", choices=MODELS, default="digits", help="the shipped model to sample")
    parser.add_argument("--num", "-n", type=cli_args.count(), default=None,
                        help="how many samples in all (--model; under torchrun: -n, or `--` before `generate`: "
                             "torchrun refuses --num as an ambiguous prefix of its --numa-binding)")
    parser.add_argument("--solver", choices=sorted({*SOLVERS, *FusedScheduler.SOLVERS}), default=None,
                        help="--model: an fd.Sampler solver (default dpmpp_2m); --pipeline: the diffusers scheduler "
                             "a solver reproduces (default: the pipeline's own scheduler)")
    parser.add_argument("--calls", type=cli_args.count(), default=10, help="--model: model calls per sample")
    pipeline = parser.add_argument_group("a local diffusers pipeline folder (instead of --model)")
    pipeline.add_argument("--pipeline", type=cli_args.existing_folder, default=None,
                          help="a folder written by a pipeline's save_pretrained (loaded offline)")
    pipeline.add_argument("--prompts", type=Path, default=None, help="a text file, one prompt per line")
    pipeline.add_argument("--negative-prompt", default=None)
    pipeline.add_argument("--images-per-prompt", type=cli_args.count(), default=1)
    pipeline.add_argument("--steps", type=cli_args.count(), default=20, help="inference steps")
    pipeline.add_argument("--guidance", type=cli_args.real(above=0), default=None,
                          help="guidance scale (default: the pipeline's)")
    pipeline.add_argument("--height", type=cli_args.count(), default=None)
    pipeline.add_argument("--width", type=cli_args.count(), default=None)
    pipeline.add_argument("--deepcache-interval", type=cli_args.count(), default=None,
                          help="DeepCache on the U-Net: a full call every N calls")
    pipeline.add_argument("--skip-tuning", type=cli_args.real(above=0), default=None,
                          help="Skip-Tuning on the U-Net: rho at the deepest skip")
    parser.add_argument("--out", type=cli_args.folder, required=True,
                        help="folder for the manifest, shards, pictures and metrics")
    parser.add_argument("--batch", type=cli_args.count(), default=500, help="samples per sampler call")
    parser.add_argument("--seed", type=cli_args.seed, default=0, help="shard k's seed is seed * 1000003 + k")
    parser.add_argument("--shard-size", type=cli_args.count(), default=1000, help="samples per shard file")
    parser.add_argument("--png", action="store_true", help="also a PNG grid per shard")
    parser.add_argument("--metrics", action="store_true",
                        help="Frechet distance of all samples to the held-out digits, into metrics.json")
    parser.add_argument("--device", type=cli_args.device, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="under torchrun, CUDA ranks use cuda:LOCAL_RANK")
    parser.add_argument("--threads", type=cli_args.count(), default=None,
                        help="CPU threads per process (default: torch's choice; 1 under torchrun)")


PIPELINE_ONLY = ("prompts", "negative_prompt", "deepcache_interval", "skip_tuning", "height", "width", "guidance")


def check_arguments(args: argparse.Namespace) -> int | None:
    """The number of steps for --calls (None for --pipeline), after the checks argparse cannot make alone (they
    involve two arguments)."""
    if args.pipeline is not None:
        if args.prompts is None:
            usage_error("argument --prompts: --pipeline needs a prompts file (one prompt per line)")
        if args.num is not None or args.metrics or args.png:
            usage_error("argument --pipeline: --num, --metrics and --png belong to --model (the images of a pipeline "
                        "run are one per prompt and image, each a PNG)")
        return None
    if given := [name for name in PIPELINE_ONLY if getattr(args, name) is not None]:
        usage_error(f"argument --{given[0].replace('_', '-')}: belongs to --pipeline")
    if args.num is None:
        usage_error("argument --num/-n: required with --model (how many samples in all)")
    args.solver = args.solver or "dpmpp_2m"
    if args.solver not in SOLVERS:
        usage_error(f"argument --solver: --model samples with one of {', '.join(sorted(SOLVERS))}, got {args.solver!r}")
    solver = fd.solvers.get_solver(args.solver)
    steps = solver.steps_for(args.calls)
    if steps is None or solver.calls(steps) != args.calls:
        usage_error(f"argument --calls: {args.solver} makes {solver.calls_per_step} model calls per step "
                    f"({solver.calls(1)} in the last), so --calls must be {possible_calls(solver)}, got {args.calls}")
    if args.metrics and args.num < 2:
        usage_error(f"argument --num: --metrics fits a Gaussian, which needs at least 2 samples, got {args.num}")
    last = shard_count(args.num, args.shard_size) - 1
    if last >= SEED_MULTIPLIER:  # shard seeds are distinct for indices below it (and the manifest lists every shard)
        usage_error(f"argument --num: {args.num} samples in shards of {args.shard_size} make {last + 1} shards; at most "
                    f"{SEED_MULTIPLIER} are allowed: raise --shard-size or lower --num")
    if shard_seed(args.seed, last) > MAX_SEED:
        usage_error(f"argument --seed: must be at most {(MAX_SEED - last) // SEED_MULTIPLIER} (shard seeds are "
                    f"int64), got {args.seed}")
    return steps


def possible_calls(solver: fd.solvers.Solver) -> str:
    """The model-call counts of the solver's runs on a schedule ending at 0, in words: its first few."""
    counts = [solver.calls(steps) for steps in (1, 2, 3)]
    kind = "an odd number" if all(count % 2 for count in counts) else "one of"
    return f"{kind} ({', '.join(map(str, counts))}, ...)"


def shard_count(num: int, shard_size: int) -> int:
    """Shards of `shard_size` samples needed for `num` (the last one may be smaller)."""
    return -(-num // shard_size)


def shard_seed(seed: int, index: int) -> int:
    """Shard `index`'s seed: distinct for every (seed, index) with index < 1000003."""
    return seed * SEED_MULTIPLIER + index


def shard_name(index: int) -> str:
    """The file stem of shard `index` (zero-padded so the files sort in order)."""
    return f"shard_{index:05d}"


def configuration(args: argparse.Namespace, steps: int, sigma_min: float, sigma_max: float) -> dict:
    """What determines the samples: compared with a folder's manifest before a run resumes in it. The device and
    thread count are left out (results on another device are as valid, though not bit-equal); the batch size is in
    because stochastic solvers draw their per-step noise per batch."""
    return {"format": FORMAT, "model": args.model, "num": args.num, "solver": args.solver, "calls": args.calls,
            "steps": steps, "schedule": {"kind": "karras", "sigma_min": sigma_min, "sigma_max": sigma_max, "rho": 7.0},
            "shard_size": args.shard_size, "batch": args.batch, "seed": args.seed,
            "shard_seed": f"seed * {SEED_MULTIPLIER} + shard index"}


def digest(config: dict) -> str:
    """A short hash of the configuration, stored in every shard so a shard of another run never passes as done."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def new_manifest(config: dict) -> dict:
    """The folder's description: configuration, its digest, every shard's file, seed and size, library versions."""
    sizes = [min(config["shard_size"], config["num"] - k * config["shard_size"])
             for k in range(shard_count(config["num"], config["shard_size"]))]
    shards = [{"index": k, "file": f"{shard_name(k)}.safetensors", "seed": shard_seed(config["seed"], k),
               "samples": size} for k, size in enumerate(sizes)]
    import diffusers

    versions = {"fused_diffusion": importlib.metadata.version("fused_diffusion"), "torch": torch.__version__,
                "diffusers": diffusers.__version__}
    return {"config": config, "digest": digest(config), "shards": shards, "versions": versions}


def shard_metadata(shard: dict, config_digest: str) -> dict:
    """What a shard file records of itself: its index, seed and size, and the configuration's digest."""
    return {"index": shard["index"], "seed": shard["seed"], "samples": shard["samples"], "digest": config_digest}


def read_shard(path: Path, shard: dict, config_digest: str) -> Tensor | None:
    """The shard's images if `path` is a complete shard of this configuration (readable, its index, seed and digest
    in the metadata, the right number of samples), else None."""
    try:
        tensors, meta = files.read(path, files.GENERATE_SHARD)
    except (OSError, ValueError):
        return None
    expected = shard_metadata(shard, config_digest)
    images = tensors.get("images")
    if any(meta.get(key) != value for key, value in expected.items()) or images is None or len(images) != shard["samples"]:
        return None
    return images


def write_shard(out: Path, shard: dict, images: Tensor, config_digest: str, png: bool) -> None:
    """The PNG grid (with --png) first, then the tensor: a shard file that exists has its picture. Written in
    canonical bytes (fused_diffusion.files), so a shard's file does not depend on the process that wrote it."""
    if png:
        write_png(out / f"{shard_name(shard['index'])}.png", images)
    files.save(out / shard["file"], {"images": images}, files.GENERATE_SHARD, **shard_metadata(shard, config_digest))


def write_png(path: Path, images: Tensor) -> None:
    """The images as one near-square grid (dark strokes on white, as the demo draws them), atomically."""
    from matplotlib import image

    from fused_diffusion.demo import image_grid

    grid = image_grid(images, columns=math.ceil(len(images) ** 0.5))
    write_atomically(path, lambda tmp: image.imsave(tmp, grid.numpy(), cmap="gray_r", vmin=0, vmax=1, format="png"))


def sample_shard(sampler: fd.Sampler, shard: dict, shape: tuple[int, ...], batch: int, device: torch.device,
                 progress: tqdm) -> Tensor:
    """The shard's images: noise from the shard's seed on the CPU, sampled `batch` samples at a time; a stochastic
    solver's generator is reseeded from the same CPU generator, so its noise is the shard's too."""
    generator = torch.Generator().manual_seed(shard["seed"])
    noise = torch.randn(shard["samples"], *shape, generator=generator)
    if sampler.generator is not None:
        sampler.generator.manual_seed(int(torch.randint(MAX_SEED, (), generator=generator)))
    parts = []
    for start in range(0, len(noise), batch):
        x = sampler(noise[start: start + batch].to(device) * sampler.schedule[0])
        parts.append(x.float().clamp(-1, 1).cpu())
        progress.update(len(x))
    return torch.cat(parts)


def compute_metrics(out: Path, manifest: dict) -> dict:
    """Frechet distance of every sample in the folder to the held-out digits (fd.metrics), read from the shards."""
    images = []
    for shard in manifest["shards"]:
        part = read_shard(out / shard["file"], shard, manifest["digest"])
        if part is None:
            raise SystemExit(f"error: {out / shard['file']} is missing or incomplete; rerun to finish the shards")
        images.append(part)
    value = fd.metrics.frechet_distance(torch.cat(images))
    return {"fd": value, "samples": manifest["config"]["num"],
            "metric": "Frechet distance of digits-classifier features to the 297 held-out digits (not FID)"}


def main(args: argparse.Namespace) -> None:
    """Checks the arguments, joins torch.distributed when torchrun started more than one process (gloo on CPU, nccl
    on CUDA), sets the thread count, and generates."""
    steps = check_arguments(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    threads = args.threads or (1 if world > 1 else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        if args.pipeline is not None:
            from fused_diffusion.generate_pipeline import generate_pipeline

            generate_pipeline(args, device, rank, world)
        else:
            generate(args, steps, device, rank, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def generate(args: argparse.Namespace, steps: int, device: torch.device, rank: int, world: int) -> None:
    """This rank's part of the run: check the folder, (rank 0) write the manifest, sample the missing shards it owns,
    then (rank 0, after every rank is done) the metric."""
    denoiser, _, shape = fd.zoo.digits(device=device)
    generator = torch.Generator(device) if fd.solvers.get_solver(args.solver).stochastic else None
    try:  # before any file is written: a schedule the solver cannot take (too many steps for float32) is --calls'
        sigmas = fd.get_sigmas_karras(steps, denoiser.sigma_min, denoiser.sigma_max, device=device)
        sampler = fd.Sampler(denoiser, args.solver, sigmas, cuda_graph=device.type == "cuda", generator=generator)
    except ValueError as e:
        usage_error(f"argument --calls: {args.calls} calls of {args.solver} cannot be sampled: {e}")
    config = configuration(args, steps, denoiser.sigma_min, denoiser.sigma_max)
    out = args.out
    resuming = check_folder(out, config)  # every rank checks (reads only), so a refusal stops them all alike
    manifest = new_manifest(config)
    try:
        write_shards(args, out, manifest, resuming, sampler, shape, device, rank, world)
    except OSError as e:  # a folder where a shard goes, a full disk, no permission: one line, not a traceback
        usage_error(f"argument --out: cannot write into {str(out)!r}: {e}")
    if args.metrics and rank == 0:
        metrics = compute_metrics(out, manifest)
        write_json(out / METRICS, metrics)
        print(f"FD {metrics['fd']:.3f} over {metrics['samples']} samples; wrote {out / METRICS}", flush=True)


def write_shards(args: argparse.Namespace, out: Path, manifest: dict, resuming: bool, sampler: fd.Sampler,
                 shape: tuple[int, ...], device: torch.device, rank: int, world: int) -> None:
    """(rank 0) the manifest, then the missing shards this rank owns; returns when every rank is done."""
    if rank == 0 and not resuming:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / MANIFEST, manifest)
    barrier(world)

    mine = manifest["shards"][rank::world]
    todo = []
    for shard in mine:
        images = read_shard(out / shard["file"], shard, manifest["digest"])
        picture = out / f"{shard_name(shard['index'])}.png"
        if images is None:
            todo.append(shard)
        elif args.png and not picture.exists():  # a rerun with --png draws the shards sampled without it
            write_png(picture, images)
    pause = pause_after()
    start = time.perf_counter()
    with tqdm(total=sum(s["samples"] for s in todo), unit="sample", disable=rank != 0,
              desc=f"rank 0/{world} {args.solver} {args.calls} calls") as progress:
        for written, shard in enumerate(todo, 1):
            write_shard(out, shard, sample_shard(sampler, shard, shape, args.batch, device, progress),
                        manifest["digest"], args.png)
            if pause is not None and written >= pause:
                while True:
                    time.sleep(60)
    if rank == 0:
        print(f"rank 0/{world}: sampled {len(todo)} shards, skipped {len(mine) - len(todo)} complete ones "
              f"({time.perf_counter() - start:.1f} s); {len(manifest['shards'])} shards in {out}", flush=True)
    barrier(world)
