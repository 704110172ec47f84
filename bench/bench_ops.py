"""Bandwidth of the fused ops on CUDA: fused (each CUDA backend) vs a device copy of the same bytes vs eager torch.

    python bench/bench_ops.py            # full sweep, 64 KB .. 512 MB outputs, fp16 / bf16 / fp32
    python bench/bench_ops.py --quick    # a reduced sweep
    python bench/bench_ops.py --ops lincomb2 --dtypes fp16 --sizes 67108864   # one op / dtype / size
    python bench/bench_ops.py --host     # host time per call on tiny tensors (CPU, or CUDA where present)

Writes bench/results/ops_<gpu>.csv (one row per op / dtype / size / implementation, with the GPU name,
torch and triton versions and the command line) and a plot ops_<gpu>.png next to it, and prints the
"Heun stage" comparison: the second Heun stage on fp16 latents 8x4x128x128, fused lincomb vs eager.
Without CUDA it says so and exits 0 without writing anything: numbers only ever come from a GPU.

--host measures what a call costs the host (Python, dispatch, checks, allocation) on tensors so small that the
arithmetic is nothing: each op's public call, the bound call a sampling run makes (lincomb_on), the custom op
(torch.ops.fused_diffusion.*, what torch.compile graphs call) and the eager torch chain it replaces, each against
one torch elementwise op (torch.add). Writes bench/results/ops_host_<device>.csv and a plot.

Bytes moved = bytes read + bytes written by the op once; GB/s = bytes moved / median time. The copy
baseline moves the same bytes with one tensor copy (half read, half written): the practical ceiling.
"""
from __future__ import annotations

import argparse
import csv
import shlex
import sys
from pathlib import Path
from typing import Callable

import torch

from common import RESULTS, write_csv
from fused_diffusion.provenance import machine
from fused_diffusion import ops

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SIZES = [2**k for k in range(16, 30, 2)] + [2**29]  # output bytes: 64 KB, 256 KB, ..., 256 MB, 512 MB
QUICK_SIZES = [2**16, 2**22, 2**26]
OPS = ["lincomb2", "lincomb4", "blend", "skip_concat", "blend_concat"]


def time_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds per call, warmed up (first calls compile the Triton kernels)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def make_case(op: str, out_bytes: int, dtype: torch.dtype, device: str, into_out: bool = True):
    """(fused call, eager torch call, bytes moved) for `op` whose output has out_bytes bytes; the fused call writes
    into a preallocated out, or with into_out=False allocates its own (the common call).

    4-D [B, C, H, W] features with B = 2; the concat ops take half their output channels from each input.
    """
    args, eager, inputs = case_arguments(op, out_bytes, dtype, device)
    fused_op = getattr(ops, op.rstrip("0123456789"))
    out = eager()
    moved = sum(t.numel() * t.element_size() for t in (*inputs, out))
    if into_out:
        return (lambda: fused_op(*args, out=out)), eager, moved
    return (lambda: fused_op(*args)), eager, moved


def case_arguments(op: str, out_bytes: int, dtype: torch.dtype, device: str):
    """(the fused op's arguments, the eager torch chain it replaces, the data tensors it reads) for make_case."""
    numel = max(out_bytes // torch.tensor([], dtype=dtype).element_size(), 64)
    shape = (2, 8, numel // 16 // 8, 8)  # total numel rounded down to a multiple of 128
    half = (2, 4, *shape[2:])
    new = lambda s: torch.randn(s, device=device, dtype=dtype)  # noqa: E731
    scalar = lambda n=1: torch.rand(n, device=device) + 0.5  # noqa: E731
    if op.startswith("lincomb"):
        k = int(op.removeprefix("lincomb"))
        xs, c = [new(shape) for _ in range(k)], scalar(k)
        cs = [c[i] for i in range(k)]  # eager solver code multiplies by 0-d device tensors

        def eager():
            acc = cs[0] * xs[0]
            for ci, x in zip(cs[1:], xs[1:]):
                acc = acc + ci * x
            return acc

        return (xs, c), eager, xs
    if op == "blend":
        fresh, cached, w = new(shape), new(shape), scalar()
        return (fresh, cached, w), (lambda: w * fresh + (1 - w) * cached), (fresh, cached)
    h, skip, rho, b = new(half), new(half), scalar(2), scalar(2)
    rho4, b4 = rho.view(2, 1, 1, 1), b.view(2, 1, 1, 1)
    if op == "skip_concat":
        return (h, skip, rho, b), (lambda: torch.cat([h * b4, skip * rho4], 1)), (h, skip)
    cached, w = new(half), scalar()
    return ((h, cached, w, skip, rho, b), (lambda: torch.cat([(w * h + (1 - w) * cached) * b4, skip * rho4], 1)),
            (h, cached, skip))


def copy_case(moved: int, dtype: torch.dtype, device: str) -> Callable[[], object]:
    n = max(moved // 2 // torch.tensor([], dtype=dtype).element_size(), 1)
    src, dst = torch.randn(n, device=device, dtype=dtype), torch.empty(n, device=device, dtype=dtype)
    return lambda: dst.copy_(src)


def heun_stage(backends: list[str], device: str) -> list[dict]:
    """Second Heun stage on fp16 8x4x128x128: x + dt/2 * ((x - den1)/s + (x2 - den2)/s2), one lincomb fused."""
    new = lambda: torch.randn(8, 4, 128, 128, device=device, dtype=torch.float16)  # noqa: E731
    x, den1, x2, den2, out = new(), new(), new(), new(), new()
    s, s2, dt = (torch.tensor(v, device=device) for v in (2.0, 1.5, -0.5))
    coeffs = torch.stack([1 + dt / 2 / s, -dt / 2 / s, dt / 2 / s2, -dt / 2 / s2])

    def eager():
        d = (x - den1) / s
        d2 = (x2 - den2) / s2
        return x + (d + d2) * (dt / 2)

    rows = [{"impl": "eager", "backend": "torch", "ms": time_ms(eager)}]
    for name in backends:
        with ops.use_backend(name):
            rows.append({"impl": "fused", "backend": name, "ms": time_ms(lambda: ops.lincomb([x, den1, x2, den2], coeffs, out=out))})
    return rows


def sweep(op_names: list[str], dtypes: list[str], sizes: list[int], backends: list[str], device: str) -> list[dict]:
    rows = []
    for op in op_names:
        for dname in dtypes:
            for out_bytes in sizes:
                fused, eager, moved = make_case(op, out_bytes, DTYPES[dname], device)
                timings = {("copy", "torch"): time_ms(copy_case(moved, DTYPES[dname], device))}
                timings[("eager", "torch")] = time_ms(eager)
                for name in backends:
                    with ops.use_backend(name):
                        timings[("fused", name)] = time_ms(fused)
                for (impl, backend), ms in timings.items():
                    rows.append(
                        {"op": op, "dtype": dname, "out_bytes": out_bytes, "bytes_moved": moved, "impl": impl,
                         "backend": backend, "ms": ms, "GBps": moved / ms / 1e6,
                         "frac_of_copy": timings[("copy", "torch")] / ms}
                    )
                torch.cuda.empty_cache()
            print(f"{op} {dname}: done", flush=True)
    return rows


HOST_CALLS = 1000  # calls per timed run; the minimum of --repeats runs is kept


def host_time_us(fn: Callable[[], object], repeats: int) -> float:
    """Host microseconds per call: the least of `repeats` timed runs of HOST_CALLS calls."""
    import timeit

    fn()
    return min(timeit.repeat(fn, number=HOST_CALLS, repeat=repeats)) / HOST_CALLS * 1e6


def host_times(op_names: list[str], device: str, repeats: int) -> list[dict]:
    """Per op on fp32 [2, 8, 2, 8] data: the public call, the bound call a sampling run makes (lincomb only), the
    custom op and the eager chain, each timed interleaved with one torch elementwise op (torch.add of two inputs)."""
    rows = []
    for op in op_names:
        args, eager, inputs = case_arguments(op, 2048, torch.float32, device)
        name = op.rstrip("0123456789")
        calls = {"torch.add (one elementwise op)": lambda: torch.add(inputs[0], inputs[1]),
                 "fused, public call": lambda: getattr(ops, name)(*args),
                 "eager torch chain": eager}
        if name == "lincomb":
            calls["fused, bound (lincomb_on)"] = lambda bound=ops.lincomb_on(torch.device(device)): bound(*args)
        if hasattr(torch.ops.fused_diffusion, name):  # the extension defines the custom ops
            calls["custom op (torch.ops)"] = lambda: getattr(torch.ops.fused_diffusion, name).default(*args)
        best = {impl: float("inf") for impl in calls}
        for _ in range(repeats):
            for impl, fn in calls.items():
                best[impl] = min(best[impl], host_time_us(fn, 1))
        baseline = best["torch.add (one elementwise op)"]
        for impl, us in best.items():
            rows.append({"op": op, "impl": impl, "us_per_call": round(us, 2), "vs_torch_op": round(us / baseline, 2)})
            print(f"{op:13s} {impl:32s} {us:7.2f} us  {us / baseline:5.2f}x torch.add", flush=True)
    return rows


def plot_host(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    op_names = list(dict.fromkeys(r["op"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        xs = [i + j * width for i, op in enumerate(op_names) if any(r["op"] == op and r["impl"] == impl for r in rows)]
        ys = [r["us_per_call"] for op in op_names for r in rows if r["op"] == op and r["impl"] == impl]
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(op_names))], op_names)
    ax.set_ylabel("host us per call (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    op_names = list(dict.fromkeys(r["op"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(len(op_names), len(dtypes), figsize=(4.5 * len(dtypes), 3 * len(op_names)), squeeze=False)
    for i, op in enumerate(op_names):
        for j, dname in enumerate(dtypes):
            ax = axes[i][j]
            picked = [r for r in rows if r["op"] == op and r["dtype"] == dname]
            for series in dict.fromkeys((r["impl"], r["backend"]) for r in picked):
                pts = [r for r in picked if (r["impl"], r["backend"]) == series]
                ax.plot([r["out_bytes"] for r in pts], [r["GBps"] for r in pts], marker="o", ms=3, label="/".join(series))
            ax.set_xscale("log", base=2)
            ax.set_title(f"{op} {dname}", fontsize=9)
            ax.set_xlabel("output bytes", fontsize=8)
            ax.set_ylabel("GB/s (read+write)", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 sizes, fp16 + fp32, fewer ops")
    parser.add_argument("--ops", nargs="+", choices=OPS, help="these ops instead (default: all, or --quick's)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="these dtypes instead")
    parser.add_argument("--sizes", nargs="+", type=int, metavar="BYTES", help="these output sizes (bytes) instead")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--host", action="store_true", help="host time per call on tiny tensors instead")
    parser.add_argument("--repeats", type=int, default=15, help="--host: interleaved timed runs, least kept")
    parser.add_argument("--threads", type=int, default=1, help="--host: torch threads")
    args = parser.parse_args(argv)
    if args.host:
        return host(args)
    if not torch.cuda.is_available():
        print("bench_ops: no CUDA device; these numbers only come from a GPU, so nothing was measured or written.")
        return 0
    import triton

    device = "cuda"
    info = ops.backends()
    backends = [b for b in ("triton", "cuda") if b in info["available"]]
    op_names = OPS
    dtypes, sizes = list(DTYPES), SIZES
    if args.quick:
        op_names, dtypes, sizes = ["lincomb2", "lincomb4", "skip_concat"], ["fp16", "fp32"], QUICK_SIZES
    op_names, dtypes, sizes = args.ops or op_names, args.dtypes or dtypes, args.sizes or sizes
    gpu = torch.cuda.get_device_name()
    meta = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__,
            "command": shlex.join([sys.executable, *sys.argv])}
    print(f"{gpu}: fused backends {backends}; torch {torch.__version__}, triton {triton.__version__}")

    rows = sweep(op_names, dtypes, sizes, backends, device)
    heun = heun_stage(backends, device)
    eager_ms = heun[0]["ms"]
    for r in heun:
        r.update(op="heun_stage_fp16_8x4x128x128", dtype="fp16", out_bytes=8 * 4 * 128 * 128 * 2,
                 bytes_moved=5 * 8 * 4 * 128 * 128 * 2, GBps=5 * 8 * 4 * 128 * 128 * 2 / r["ms"] / 1e6,
                 frac_of_copy="")
        print(f"Heun stage {r['impl']}/{r['backend']}: {r['ms'] * 1e3:.1f} us, eager/this = {eager_ms / r['ms']:.1f}x")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "ops_" + "".join(ch if ch.isalnum() else "_" for ch in gpu)
    csv_path = args.out_dir / f"{stem}.csv"
    fields = [*meta, "op", "dtype", "out_bytes", "bytes_moved", "impl", "backend", "ms", "GBps", "frac_of_copy"]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows + heun:
            writer.writerow({**meta, **r})
    plot(rows, csv_path.with_suffix(".png"), f"fused ops on {gpu}")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.png')}")
    return 0


def host(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = ops.backends()["active"][device]
    print(f"host time per call on {device} ({machine()}), backend {backend}, {args.threads} thread(s)")
    rows = [{"device": device, "backend": backend, **r} for r in host_times(args.ops or OPS, device, args.repeats)]
    path = write_csv("ops_host", rows)
    plot_host(rows, path.with_suffix(".png"), f"fused op host time per call, {device} ({machine()}), backend {backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
