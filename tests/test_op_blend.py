"""blend on every available backend against the torch reference."""
from __future__ import annotations

import pytest
import torch
from conftest import assert_matches, poisoned, randn

from fused_diffusion import ops
from fused_diffusion.ops import reference

SIZES = [(1,), (7,), (1023,), (4097,), (3, 5, 7, 11)]


def weight(kind: str, batch: int, device: str):
    gen = torch.Generator().manual_seed(batch)
    return {
        "scalar": lambda: torch.rand((), generator=gen).to(device),
        "one": lambda: torch.rand(1, generator=gen).to(device),
        "per_sample": lambda: torch.rand(batch, generator=gen).to(device),
        "broadcastable": lambda: torch.rand(batch, 1, generator=gen).to(device),  # [B, 1, ...] also works
        "python": lambda: 0.3,
    }[kind]()


def as_tensor(w, device):
    return torch.tensor(w, device=device) if isinstance(w, float) else w


@pytest.mark.parametrize("shape", SIZES, ids=str)
@pytest.mark.parametrize("kind", ["scalar", "one", "per_sample", "broadcastable", "python"])
def test_matches_reference(backend, dtype, shape, kind):
    _, device = backend
    fresh, cached = randn(shape, dtype, device, seed=0), randn(shape, dtype, device, seed=1)
    w = weight(kind, shape[0], device)
    expected = reference.blend(fresh, cached, as_tensor(w, device))
    out = poisoned(shape, dtype, device)
    assert ops.blend(fresh, cached, w, out=out) is out
    assert_matches(out, expected)
    assert_matches(ops.blend(fresh, cached, w), expected)


@pytest.mark.parametrize("w, pick", [(0.0, 1), (1.0, 0)], ids=["reuse", "fresh"])
def test_endpoints_are_exact(backend, dtype, w, pick):
    """w = 0 returns the cache bit for bit (DeepCache's pure reuse); w = 1 the fresh feature."""
    _, device = backend
    pair = [randn((3, 5, 7, 11), dtype, device, seed=i) for i in range(2)]
    out = ops.blend(*pair, torch.full((3,), w, device=device))
    assert torch.equal(out, pair[pick])


@pytest.mark.parametrize("alias", [0, 1], ids=["out_is_fresh", "out_is_cached"])
def test_out_aliases_input(backend, dtype, alias):
    _, device = backend
    pair = [randn((3, 5, 7, 11), dtype, device, seed=i) for i in range(2)]
    w = weight("per_sample", 3, device)
    expected = reference.blend(*pair, w)
    ops.blend(*pair, w, out=pair[alias])
    assert_matches(pair[alias], expected)


def test_non_contiguous(backend, dtype):
    _, device = backend
    fresh = randn((6, 5, 7), dtype, device, seed=0)[::2]
    cached = randn((3, 7, 5), dtype, device, seed=1).transpose(1, 2)
    buf = poisoned((3, 5, 14), dtype, device)
    w = weight("per_sample", 3, device)
    ops.blend(fresh, cached, w, out=buf[..., ::2])
    assert_matches(buf[..., ::2], reference.blend(fresh, cached, w))
    assert buf[..., 1::2].isnan().all()


@pytest.mark.parametrize("cached_cl", [True, False], ids=["all_cl", "mixed"])
def test_channels_last(backend, dtype, cached_cl):
    _, device = backend
    fresh = randn((3, 5, 7, 11), dtype, device, channels_last=True, seed=0)
    cached = randn((3, 5, 7, 11), dtype, device, channels_last=cached_cl, seed=1)
    w = weight("per_sample", 3, device)
    out = ops.blend(fresh, cached, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches(out, reference.blend(fresh, cached, w))


def test_gradients_fall_back_to_reference(backend):
    _, device = backend
    fresh = randn((2, 3), torch.float32, device, seed=0).requires_grad_()
    cached = randn((2, 3), torch.float32, device, seed=1)
    w = torch.tensor([0.25, 0.5], device=device, requires_grad=True)
    ops.blend(fresh, cached, w).sum().backward()
    assert torch.allclose(fresh.grad, w.detach()[:, None].expand(2, 3))
    assert torch.allclose(w.grad, (fresh - cached).detach().sum(1))


@pytest.mark.parametrize(
    "shapes, w, match",
    [
        (((2, 3), (2, 4)), 0.5, "cached has shape"),
        (((2, 3), (2, 3)), torch.ones(3), "w must have 1 element or one per batch element"),
        (((2, 3), (2, 3)), torch.ones(1, 2), "w must have 1 element"),
        (((2, 3), (2, 3)), torch.ones(1, device="meta"), "w is on meta"),
    ],
)
def test_errors(shapes, w, match):
    with pytest.raises(ValueError, match=match):
        ops.blend(torch.zeros(shapes[0]), torch.zeros(shapes[1]), w)
