"""Helpers the bench scripts share: where results go, the CSV writer (every row carries fused_diffusion.provenance's
machine and versions), and the pictures and plots several benches draw.

A script run as `python bench/<script>.py` has bench/ first on sys.path (Python puts the script's folder there), so
`from common import write_csv` needs no path edit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from fused_diffusion import demo, provenance
from fused_diffusion.provenance import machine

RESULTS = Path(__file__).resolve().parent / "results"


def write_csv(name: str, rows: list[dict]) -> Path:
    tag = "cpu" if not torch.cuda.is_available() else "".join(c if c.isalnum() else "_" for c in machine())
    path = provenance.write_csv(RESULTS / f"{name}_{tag}.csv", rows)
    print(f"wrote {path}")
    return path


def plot_fd_against_steps(ax, rows: list[dict], name_key: str, title: str, labels: dict | None = None,
                          linestyle: Callable[[str], str] = lambda name: "-") -> None:
    """FD against steps on log axes, a line per distinct rows[name_key] (rows with steps 0 skipped), the first row's
    FD as the data floor."""
    import matplotlib.pyplot as plt

    labels = labels or {}
    names = dict.fromkeys(r[name_key] for r in rows if r["steps"])
    for k, name in enumerate(names):
        mine = [r for r in rows if r[name_key] == name]
        ax.plot([r["steps"] for r in mine], [r["fd"] for r in mine], marker="o", color=plt.cm.tab10(k),
                label=labels.get(name, name), linestyle=linestyle(name))
    ax.axhline(rows[0]["fd"], color="gray", linestyle=":", label="data (train split)")
    steps = sorted({r["steps"] for r in rows if r["steps"]})
    ax.set(xscale="log", yscale="log", xlabel="steps (model calls)", ylabel="FD (digits classifier features)",
           title=title)
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend(fontsize=8)


def save_grid(pictures: dict[tuple[str, int], torch.Tensor], columns: list[int], path: Path, unit: str) -> None:
    """One 6 x 6 picture grid per (row name, column) of `pictures` ([-1, 1] images), rows in insertion order,
    columns titled "N unit"; a missing cell stays blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for name, _ in pictures))
    fig, axes = plt.subplots(len(names), len(columns), figsize=(1.9 * len(columns) + 1.2, 1.9 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.axis("off")
            if (name, column) in pictures:
                ax.imshow(demo.image_grid(pictures[name, column], 6), cmap="gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"{column} {unit}", fontsize=8)
            if j == 0:
                ax.text(-0.05, 0.5, name, fontsize=7, ha="right", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
