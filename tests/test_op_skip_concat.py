"""skip_concat on every available backend against the torch reference."""
from __future__ import annotations

import pytest
import torch
from conftest import CONCAT_SHAPES, assert_matches, concat_scalars, concat_shape, poisoned, randn, rel_err

from fused_diffusion import ops
from fused_diffusion.ops import reference

@pytest.mark.parametrize("shapes", CONCAT_SHAPES, ids=lambda s: "x".join(map(str, s[0])))
@pytest.mark.parametrize("kind", ["scalar", "per_sample", "mixed", "python"])
def test_matches_reference(backend, dtype, shapes, kind):
    _, device = backend
    h, skip = randn(shapes[0], dtype, device, seed=0), randn(shapes[1], dtype, device, seed=1)
    rho, b = concat_scalars(kind, h.shape[0], device)
    out = poisoned(concat_shape(*shapes), dtype, device)
    assert ops.skip_concat(h, skip, rho, b, out=out) is out
    assert_matches(out, reference.skip_concat(h, skip, *_as_tensors(rho, b, device)))
    assert_matches(ops.skip_concat(h, skip, rho, b), reference.skip_concat(h, skip, *_as_tensors(rho, b, device)))


def _as_tensors(rho, b, device):
    """The reference takes device tensors only."""
    return [torch.tensor(v, device=device) if isinstance(v, float) else v for v in (rho, b)]


@pytest.mark.parametrize("layouts", ["cl_cl_cl", "cl_cl_new", "cl_nchw_nchw", "nchw_nchw_cl"])
def test_channels_last(backend, dtype, layouts):
    """h / skip / out layouts; "new" lets the op allocate out (it must then be channels_last)."""
    _, device = backend
    cl = [name == "cl" for name in layouts.split("_")]
    h = randn((3, 5, 7, 11), dtype, device, channels_last=cl[0], seed=0)
    skip = randn((3, 4, 7, 11), dtype, device, channels_last=cl[1], seed=1)
    rho, b = concat_scalars("per_sample", 3, device)
    expected = reference.skip_concat(h, skip, rho, b)
    if layouts.endswith("new"):
        out = ops.skip_concat(h, skip, rho, b)
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        out = poisoned((3, 9, 7, 11), dtype, device, channels_last=cl[2])
        ops.skip_concat(h, skip, rho, b, out=out)
        assert out.is_contiguous(memory_format=torch.channels_last if cl[2] else torch.contiguous_format)
    assert_matches(out, expected)


def test_non_contiguous(backend, dtype):
    _, device = backend
    h = randn((3, 10, 7, 11), dtype, device, seed=0)[:, ::2]
    skip = randn((3, 4, 11, 7), dtype, device, seed=1).transpose(2, 3)
    buf = poisoned((3, 9, 7, 22), dtype, device)
    out = buf[..., ::2]
    rho, b = concat_scalars("mixed", 3, device)
    ops.skip_concat(h, skip, rho, b, out=out)
    assert_matches(out, reference.skip_concat(h, skip, rho, b))
    assert buf[..., 1::2].isnan().all()


def test_h_is_a_slice_of_out(backend):
    """The U-Net may have written h into the concat buffer already: h overlaps out."""
    _, device = backend
    out = randn((2, 7, 5, 5), torch.float32, device, seed=0)
    h = out[:, :3]
    skip = randn((2, 4, 5, 5), torch.float32, device, seed=1)
    rho, b = concat_scalars("per_sample", 2, device)
    expected = reference.skip_concat(h.clone(), skip, rho, b)
    ops.skip_concat(h, skip, rho, b, out=out)
    assert_matches(out, expected)


def test_skip_overlaps_out(backend):
    """A contiguous input inside the destination (B = 1) must be read before any of it is overwritten."""
    _, device = backend
    out = randn((1, 7, 32, 32), torch.float32, device, seed=0)  # > one block, so several programs
    skip = out[:, 2:6]
    h = randn((1, 3, 32, 32), torch.float32, device, seed=1)
    rho = torch.full((1,), 2.0, device=device)
    expected = reference.skip_concat(h, skip.clone(), rho)
    ops.skip_concat(h, skip, rho, out=out)
    assert_matches(out, expected)


def test_gradients_fall_back_to_reference(backend):
    _, device = backend
    h = randn((2, 3, 4, 4), torch.float32, device, seed=0).requires_grad_()
    skip = randn((2, 2, 4, 4), torch.float32, device, seed=1).requires_grad_()
    rho = torch.tensor([0.5, 2.0], device=device, requires_grad=True)
    g = randn((2, 5, 4, 4), torch.float32, device, seed=2)
    got = torch.autograd.grad(ops.skip_concat(h, skip, rho), [h, skip, rho], g)
    expected = torch.autograd.grad(reference.skip_concat(h, skip, rho), [h, skip, rho], g)
    for a, e in zip(got, expected):
        assert rel_err(a, e) <= 1e-6


@pytest.mark.parametrize(
    "h_shape, skip_shape, out_shape, rho, match",
    [
        ((2, 3, 4, 4), (2, 3, 5, 4), None, 1.0, "differ only in dim 1"),
        ((2, 3, 4, 4), (3, 3, 4, 4), None, 1.0, "differ only in dim 1"),
        ((3,), (3,), None, 1.0, "differ only in dim 1"),
        ((2, 3, 4, 4), (2, 1, 4, 4), (2, 3, 4, 4), 1.0, "concatenation has shape"),
        ((2, 3, 4, 4), (2, 1, 4, 4), None, torch.ones(3), "rho must have 1 element or one per batch element"),
        ((2, 3, 4, 4), (2, 1, 4, 4), None, torch.ones(1, device="meta"), "rho is on meta"),
        ((2, 3, 4, 4), (2, 1, 4, 4), None, "0.5", "rho must be a tensor or a Python number"),
    ],
)
def test_errors(h_shape, skip_shape, out_shape, rho, match):
    out = None if out_shape is None else torch.zeros(out_shape)
    with pytest.raises(ValueError, match=match):
        ops.skip_concat(torch.zeros(h_shape), torch.zeros(skip_shape), rho, out=out)
