"""README tables generated from benchmark CSVs: each table's text lives between `<!-- table:NAME -->` and
`<!-- /table:NAME -->` in README.md and is rewritten from its CSV, nothing else is touched.

    python bench/readme_tables.py            # every table in TABLES
    python bench/readme_tables.py quality    # one

A bench adds its table by writing a function that returns markdown (`pivot` makes the usual solver x calls grid) and
registering it in TABLES. Rerunning on the same CSVs leaves README.md unchanged; a missing marker is an error.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def significant(value: float, digits: int = 3) -> str:
    """`digits` significant figures without an exponent: 156, 54.2, 7.74, 0.0231."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def pivot(rows: list[dict], row: str, column: str, value: str, labels: dict[str, str] | None = None,
          corner: str = "", missing: str = "·") -> str:
    """A markdown table: one line per distinct `row` (in CSV order), one column per distinct numeric `column` (sorted),
    cells `value` to 3 significant figures, the smallest of each column in bold."""
    labels = labels or {}
    names = list(dict.fromkeys(r[row] for r in rows))
    columns = sorted({int(r[column]) for r in rows})
    cells = {(r[row], int(r[column])): float(r[value]) for r in rows}
    best = {c: min(v for (_, c2), v in cells.items() if c2 == c) for c in columns}
    lines = [f"| {corner} | " + " | ".join(map(str, columns)) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        shown = [(f"**{significant(cells[name, c])}**" if cells[name, c] == best[c] else significant(cells[name, c]))
                 if (name, c) in cells else missing for c in columns]
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def replace_between_markers(text: str, name: str, body: str) -> str:
    """`text` with everything between the markers of table `name` replaced by `body` (on lines of its own)."""
    start, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"README.md needs exactly one '{start}' followed by one '{end}'")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def quality_table() -> str:
    """FD of the digits model against model calls, from bench_quality.py."""
    rows = read_csv(RESULTS / "quality_digits_cpu.csv")
    floor = next(r for r in rows if r["calls"] == "0")
    labels = {"ddim": "DDIM", "euler": "Euler", "heun": "Heun", "dpm_2": "DPM-2", "dpmpp_2m": "DPM++(2M)",
              "ipndm": "iPNDM", "amed": "AMED, r = ½ (AMED's schedule, no predictor)", "amed_learned": "AMED (learned)",
              "amed_plugin": "AMED-Plugin (iPNDM)"}
    return (f"FD of {floor['samples']} digits samples against model calls (train-split floor "
            f"{significant(float(floor['fd']))}; the best of each column in bold; · = the solver cannot spend exactly "
            f"that many calls). {floor['machine']}, {floor['threads']} threads, torch {floor['torch']}, "
            f"{floor['date']}: `{floor['command']}`.\n\n"
            + pivot([r for r in rows if r["calls"] != "0"], "solver", "calls", "fd", labels, corner="solver \\ calls"))


def samplers_table() -> str:
    """FD of the digits model for k-diffusion's samplers, from bench_samplers.py quality."""
    rows = read_csv(RESULTS / "samplers_digits_cpu.csv")
    fixed = [r for r in rows if not r["sampler"].startswith("dpm_adaptive")]
    adaptive = "; ".join(f"{r['sampler'].removeprefix('dpm_adaptive ')}: {r['calls']} calls, FD "
                         f"{significant(float(r['fd']))}" for r in rows if r["sampler"].startswith("dpm_adaptive"))
    first = rows[0]
    return (f"FD of {first['samples']} digits samples against model calls for each k-diffusion sampler (the most calls "
            f"within each budget on a Karras schedule to 0; dpm_fast exactly the budget; stochastic samplers with their "
            f"default noise, seed 0; the best of each column in bold). dpm_adaptive picks its own steps ({adaptive}). "
            f"{first['machine']}, {first['threads']} threads, torch {first['torch']}, {first['date']}: "
            f"`{first['command']}`.\n\n"
            + pivot(fixed, "sampler", "budget", "fd", corner="sampler \\ calls"))


def samplers_overhead_table() -> str:
    """The solver's own time, fused against k-diffusion's ops, from bench_samplers.py overhead."""
    rows = read_csv(RESULTS / "samplers_overhead_cpu.csv")
    first = rows[0]
    lines = ["| sampler | k-diffusion's ops, ms | fd, ms | speed-up | fd launches |", "|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['k_diffusion_ms']} | {r['fd_ms']} | {r['speedup']}× | {r['fd_launches']} |"
              for r in rows]
    return (f"{first['steps']} steps on x of shape {first['shape']} (float32) with a model that is one multiply, so the "
            f"time is the solver's; fd on its `{first['backend']}` backend, k-diffusion's update rules as it writes them "
            f"(tests/reference_samplers.py), the same inputs, the best of 5 runs each. {first['machine']}, "
            f"{first['threads']} threads, torch {first['torch']}, {first['date']}: `{first['command']}`.\n\n"
            + "\n".join(lines))


TABLES: dict[str, Callable[[], str]] = {"quality": quality_table, "samplers": samplers_table,
                                        "samplers_overhead": samplers_overhead_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", help=f"of {', '.join(TABLES)} (default: all)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    names = args.tables or list(TABLES)
    if unknown := set(names) - set(TABLES):
        parser.error(f"unknown tables {sorted(unknown)}; known: {', '.join(TABLES)}")
    text = args.readme.read_text()
    for name in names:
        text = replace_between_markers(text, name, TABLES[name]())
    args.readme.write_text(text)
    print(f"updated {', '.join(names)} in {args.readme}")


if __name__ == "__main__":
    main()
