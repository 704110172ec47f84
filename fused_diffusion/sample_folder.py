"""The output folder of `python -m fused_diffusion generate`, shared by its two modes (the digits model's shards and
a diffusers pipeline's images): the manifest's name and format, the checks that resume only the same configuration,
argument errors in argparse's form, the test hook that pauses after some work, and the barrier between ranks."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import torch.distributed as dist

from fused_diffusion.files import write_atomically

PROG = "python -m fused_diffusion generate"
SEED_MULTIPLIER = 1_000_003
PAUSE_ENV = "FUSED_DIFFUSION_GENERATE_PAUSE_AFTER"
MANIFEST = "manifest.json"
FORMAT = 1  # of the manifest and shard files: part of the configuration, so a future layout refuses old folders


def usage_error(message: str) -> NoReturn:
    """Exits as argparse does for a bad argument: status 2 and one line on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_folder(out: Path, config: dict) -> bool:
    """Whether `out` already holds this configuration's manifest; exits as an argument error (status 2, one line)
    if `out` is a file, its manifest unreadable, or it holds another configuration. Reads only."""
    if out.exists() and not out.is_dir():
        usage_error(f"argument --out: {str(out)!r} is a file, not a folder")
    path = out / MANIFEST
    if not path.exists():
        return False
    try:
        found = json.loads(path.read_text())["config"]
        if not isinstance(found, dict):
            raise TypeError(f"its 'config' is a {type(found).__name__}, not an object")
    except (OSError, ValueError, KeyError, TypeError) as error:
        usage_error(f"argument --out: {path} is not a manifest of this command ({type(error).__name__}: {error}); "
                    "use another --out")
    if found == config:
        return True
    differing = [f"{key}: {found.get(key)!r} there, {config.get(key)!r} now"
                 for key in sorted(set(found) | set(config), key=str) if found.get(key) != config.get(key)]
    usage_error(f"argument --out: {out} holds samples of another configuration (differing: {'; '.join(differing)}); "
                "rerun with the same arguments to resume, or choose another --out")


def write_json(path: Path, value: dict) -> None:
    """`value` as indented JSON, atomically."""
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def pause_after() -> int | None:
    """The test hook's shard count (see the module docstring), or None."""
    value = os.environ.get(PAUSE_ENV)
    return int(value) if value else None


def barrier(world: int) -> None:
    """Waits for every rank (no-op on one process)."""
    if world > 1:
        dist.barrier()
