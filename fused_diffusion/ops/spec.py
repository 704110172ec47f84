"""How an op is described to dispatch: one OpSpec per op, in that op's module (ops/<op>.py).

Adding an op = a torch definition in reference.py, a Triton kernel module in ops/kernels/ (`<op>_triton`), a C++
/CUDA entry in csrc/ (`fused_diffusion._C.<op>`), its module here with the checks and the spec, and its tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional, Sequence

from torch import Tensor


@dataclass(frozen=True)
class OpCall:
    """A validated call: `args` go to every implementation (followed by `out`); `data` are the tensors whose one
    shared dtype lets the fused kernels take the call; `grad_inputs` may carry gradients."""

    args: tuple
    data: Sequence[Tensor]
    grad_inputs: Sequence[Optional[Tensor]]


@dataclass(frozen=True)
class OpSpec:
    """Everything dispatch needs to know about an op.

    prepare(*args, out=out) -> OpCall validates and normalises the public arguments (errors name the argument);
    reference(*args, out) is the torch definition; extension(module, *args, out) runs fused_diffusion._C's entry
    (the common call without out goes to `<name>_new` directly: dispatch._direct_call);
    new_out(*args) allocates the output; autograd(launch, *args) makes a differentiable call whose forward and
    backward use `launch(*args, out)` (None: calls that need gradients run the reference, which torch differentiates).
    The Triton launcher is `ops.kernels.<name>.<name>_triton(*args, out)`.
    """

    name: str
    prepare: Callable[..., OpCall]
    reference: Callable[..., Tensor]
    extension: Callable[..., Tensor]
    new_out: Callable[..., Tensor]
    autograd: Optional[Callable[..., Tensor]] = None

    @property
    def allocating_entry(self) -> str:
        """fused_diffusion._C's entry that allocates and returns the result (the .out-less call)."""
        return f"{self.name}_new"

    def triton(self, kernels: ModuleType) -> Callable[..., Tensor]:
        return getattr(getattr(kernels, self.name), f"{self.name}_triton")
