"""The Python side of the torch custom ops `torch.ops.fused_diffusion.*` that the C++/CUDA extension defines
(csrc/library.cpp: a functional and an .out form of lincomb, skip_concat, blend and blend_concat): their fake
kernels (shapes, dtypes and layouts without data, so torch.compile traces them) and their autograd.

Eager calls take the extension through dispatch (its pybind entries cost ~1 us, an OpOverload call ~5 us); under
torch.compile every op call becomes one of these custom ops where the extension takes it (inductor keeps it one
kernel call, with no graph break) and the torch reference otherwise (which inductor fuses itself).
"""
from __future__ import annotations

import torch
from torch import Tensor

# the device types whose tensors the extension's ops take, once they are defined and their fake kernels and autograd
# registered here (empty before)
devices: frozenset[str] = frozenset()


def register(module) -> None:
    """Registers the fake kernels and autograd of the ops that importing the extension `module` (fused_diffusion._C)
    defined; once."""
    global devices
    if devices:
        return
    for name, fake in (("lincomb", _lincomb_fake), ("skip_concat", _concat_fake), ("blend", _blend_fake),
                       ("blend_concat", _blend_concat_fake)):
        torch.library.register_fake(f"fused_diffusion::{name}", fake)
        torch.library.register_fake(f"fused_diffusion::{name}.out", _out_fake)
    torch.library.register_autograd("fused_diffusion::lincomb", _lincomb_backward, setup_context=_lincomb_setup)
    torch.library.register_autograd("fused_diffusion::blend", _blend_backward, setup_context=_save_inputs)
    torch.library.register_autograd("fused_diffusion::skip_concat", _skip_concat_backward, setup_context=_save_inputs)
    torch.library.register_autograd("fused_diffusion::blend_concat", _blend_concat_backward,
                                    setup_context=_save_inputs)
    devices = frozenset({"cpu", "cuda"} if module.has_cuda() else {"cpu"})


def call(name: str, *args, out: Tensor | None = None) -> Tensor:
    """torch.ops.fused_diffusion.<name>(*args), or its .out form into `out`."""
    op = getattr(torch.ops.fused_diffusion, name)
    if out is None:
        return op.default(*args)
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
