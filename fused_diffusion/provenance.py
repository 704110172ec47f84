"""Where a measurement ran: the machine, threads, versions, date and command that every row of a bench CSV and of
the demo's CSV carries, so that a figure is never read without them."""
from __future__ import annotations

import csv
import datetime
import platform
import shlex
import sys
from pathlib import Path

import torch


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> str:
    """The GPU's name where there is one, else the CPU's."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()


def environment() -> dict:
    import diffusers

    return {"machine": machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "date": datetime.date.today().isoformat(), "command": command()}


def command() -> str:
    """The command line as typed: `python -m package ...` for a package run with -m (whose argv[0] is the path of
    its __main__.py), else `python script ...`."""
    script = Path(sys.argv[0])
    program = ["-m", script.parent.name] if script.name == "__main__.py" else [sys.argv[0]]
    return shlex.join(["python", *program, *sys.argv[1:]])


def write_csv(path: Path, rows: list[dict]) -> Path:
    """`rows` as a CSV at `path`, each with environment()'s columns first."""
    env = environment()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*env, *rows[0]])
        writer.writeheader()
        writer.writerows({**env, **r} for r in rows)
    return path
