"""blend_concat on every available backend against the torch reference."""
from __future__ import annotations

import importlib
import pytest
import torch
from conftest import CONCAT_SHAPES, assert_matches, concat_scalars, concat_shape, poisoned, randn

from fused_diffusion import ops
from fused_diffusion.ops import reference


def weight(per_sample: bool, batch: int, device: str) -> torch.Tensor:
    return torch.rand(batch if per_sample else 1, generator=torch.Generator().manual_seed(7)).to(device)


@pytest.mark.parametrize("shapes", CONCAT_SHAPES, ids=lambda s: "x".join(map(str, s[0])))
@pytest.mark.parametrize("kind", ["scalar", "per_sample", "mixed"])
def test_matches_reference(backend, dtype, shapes, kind):
    _, device = backend
    fresh, cached = randn(shapes[0], dtype, device, seed=0), randn(shapes[0], dtype, device, seed=1)
    skip = randn(shapes[1], dtype, device, seed=2)
    rho, b = concat_scalars(kind, fresh.shape[0], device)
    w = weight(kind != "scalar", fresh.shape[0], device)
    expected = reference.blend_concat(fresh, cached, w, skip, rho, b)
    out = poisoned(concat_shape(*shapes), dtype, device)
    assert ops.blend_concat(fresh, cached, w, skip, rho, b, out=out) is out
    assert_matches(out, expected)
    assert_matches(ops.blend_concat(fresh, cached, w, skip, rho, b), expected)


def test_python_numbers(backend):
    _, device = backend
    fresh, cached, skip = (randn((2, 3, 4, 5), torch.float32, device, seed=i) for i in range(3))
    expected = reference.blend_concat(
        fresh, cached, torch.tensor(0.25, device=device), skip, torch.tensor(0.5, device=device)
    )
    assert_matches(ops.blend_concat(fresh, cached, 0.25, skip, 0.5), expected)


@pytest.mark.parametrize("out_cl", [True, False], ids=["cl", "nchw_out"])
def test_channels_last(backend, dtype, out_cl):
    _, device = backend
    fresh, cached = (randn((3, 5, 7, 11), dtype, device, channels_last=True, seed=i) for i in range(2))
    skip = randn((3, 4, 7, 11), dtype, device, channels_last=True, seed=2)
    w, (rho, b) = weight(True, 3, device), concat_scalars("per_sample", 3, device)
    out = poisoned((3, 9, 7, 11), dtype, device, channels_last=out_cl)
    ops.blend_concat(fresh, cached, w, skip, rho, b, out=out)
    assert_matches(out, reference.blend_concat(fresh, cached, w, skip, rho, b))
    assert ops.blend_concat(fresh, cached, w, skip, rho, b).is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous(backend, dtype):
    _, device = backend
    fresh = randn((3, 10, 7, 11), dtype, device, seed=0)[:, 1::2]
    cached = randn((3, 5, 11, 7), dtype, device, seed=1).transpose(2, 3)
    skip = randn((3, 4, 7, 11), dtype, device, seed=2)
    buf = poisoned((3, 9, 7, 22), dtype, device)
    w, (rho, b) = weight(True, 3, device), concat_scalars("mixed", 3, device)
    ops.blend_concat(fresh, cached, w, skip, rho, b, out=buf[..., ::2])
    assert_matches(buf[..., ::2], reference.blend_concat(fresh, cached, w, skip, rho, b))
    assert buf[..., 1::2].isnan().all()


def test_int64_offsets(monkeypatch):
    """The > 2^31-element path (int64 offsets) of the concat kernel, exercised on a small tensor."""
    if "triton" not in ops.backends()["available"]:
        pytest.skip("triton unavailable")
    kernel_module = importlib.import_module("fused_diffusion.ops.kernels.skip_concat")
    monkeypatch.setattr(kernel_module, "needs_int64", lambda n: True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fresh, cached = (randn((3, 5, 7, 11), torch.float32, device, seed=i) for i in range(2))
    skip = randn((3, 4, 7, 11), torch.float32, device, seed=2)
    w, (rho, b) = weight(True, 3, device), concat_scalars("mixed", 3, device)
    with ops.use_backend("triton"):
        out = ops.blend_concat(fresh, cached, w, skip, rho, b)
    assert_matches(out, reference.blend_concat(fresh, cached, w, skip, rho, b))


def test_reuse_is_exact(backend, dtype):
    """w = 0, b = rho = 1: the output is cat([cached, skip]) bit for bit."""
    _, device = backend
    fresh, cached = (randn((2, 3, 5, 5), dtype, device, seed=i) for i in range(2))
    skip = randn((2, 2, 5, 5), dtype, device, seed=2)
    one = torch.ones(1, device=device)
    out = ops.blend_concat(fresh, cached, torch.zeros(1, device=device), skip, one, one)
    assert torch.equal(out, torch.cat([cached, skip], 1))


@pytest.mark.parametrize(
    "cached_shape, skip_shape, w, match",
    [
        ((2, 3, 4, 4), (2, 1, 4, 4), torch.ones(1), None),
        ((2, 2, 4, 4), (2, 1, 4, 4), torch.ones(1), "cached has shape"),
        ((2, 3, 4, 4), (2, 1, 4, 3), torch.ones(1), "differ only in dim 1"),
        ((2, 3, 4, 4), (2, 1, 4, 4), torch.ones(5), "w must have 1 element or one per batch element"),
    ],
)
def test_errors(cached_shape, skip_shape, w, match):
    args = (torch.zeros(2, 3, 4, 4), torch.zeros(cached_shape), w, torch.zeros(skip_shape), torch.ones(2))
    if match is None:  # the valid baseline of this table
        assert ops.blend_concat(*args).shape == (2, 4, 4, 4)
        return
    with pytest.raises(ValueError, match=match):
        ops.blend_concat(*args)
