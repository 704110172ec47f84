"""The one path every fused-op call takes: validate (the op's spec) -> choose a backend -> fall back to the torch
reference where kernels cannot take the call -> allocate -> launch, counting each launch.

Calls the kernels cannot take (mixed dtypes, dtypes other than fp32/fp16/bf16, gradients for an op without an
autograd Function, bf16 under the Triton interpreter) run the torch reference instead, so a call is never silently
wrong.
"""
from __future__ import annotations

import collections
import contextlib
import functools
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from ._common import uniform_float_dtype
from .availability import cached_choice, choose, extension, triton_kernels
from . import library
from .spec import OpSpec


class OpLaunchCounter:
    """Fused-op launches (forward and backward, every backend, torch fallbacks included) made while its block ran:
    `count`, and `launches`, a Counter of (op name, backend) pairs."""

    def __init__(self) -> None:
        self.launches: collections.Counter[tuple[str, str]] = collections.Counter()

    @property
    def count(self) -> int:
        return sum(self.launches.values())

    def __repr__(self) -> str:
        return f"OpLaunchCounter(count={self.count}, launches={dict(self.launches)})"


_counters: list[OpLaunchCounter] = []


@contextlib.contextmanager
def count_op_launches() -> Iterator[OpLaunchCounter]:
    """Counts the fused-op launches made inside the block (nested blocks each count theirs)."""
    counter = OpLaunchCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def counting() -> bool:
    """Whether a count_op_launches block is open (then every launch takes the counted path)."""
    return bool(_counters)


def direct_extension(device: torch.device):
    """The C++/CUDA extension module when dispatch chooses it for `device` (the forced backend or the automatic
    choice), else None (also where the choice raises: the full path raises it, naming the cause)."""
    return extension()[0] if cached_choice(device) in ("cpp", "cuda") else None


def _launch(spec: OpSpec, backend: str, impl: Callable[..., Tensor], *args) -> Tensor:
    for counter in _counters:
        counter.launches[spec.name, backend] += 1
    return impl(*args)


def implementation(spec: OpSpec, backend: str) -> Callable[..., Tensor]:
    """`impl(*args, out)` of `spec` on an available backend."""
    if backend == "torch":
        return spec.reference
    if backend == "triton":
        return spec.triton(triton_kernels()[0])
    return functools.partial(spec.extension, extension()[0])


def call(spec: OpSpec, *args, out: Optional[Tensor] = None) -> Tensor:
    """Runs `spec` on the public arguments `args` (and `out`), on the backend dispatch chooses."""
    if out is None and not _counters:
        result = _direct_call(spec, args)
        if result is not None:
            return result
    op = spec.prepare(*args, out=out)
    if torch.compiler.is_compiling():
        return _traced(spec, op, out)
    backend = choose(op.data[0].device)
    if backend == "triton" and op.data[0].dtype == torch.bfloat16 and triton_kernels()[1] == "interpreted":
        backend = "torch"  # TRITON_INTERPRET mis-loads bf16 (1.5e-2 relative error): the exact reference instead
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in op.grad_inputs)
    if backend == "torch" or not uniform_float_dtype(op.data) or (needs_grad and spec.autograd is None):
        return _launch(spec, "torch", spec.reference, *op.args, out)
    launch = functools.partial(_launch, spec, backend, implementation(spec, backend))
    if needs_grad:
        result = spec.autograd(launch, *op.args)
        return result if out is None else out.copy_(result)
    return launch(*op.args, spec.new_out(*op.args) if out is None else out)


def _direct_call(spec: OpSpec, args: tuple) -> Optional[Tensor]:
    """The common call in one step: the extension's allocating entry (`<op>_new`) where dispatch chooses the extension,
    on contiguous data, with no gradient to record and outside torch.compile; else None, and so for anything the
    extension refuses (its checks: dtypes, devices, shapes, scalar sizes), which the full path then validates by
    name, converts or runs on the torch reference. Its host cost is about that of two torch ops (bench_ops.py --host)."""
    first = args[0]
    if type(first) is list or type(first) is tuple:
        first = first[0] if first else None
    if type(first) is not Tensor or not first.is_contiguous() or torch.compiler.is_compiling():
        return None
    module = direct_extension(first.device)
    if module is None or (torch.is_grad_enabled() and _requires_grad(args)):
        return None
    try:
        return getattr(module, spec.allocating_entry)(*args)
    except (RuntimeError, TypeError, AttributeError):  # AttributeError: an extension built before the entry existed
        return None


def _requires_grad(args: tuple) -> bool:
    """Whether a tensor among args (or in a list / tuple among them) requires grad; loops, not any() over a
    generator, which costs twice as much on this path."""
    for arg in args:
        if type(arg) is list or type(arg) is tuple:
            for item in arg:
                if getattr(item, "requires_grad", False):
                    return True
        elif getattr(arg, "requires_grad", False):
            return True
    return False


def _traced(spec: OpSpec, op, out: Optional[Tensor]) -> Tensor:
    """A call traced by torch.compile: one custom-op node (no graph break) where fused kernels take the call, from the
    namespace `traced_namespace` names (the Triton op, whose kernel inductor compiles with the graph, or the
    extension's, one opaque kernel call); else the torch reference, which inductor fuses itself."""
    namespace = traced_namespace(op.data[0].device.type)
    if namespace is None or not uniform_float_dtype(op.data):
        return spec.reference(*op.args, out)
    return library.call(namespace, spec.name, *op.args, out=out)


@torch.compiler.assume_constant_result
def traced_namespace(device_type: str) -> Optional[str]:
    """The custom-op namespace whose ops traced calls on `device_type` tensors become (library.TRITON or
    library.EXTENSION), or None for the torch reference: the backend eager calls get (`choose`: a forced backend that
    cannot run them raises, as in eager), where its ops can be traced.

    The Triton ops are traced where Triton compiles its kernels (CUDA tensors) and not under TRITON_INTERPRET: torch
    then runs an op's body on fake tensors, which the interpreter reads as data. A Triton choice that cannot be traced
    takes the extension's op where the extension takes the device. A constant of the trace (ContextVars, which
    `use_backend` sets, cannot be traced): a backend forced later applies once the function is compiled again
    (`torch._dynamo.reset()`)."""
    backend = choose(torch.device(device_type))
    if backend == "triton" and device_type == "cuda" and triton_kernels()[1] == "compiled":
        return library.TRITON
    if backend != "torch" and extension()[0] is not None and device_type in library.devices:
        return library.EXTENSION
    return None
