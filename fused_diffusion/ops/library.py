"""The Python side of the fused ops as torch custom ops, in two namespaces:

- `torch.ops.fused_diffusion.*`, which the C++/CUDA extension defines (csrc/library.cpp: a functional and an .out form
  of lincomb, skip_concat, blend and blend_concat);
- `torch.ops.fused_diffusion_triton.*`, the Triton launchers as `torch.library.triton_op`s (ops/kernels/<op>.py: the
  functional form), whose kernels inductor sees through `wrap_triton` and compiles with the graph.

Here: each op's fake kernel (shapes, dtypes and layouts without data, so torch.compile traces it) and autograd, one of
each per op, registered on both namespaces' functional ops.

Eager calls take the kernels directly through dispatch (the extension's pybind entries cost ~1 us, an OpOverload call
~5 us); under torch.compile every op call becomes one of these custom ops where fused kernels take it (one node, no
graph break) and the torch reference otherwise (which inductor fuses itself): dispatch._traced.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

EXTENSION = "fused_diffusion"
# The Triton ops have a namespace of their own rather than fused_diffusion::<op>_triton: fused_diffusion is the
# extension's TORCH_LIBRARY, which the Triton ops must not need (they exist without it), and one op name per backend
# namespace keeps the two forms of an op side by side: torch.ops.<namespace>.<op>.
TRITON = "fused_diffusion_triton"

# the device types whose tensors the extension's ops take, once they are defined and their fake kernels and autograd
# registered here (empty before)
devices: frozenset[str] = frozenset()


def register(module) -> None:
    """Registers the fake kernels and autograd of the ops that importing the extension `module` (fused_diffusion._C)
    defined; once."""
    global devices
    if devices:
        return
    for name in FUNCTIONAL:
        register_functional(f"{EXTENSION}::{name}", name)
        torch.library.register_fake(f"{EXTENSION}::{name}.out", _out_fake)
    devices = frozenset({"cpu", "cuda"} if module.has_cuda() else {"cpu"})


def register_functional(qualname: str, name: str) -> None:
    """Registers op `name`'s fake kernel and autograd on the functional custom op `qualname` (the extension's or the
    Triton one)."""
    fake, backward, setup_context = FUNCTIONAL[name]
    torch.library.register_fake(qualname, fake)
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


def allocate(name: str, *args) -> Tensor:
    """Op `name`'s output for `args`, empty, as its fake kernel describes it (the fake kernels are plain allocations):
    what the Triton ops write into, so their outputs and fake kernel cannot disagree."""
    return FUNCTIONAL[name].fake(*args)


def call(namespace: str, name: str, *args, out: Tensor | None = None) -> Tensor:
    """torch.ops.<namespace>.<name>(*args), into `out` when given: the extension's .out form, or a copy of the
    Triton op's result (those have the functional form only)."""
    op = getattr(getattr(torch.ops, namespace), name)
    if out is None:
        return op.default(*args)
    if namespace == TRITON:
        return out.copy_(op.default(*args))
    op.out(*args, out=out)
    return out


# --- fake kernels: what the C++ entries allocate ---------------------------------------------------------------------


def _lincomb_fake(inputs: list[Tensor], coeffs: Tensor) -> Tensor:
    return torch.empty_like(inputs[0], memory_format=torch.contiguous_format)


def _concat_format(*parts: Tensor) -> torch.memory_format:
    for dims, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if all(p.dim() == dims and not p.is_contiguous() and p.is_contiguous(memory_format=fmt) for p in parts):
            return fmt
    return torch.contiguous_format


def _concat_fake(h: Tensor, skip: Tensor, rho: Tensor, b: Tensor | None) -> Tensor:
    shape = (h.shape[0], h.shape[1] + skip.shape[1], *h.shape[2:])
    return torch.empty(shape, dtype=h.dtype, device=h.device, memory_format=_concat_format(h, skip))


def _blend_fake(fresh: Tensor, cached: Tensor, w: Tensor) -> Tensor:
    return torch.empty_like(fresh, memory_format=torch.contiguous_format)


def _blend_concat_fake(fresh: Tensor, cached: Tensor, w: Tensor, skip: Tensor, rho: Tensor, b: Tensor | None) -> Tensor:
    return _concat_fake(fresh, skip, rho, b)


def _out_fake(*args, out: Tensor) -> None:
    return None


# --- autograd: the ops are linear in their data; each scalar's gradient is a per-sample (or total) sum -------------


def _scalar_grad(product: Tensor, scalar: Tensor) -> Tensor:
    """d loss / d scalar from product = grad * (what the scalar multiplies): summed per sample for a per-sample
    scalar, in all for a shared one, in the scalar's shape and dtype."""
    total = product.float().sum() if scalar.numel() == 1 else product.float().reshape(product.shape[0], -1).sum(1)
    return total.reshape(scalar.shape).to(scalar.dtype)


def _per_sample(scalar: Tensor, like: Tensor) -> Tensor:
    """A [1] / [B] scalar shaped to broadcast over `like`'s [B, ...] (float32, as the kernels read it)."""
    return scalar.float().reshape(-1, *([1] * (like.dim() - 1))) if like.dim() else scalar.float().reshape(())


def _save_inputs(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*(t for t in inputs if t is not None))  # an absent optional b is the last argument


def _lincomb_setup(ctx, inputs: tuple, output: Tensor) -> None:
    tensors, coeffs = inputs
    ctx.save_for_backward(coeffs, *tensors)


def _lincomb_backward(ctx, grad: Tensor):
    coeffs, *inputs = ctx.saved_tensors
    c = coeffs.float()
    grad_inputs = [(grad.float() * (c[..., k].reshape(-1, *([1] * (grad.dim() - 1))) if c.dim() == 2 else c[k]))
                   .to(grad.dtype) for k in range(len(inputs))]
    columns = [_scalar_grad(grad * t, c[..., k] if c.dim() == 2 else c[k : k + 1]) for k, t in enumerate(inputs)]
    return grad_inputs, torch.stack(columns, -1).reshape(coeffs.shape).to(coeffs.dtype)


def _blend_backward(ctx, grad: Tensor):
    fresh, cached, w = ctx.saved_tensors
    wb = _per_sample(w, grad)
    g = grad.float()
    return (g * wb).to(fresh.dtype), (g * (1 - wb)).to(cached.dtype), _scalar_grad(g * (fresh.float() - cached.float()), w)


def _split(grad: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
    return grad[:, : first.shape[1]].float(), grad[:, first.shape[1] :].float()


def _skip_concat_backward(ctx, grad: Tensor):
    h, skip, rho, *b = ctx.saved_tensors
    g1, g2 = _split(grad, h)
    bb = _per_sample(b[0], h) if b else 1.0
    grads = ((g1 * bb).to(h.dtype), (g2 * _per_sample(rho, skip)).to(skip.dtype), _scalar_grad(g2 * skip.float(), rho))
    return (*grads, _scalar_grad(g1 * h.float(), b[0]) if b else None)


def _blend_concat_backward(ctx, grad: Tensor):
    fresh, cached, w, skip, rho, *b = ctx.saved_tensors
    g1, g2 = _split(grad, fresh)
    wb, bb = _per_sample(w, fresh), (_per_sample(b[0], fresh) if b else 1.0)
    blended = wb * fresh.float() + (1 - wb) * cached.float()
    g_blend = g1 * bb
    return ((g_blend * wb).to(fresh.dtype), (g_blend * (1 - wb)).to(cached.dtype),
            _scalar_grad(g_blend * (fresh.float() - cached.float()), w), (g2 * _per_sample(rho, skip)).to(skip.dtype),
            _scalar_grad(g2 * skip.float(), rho), _scalar_grad(g1 * blended, b[0]) if b else None)


class Functional(NamedTuple):
    """What both namespaces' functional form of an op registers: its fake kernel and its autograd."""

    fake: Callable[..., Tensor]
    backward: Callable
    setup_context: Callable


FUNCTIONAL: dict[str, Functional] = {
    "lincomb": Functional(_lincomb_fake, _lincomb_backward, _lincomb_setup),
    "skip_concat": Functional(_concat_fake, _skip_concat_backward, _save_inputs),
    "blend": Functional(_blend_fake, _blend_backward, _save_inputs),
    "blend_concat": Functional(_blend_concat_fake, _blend_concat_backward, _save_inputs),
}
