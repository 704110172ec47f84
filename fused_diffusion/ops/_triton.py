"""Triton helpers shared by the op kernels: launch geometry and in-kernel index / scalar loads.

Block sizes are fixed per dtype (no autotuning), so every kernel can be launched inside CUDA-graph
capture once warmed. Each program moves 16 KB per operand: enough bytes in flight per SM for HBM
bandwidth without spilling registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

NUM_WARPS = 8
_INT32_MAX = 2**31 - 1


def block_size(dtype: torch.dtype) -> int:
    return 4096 if dtype == torch.float32 else 8192


def launch_grid(n: int, block: int) -> tuple[int]:
    return (triton.cdiv(n, block),)


def needs_int64(*numels: int) -> bool:
    """int32 offsets (cheaper division on GPU) unless an index could pass 2^31 - 1."""
    return max(numels) > _INT32_MAX - 2 * 8192


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
