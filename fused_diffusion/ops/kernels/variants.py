"""Every Triton kernel variant the dispatcher can launch, in one list, and a compiler that builds them to cubin for a
given GPU architecture without a GPU (tests/test_gpu_compile.py, bench/triton_cubin.py).

A variant is what makes Triton generate different code: the kernel, the data dtype (the pointer types) and the
constexprs its launcher picks from the call. The launchers (ops/kernels/<op>.py) choose those inline:

  lincomb       K = number of inputs (1..MAX_INPUTS), PER_ROW = coefficients [B, K] rather than [K]
  blend         PER_BATCH = w has one value per sample
  skip_concat   BLEND off; HAS_B = b given; PER_BATCH = any of rho / b per sample
  blend_concat  BLEND on; HAS_B, PER_BATCH as skip_concat (w per sample counts too)
  every kernel  IDX64 = needs_int64(n) (int64 offsets past 2^31 elements), BLOCK = BLOCK, num_warps = NUM_WARPS

and every op takes each of the kernels' dtypes (FLOAT_DTYPES). `variants()` enumerates that space from the same
constants the launchers read; tests/test_gpu_compile.py runs the real launchers on calls of every form with the kernels
replaced by recorders and checks that each launch they make is one of these variants and each variant is launched.

Signatures: data pointers get the op's dtype, scalar / coefficient pointers float32. Element counts ("index" ints)
are i64 when IDX64 is on, else i32; the 0/1 per-sample strides of the concat kernel are i32. Triton specialises a
launch's ints further (a value of 1 becomes a constant, multiples of 16 get a divisibility hint); the variants here
compile the unspecialised integer (a superset of that code) with the divisibility hints of an aligned call (every
pointer 16-byte aligned and every element count a multiple of 16, the case of whole torch allocations), or with
none (`aligned=False`: views at odd offsets, odd sizes).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import io
import itertools
import multiprocessing
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import torch

from .._common import FLOAT_DTYPES, MAX_INPUTS
from ._triton import BLOCK, NUM_WARPS

# The architectures the compile test and bench/triton_cubin.py build for: A100 (sm_80) and H100 / H200 (sm_90).
ARCHS = (80, 90)
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# (module under ops.kernels, kernel attribute) per op, and how each kernel parameter is typed at launch:
# "data" pointers carry the op's dtype, "f32" pointers the float32 scalars / coefficients, "index" ints are element
# counts (i64 with IDX64), "int" ints stay i32. Parameters not listed must be constexprs (checked when compiling).
KERNELS = {
    "lincomb": ("lincomb", "_lincomb_kernel"),
    "blend": ("blend", "_blend_kernel"),
    "skip_concat": ("skip_concat", "_concat_kernel"),
    "blend_concat": ("skip_concat", "_concat_kernel"),
}
PARAMS = {
    "_lincomb_kernel": {
        **dict.fromkeys(["out_ptr", *(f"x{i}" for i in range(MAX_INPUTS))], "data"),
        "c_ptr": "f32", "n_elements": "index", "row_numel": "index",
    },
    "_blend_kernel": {
        **dict.fromkeys(["out_ptr", "fresh_ptr", "cached_ptr"], "data"),
        "w_ptr": "f32", "n_elements": "index", "row_numel": "index",
    },
    "_concat_kernel": {
        **dict.fromkeys(["out_ptr", "h_ptr", "cached_ptr", "skip_ptr"], "data"),
        **dict.fromkeys(["w_ptr", "b_ptr", "rho_ptr"], "f32"),
        **dict.fromkeys(["n_out", "n1", "n2"], "index"),
        **dict.fromkeys(["rows_per_sample", "w_stride", "b_stride", "rho_stride"], "int"),
    },
}


def constexpr_space(op: str) -> list[dict]:
    """The constexprs `op`'s launcher can pass, one dict per combination (BLOCK last, as the launchers pass it)."""
    flags = (False, True)
    if op == "lincomb":
        space = [dict(K=k, PER_ROW=r, IDX64=i) for k in range(1, MAX_INPUTS + 1) for r in flags for i in flags]
    elif op == "blend":
        space = [dict(PER_BATCH=p, IDX64=i) for p in flags for i in flags]
    elif op in ("skip_concat", "blend_concat"):
        blend = op == "blend_concat"
        space = [dict(BLEND=blend, HAS_B=b, PER_BATCH=p, IDX64=i) for b in flags for p in flags for i in flags]
    else:
        raise ValueError(f"unknown op {op!r}; choose one of {', '.join(KERNELS)}")
    return [{**c, "BLOCK": BLOCK} for c in space]


@dataclass(frozen=True)
class Variant:
    """One kernel compilation the dispatcher can ask for."""

    op: str
    dtype: torch.dtype
    constexprs: tuple[tuple[str, object], ...]  # (name, value) pairs, hashable
    num_warps: int = NUM_WARPS
    aligned: bool = True

    @property
    def module(self) -> str:
        return KERNELS[self.op][0]

    @property
    def kernel(self) -> str:
        return KERNELS[self.op][1]

    @property
    def label(self) -> str:
        """The constexprs that vary, e.g. "K=6 PER_ROW=1 IDX64=0" (BLOCK and BLEND are fixed per op)."""
        shown = [f"{k}={int(v)}" for k, v in self.constexprs if k not in ("BLOCK", "BLEND")]
        return " ".join(shown + ([] if self.aligned else ["unaligned"]))

    @property
    def dtype_name(self) -> str:
        return TRITON_DTYPES[self.dtype]

    def signature(self, arg_names: Sequence[str]) -> dict[str, str]:
        """Triton's signature for the kernel whose parameters are `arg_names`."""
        constexprs = dict(self.constexprs)
        kinds = PARAMS[self.kernel]
        unknown = [a for a in arg_names if a not in constexprs and a not in kinds]
        if unknown or set(kinds) - set(arg_names):
            raise ValueError(f"{self.kernel}'s parameters {list(arg_names)} no longer match variants.PARAMS "
                             f"(unknown: {unknown}, gone: {sorted(set(kinds) - set(arg_names))})")
        index = "i64" if constexprs.get("IDX64") else "i32"
        types = {"data": f"*{self.dtype_name}", "f32": "*fp32", "index": index, "int": "i32"}
        return {a: "constexpr" if a in constexprs else types[kinds[a]] for a in arg_names}

    def attrs(self, arg_names: Sequence[str]) -> dict[tuple[int], list]:
        """Divisibility hints of an aligned call: every pointer and element count divisible by 16."""
        if not self.aligned:
            return {}
        kinds = PARAMS[self.kernel]
        hinted = ("data", "f32", "index")
        return {(i,): [["tt.divisibility", 16]] for i, a in enumerate(arg_names) if kinds.get(a) in hinted}


def variants(
    op: Optional[str] = None, dtype: Optional[torch.dtype] = None, aligned: Iterable[bool] = (True,)
) -> list[Variant]:
    """Every variant (of `op` / `dtype` when given), op by op in KERNELS order, dtypes in FLOAT_DTYPES order."""
    return [
        Variant(name, dt, tuple(c.items()), NUM_WARPS, al)
        for name in ([op] if op else list(KERNELS))
        for dt in ([dtype] if dtype else FLOAT_DTYPES)
        for al in aligned
        for c in constexpr_space(name)
    ]


def kernel_function(variant: Variant):
    """The kernel object in this process (a JITFunction, or an InterpretedFunction under TRITON_INTERPRET)."""
    import importlib

    return getattr(importlib.import_module(f"{__package__}.{variant.module}"), variant.kernel)


_PTXAS = {
    "registers_per_thread": re.compile(r"Used (\d+) registers"),
    "spill_store_bytes": re.compile(r"(\d+) bytes spill stores"),
    "spill_load_bytes": re.compile(r"(\d+) bytes spill loads"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "target": re.compile(r"Compiling entry function '\w+' for '(\w+)'"),
}


def parse_ptxas_log(log: str) -> dict:
    """Registers per thread, spill bytes, stack frame and the target of a `ptxas -v` log."""
    found = {}
    for key, pattern in _PTXAS.items():
        match = pattern.search(log)
        if match is None:
            raise ValueError(f"no {key} in the ptxas log:\n{log}")
        found[key] = match.group(1) if key == "target" else int(match.group(1))
    return found


def compile_variant(variant: Variant, arch: int, cache_dir: Optional[str] = None) -> dict:
    """Compiles `variant` to cubin for sm_<arch> in this process (whose kernels must not be interpreted: import this
    package without TRITON_INTERPRET set) and reads ptxas' report. Never raises: a failure comes back as `error`.

    Returns op, kernel, variant (label), dtype, arch, num_warps, ptxas (the assembler Triton used, with its version),
    target, registers_per_thread, spill_store_bytes, spill_load_bytes, stack_bytes, shared_bytes (Triton's
    shared-memory allocation), cubin_bytes, compile_s and error ("" when it compiled)."""
    row = {"op": variant.op, "kernel": variant.kernel, "variant": variant.label, "dtype": variant.dtype_name,
           "arch": arch, "num_warps": variant.num_warps}
    start = time.perf_counter()
    try:
        import triton
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import get_ptxas
        from triton.compiler import ASTSource

        from ._triton import is_interpreted

        ptxas = get_ptxas(arch)
        row["ptxas"] = f"{os.path.basename(ptxas.path)} {ptxas.version}"
        fn = kernel_function(variant)
        if is_interpreted(fn):
            raise RuntimeError("the kernels were defined under TRITON_INTERPRET=1; compile in a process without it "
                               "(compile_all does)")
        src = ASTSource(fn, signature=variant.signature(fn.arg_names), constexprs=dict(variant.constexprs),
                        attrs=variant.attrs(fn.arg_names))
        log = io.StringIO()
        with contextlib.ExitStack() as stack:
            for group in (knobs.compilation, knobs.nvidia, knobs.cache):
                stack.enter_context(group.scope())
            knobs.compilation.always_compile = True  # ptxas runs (and reports) even when a cache holds the cubin
            knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v's log to stdout
            if cache_dir is not None:
                knobs.cache.dir = cache_dir
            stack.enter_context(contextlib.redirect_stdout(log))
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": variant.num_warps})
        row.update(parse_ptxas_log(log.getvalue()))
        row.update(shared_bytes=compiled.metadata.shared, cubin_bytes=len(compiled.asm["cubin"]), error="")
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile is a result, reported with its message
        row["error"] = f"{type(e).__name__}: {e}"
    row["compile_s"] = round(time.perf_counter() - start, 3)
    return row


def _compile_job(job: tuple[Variant, int, Optional[str]]) -> dict:
    return compile_variant(*job)


@contextlib.contextmanager
def _environ(**changes: Optional[str]) -> Iterator[None]:
    """os.environ with `changes` (None: unset) while the block runs."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def compile_all(selected: Sequence[Variant], archs: Sequence[int] = ARCHS, workers: Optional[int] = None) -> list[dict]:
    """compile_variant for every (variant, arch), variant-major, in `workers` processes (default: one per usable
    CPU) started without TRITON_INTERPRET and with a fresh Triton cache directory, so the kernels compile here even
    when this process interprets them and nothing is read from or left in the user's cache."""
    jobs = [(v, arch) for v in selected for arch in archs]
    if not jobs:
        return []
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers or cpus, len(jobs)))
    chunk = max(1, len(jobs) // (4 * workers))
    with tempfile.TemporaryDirectory(prefix="fused_diffusion_cubin_") as cache:
        # spawned workers copy os.environ as they start, which they do inside this block (on the first submits)
        with _environ(TRITON_INTERPRET=None, TRITON_CACHE_DIR=cache), concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            return list(pool.map(_compile_job, [(v, a, cache) for v, a in jobs], chunksize=chunk))


def distinct_code(all_variants: Sequence[Variant]) -> list[Variant]:
    """A subset that still compiles every branch, dtype and index width, for a quick check: per (op, dtype) the
    variant with every flag on and K largest (the most code), the same with 32-bit offsets (the common launch), and
    every flag off with K = 1; lincomb's other K only in the dtype after float32 in FLOAT_DTYPES (float16). Register
    use is not monotone in the flags (ptxas decides), so spills can hide elsewhere: bench/triton_cubin.py compiles
    every variant."""
    picked = []
    for (op, dtype), group in itertools.groupby(all_variants, key=lambda v: (v.op, v.dtype)):
        group = list(group)
        rank = lambda v: tuple(int(x) for k, x in v.constexprs if k not in ("BLOCK", "BLEND"))  # noqa: E731
        most, least = max(group, key=rank), min(group, key=rank)
        common = [v for v in group if rank(v) == rank(most)[:-1] + (0,)]  # IDX64 is every kernel's last flag
        others = []
        if op == "lincomb" and dtype == FLOAT_DTYPES[1]:
            others = [v for v in group if dict(v.constexprs)["PER_ROW"] and not dict(v.constexprs)["IDX64"]]
        picked += list(dict.fromkeys([most, *common, least, *others]))
    return picked
