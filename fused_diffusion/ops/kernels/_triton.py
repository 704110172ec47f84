"""Triton helpers shared by the op kernels: launch geometry and in-kernel index / scalar loads.

The block size is fixed (no autotuning), so every kernel can be launched inside CUDA-graph capture
once warmed. 2048 elements over 8 warps is 8 elements per thread: one 16-byte vector per operand in
fp16/bf16, two in fp32. Registers scale with elements, not bytes (everything is held in fp32), and
with 8 elements the worst case (6 inputs, per-sample coefficient rows) compiles to ~105 registers
on sm_90 without spills, 16 elements needed ~220 (and spilled in fp16); the common lincomb of 2-3
inputs with one coefficient row uses ~34, i.e. full occupancy. Same size for every dtype for that reason.
"""
from __future__ import annotations

from typing import Any

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

BLOCK = 2048
NUM_WARPS = 8

# A kernel as the launchers launch it, kernel[grid](...): the @triton.jit function (eager calls), or
# torch.library.wrap_triton's form of it (the Triton custom ops: torch.compile traces that launch)
Kernel = Any


def launch_grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def needs_int64(n: int) -> bool:
    """int32 offsets (cheaper division on GPU) unless an offset of the last block could pass 2^31 - 1."""
    return n > 2**31 - 1 - BLOCK


def is_interpreted(kernel: object) -> bool:
    """True when TRITON_INTERPRET was set as the kernel was defined: it then runs on CPU tensors."""
    return isinstance(kernel, InterpretedFunction)


@triton.jit
def program_offsets(BLOCK: tl.constexpr, IDX64: tl.constexpr):
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def load_scalar(ptr, row_offset, mask, PER_BATCH: tl.constexpr):
    """One float32 scalar at ptr, or when PER_BATCH per element the one at ptr + its batch row's offset."""
    if PER_BATCH:
        value = tl.load(ptr + row_offset, mask=mask, other=0.0)
    else:
        value = tl.load(ptr)
    return value
