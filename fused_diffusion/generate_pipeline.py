"""`python -m fused_diffusion generate --pipeline DIR --prompts FILE --out DIR`: images of any local diffusers
pipeline folder (saved with `save_pretrained`; nothing is downloaded), sampled through `accelerate`, on one process
or under torchrun.

The work is a list of items, one per (prompt, image): item k = prompt p * images-per-prompt + image i draws from its
own seed, `seed * 1_000_003 + k`, so an image does not depend on the process count; rank r of a world of w takes the
items with k % w == r. Files in --out: `manifest.json` (the configuration and every item's prompt, image index, seed
and file; written by rank 0 before sampling) and `image_000000.png` per item, each written under a temporary name
and moved into place, so a killed run leaves complete images or none; a rerun of the same configuration skips the
images that exist. A folder whose manifest holds another configuration is refused before any file is touched.
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import fused_diffusion as fd
from fused_diffusion.files import write_atomically
from fused_diffusion.sample_folder import (FORMAT, MANIFEST, PAUSE_ENV, SEED_MULTIPLIER, barrier, check_folder,
                                           pause_after, usage_error, write_json)

__all__ = ["PAUSE_ENV", "generate_pipeline", "read_prompts"]


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        usage_error(f"argument --prompts: cannot read {str(path)!r} ({type(e).__name__}: {e})")
    if not prompts:
        usage_error(f"argument --prompts: {str(path)!r} holds no prompt (one per line)")
    return prompts


def pipeline_digest(folder: Path) -> str:
    """A digest of the pipeline folder's configuration files (model_index.json and every component's config), so a
    folder of another pipeline's images is told apart."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.json")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def configuration(args: argparse.Namespace, prompts: list[str]) -> dict:
    """What determines the images: compared with a folder's manifest before a run resumes in it."""
    return {"format": FORMAT, "pipeline": str(args.pipeline.resolve()), "pipeline_digest": pipeline_digest(args.pipeline),
            "prompts": prompts, "negative_prompt": args.negative_prompt, "images_per_prompt": args.images_per_prompt,
            "steps": args.steps, "solver": args.solver, "guidance": args.guidance, "height": args.height,
            "width": args.width, "seed": args.seed, "deepcache_interval": args.deepcache_interval,
            "skip_tuning": args.skip_tuning, "item_seed": f"seed * {SEED_MULTIPLIER} + item index"}


def items(config: dict) -> list[dict]:
    """Every (prompt, image) item with its seed and file."""
    per_prompt = config["images_per_prompt"]
    return [{"index": k, "prompt": p, "image": k % per_prompt, "seed": config["seed"] * SEED_MULTIPLIER + k,
             "file": f"image_{k:06d}.png"} for k in range(len(config["prompts"]) * per_prompt)
            for p in [k // per_prompt]]


def load_pipeline(args: argparse.Namespace, device: torch.device) -> Any:
    """The pipeline from its local folder (no download), accelerated with the command's solver and U-Net methods."""
    import diffusers

    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(args.pipeline, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        usage_error(f"argument --pipeline: {str(args.pipeline)!r} is not a diffusers pipeline folder this machine can "
                    f"load offline ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    options = {}
    if args.deepcache_interval:
        options["deepcache"] = fd.unet.DeepCacheConfig(interval=args.deepcache_interval)
    if args.skip_tuning is not None:
        options["skip_tuning"] = fd.unet.SkipTuningConfig(rho_bottom=args.skip_tuning)
    try:
        fd.integrations.accelerate(pipe, solver=args.solver, **options)
    except (TypeError, ValueError) as e:
        usage_error(f"argument --pipeline: {e}")
    return pipe


def sample_item(pipe: Any, item: dict, config: dict, device: torch.device) -> Any:
    """The item's image (PIL) from its own generator."""
    kwargs = {"num_inference_steps": config["steps"], "output_type": "pil",
              "generator": torch.Generator(device).manual_seed(item["seed"])}
    for name in ("guidance", "height", "width"):
        if config[name] is not None:
            kwargs["guidance_scale" if name == "guidance" else name] = config[name]
    if config["negative_prompt"] is not None:
        kwargs["negative_prompt"] = config["negative_prompt"]
    return pipe(config["prompts"][item["prompt"]], **kwargs).images[0]


def generate_pipeline(args: argparse.Namespace, device: torch.device, rank: int, world: int) -> None:
    """This rank's part of a pipeline run: check the folder, (rank 0) write the manifest, sample the missing images
    it owns."""
    prompts = read_prompts(args.prompts)
    config = configuration(args, prompts)
    out = args.out
    resuming = check_folder(out, config)
    manifest = {"config": config, "items": items(config)}
    pipe = load_pipeline(args, device)
    try:
        if rank == 0 and not resuming:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / MANIFEST, manifest)
        barrier(world)
        todo = [item for item in manifest["items"][rank::world] if not (out / item["file"]).exists()]
        pause, start = pause_after(), time.perf_counter()
        for written, item in enumerate(tqdm(todo, unit="image", disable=rank != 0, desc=f"rank 0/{world}"), 1):
            image = sample_item(pipe, item, config, device)
            write_atomically(out / item["file"], lambda tmp: image.save(tmp, format="PNG"))
            if pause is not None and written >= pause:
                while True:
                    time.sleep(60)
    except OSError as e:
        usage_error(f"argument --out: cannot write into {str(out)!r}: {e}")
    if rank == 0:
        print(f"rank 0/{world}: sampled {len(todo)} images ({time.perf_counter() - start:.1f} s); "
              f"{len(manifest['items'])} images in {out}", flush=True)
    barrier(world)
