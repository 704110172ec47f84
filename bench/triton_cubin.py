"""Registers, spills and shared memory of every Triton kernel variant the dispatcher can launch, compiled to cubin for
sm_80 and sm_90 on this machine (no GPU needed: Triton's bundled ptxas reports them).

    python bench/triton_cubin.py                     # every variant, aligned and unaligned calls, sm_80 + sm_90
    python bench/triton_cubin.py --aligned-only --archs 90 --workers 4

The variants are fused_diffusion.ops.kernels.variants.variants() (kernel x dtype x the constexprs the launchers
pick), each compiled with the divisibility hints of an aligned call (16-byte pointers, sizes multiple of 16) and
without them. Writes bench/results/triton_cubin.csv: one row per (variant, arch) with the machine, torch, triton,
date and command, the ptxas that assembled it, registers per thread, spill store / load bytes, stack frame, Triton's
shared memory, cubin size and compile seconds (wall time in one of --workers processes, fresh Triton cache), and
the error where a variant does not compile. Prints the variants that spill or fail; exits 1 when any fails.
tests/test_gpu_compile.py compiles a subset of the same list on every test run.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import triton

from common import RESULTS
from fused_diffusion.provenance import cpu_name
from fused_diffusion.ops.kernels import variants as V

FIELDS = ["op", "kernel", "variant", "dtype", "arch", "target", "num_warps", "ptxas", "registers_per_thread",
          "spill_store_bytes", "spill_load_bytes", "stack_bytes", "shared_bytes", "cubin_bytes", "compile_s", "error"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=int, nargs="+", default=list(V.ARCHS), help="compute capabilities, e.g. 80 90")
    parser.add_argument("--aligned-only", action="store_true", help="only the aligned-call variants (half the work)")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: one per CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS / "triton_cubin.csv")
    args = parser.parse_args(argv)

    todo = V.variants(aligned=(True,) if args.aligned_only else (True, False))
    print(f"compiling {len(todo)} variants x sm_{', sm_'.join(map(str, args.archs))} with triton {triton.__version__}",
          flush=True)
    start = time.perf_counter()
    rows = V.compile_all(todo, args.archs, args.workers)
    seconds = time.perf_counter() - start
    workers = args.workers or len(os.sched_getaffinity(0))
    # the compiling machine is the CPU, GPU or not
    env = {"machine": cpu_name(), "workers": workers, "torch": torch.__version__, "triton": triton.__version__,
           "date": datetime.date.today().isoformat(), "command": shlex.join(["python", *sys.argv])}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*env, *FIELDS], restval="")
        writer.writeheader()
        writer.writerows({**env, **r} for r in rows)

    failed = [r for r in rows if r["error"]]
    spilled = [r for r in rows if not r["error"] and (r["spill_store_bytes"] or r["spill_load_bytes"])]
    print(f"{len(rows)} compiles in {seconds:.1f} s on {workers} processes; {len(failed)} failed, {len(spilled)} spill")
    for arch in args.archs:
        for op in V.KERNELS:
            mine = [r for r in rows if r["op"] == op and r["arch"] == arch and not r["error"]]
            if mine:
                top = max(mine, key=lambda r: r["registers_per_thread"])
                print(f"  sm_{arch} {op:<13} registers {min(r['registers_per_thread'] for r in mine):>3}.."
                      f"{top['registers_per_thread']:<3} (most: {top['dtype']} {top['variant']})")
    for r in spilled:
        print(f"  SPILLS sm_{r['arch']} {r['op']} {r['dtype']} {r['variant']}: {r['registers_per_thread']} registers, "
              f"{r['spill_store_bytes']} B stored / {r['spill_load_bytes']} B loaded ({r['ptxas']})")
    for r in failed:
        print(f"  FAILED sm_{r['arch']} {r['op']} {r['dtype']} {r['variant']}: {r['error'].splitlines()[0]}")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
