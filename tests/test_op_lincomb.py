"""lincomb on every available backend against the torch reference."""
from __future__ import annotations

import importlib
import pytest
import torch
from conftest import assert_matches, poisoned, randn, rel_err

from fused_diffusion import ops
from fused_diffusion.ops import reference
from fused_diffusion.ops.lincomb import LincombFunction

SIZES = [(1,), (7,), (1023,), (4097,), (3, 5, 7, 11)]


def coeff_row(k: int, device: str, batch: int | None = None) -> torch.Tensor:
    # float64, like a solver's coefficient table: dispatch converts it on the device.
    shape = (k,) if batch is None else (batch, k)
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(k)).to(device)


@pytest.mark.parametrize("shape", SIZES, ids=str)
@pytest.mark.parametrize("k", [1, 3, 6])
def test_matches_reference(backend, dtype, shape, k):
    _, device = backend
    xs = [randn(shape, dtype, device, seed=i) for i in range(k)]
    c = coeff_row(k, device)
    out = poisoned(shape, dtype, device)
    assert ops.lincomb(xs, c, out=out) is out
    assert_matches(out, reference.lincomb(xs, c))
    assert_matches(ops.lincomb(xs, c), reference.lincomb(xs, c))


@pytest.mark.parametrize("shape", [(7,), (1, 4097), (3, 5, 7, 11)], ids=str)
def test_per_sample_rows(backend, dtype, shape):
    _, device = backend
    xs = [randn(shape, dtype, device, seed=i) for i in range(3)]
    c = coeff_row(3, device, batch=shape[0])
    out = poisoned(shape, dtype, device)
    ops.lincomb(xs, c, out=out)
    assert_matches(out, reference.lincomb(xs, c))


def test_out_aliases_input(backend, dtype):
    _, device = backend
    xs = [randn((3, 5, 7, 11), dtype, device, seed=i) for i in range(3)]
    c = coeff_row(3, device, batch=3)
    expected = reference.lincomb(xs, c)
    ops.lincomb(xs, c, out=xs[1])
    assert_matches(xs[1], expected)


def test_out_partially_overlaps_input(backend):
    _, device = backend
    buf = randn((4100,), torch.float32, device, seed=0)
    x, out = buf[:-3], buf[3:]
    c = coeff_row(1, device)
    expected = reference.lincomb([x.clone()], c)
    ops.lincomb([x], c, out=out)
    assert_matches(out, expected)


def test_non_contiguous(backend, dtype):
    _, device = backend
    base = [randn((6, 11, 14), dtype, device, seed=i) for i in range(3)]
    xs = [base[0][::2], base[1].transpose(1, 2)[::2].transpose(1, 2), base[2][1::2]]  # strided, permuted views
    c = coeff_row(3, device, batch=3)
    out_buf = poisoned((3, 11, 28), dtype, device)
    out = out_buf[..., ::2]  # non-contiguous destination: the untouched half must stay NaN
    ops.lincomb(xs, c, out=out)
    assert_matches(out, reference.lincomb(xs, c))
    assert out_buf[..., 1::2].isnan().all()


@pytest.mark.parametrize("mixed", [False, True], ids=["all_cl", "mixed"])
def test_channels_last(backend, dtype, mixed):
    _, device = backend
    shape = (3, 5, 7, 11)
    xs = [randn(shape, dtype, device, channels_last=not (mixed and i == 1), seed=i) for i in range(2)]
    c = coeff_row(2, device, batch=3)
    out = poisoned(shape, dtype, device, channels_last=True)
    ops.lincomb(xs, c, out=out)
    assert_matches(out, reference.lincomb(xs, c))
    allocated = ops.lincomb(xs, c)
    assert_matches(allocated, reference.lincomb(xs, c))
    if not mixed:  # a fresh output keeps the inputs' layout
        assert allocated.is_contiguous(memory_format=torch.channels_last)


def test_batch_inner_layout(backend, dtype):
    """Dense, one shared layout, but the batch dim is innermost: per-sample rows need another path."""
    _, device = backend
    xs = [randn((5, 3), dtype, device, seed=i).t() for i in range(2)]  # shape (3, 5), strides (1, 3)
    c = coeff_row(2, device, batch=3)
    out = poisoned((5, 3), dtype, device).t()
    ops.lincomb(xs, c, out=out)
    assert_matches(out, reference.lincomb(xs, c))


def test_int64_offsets(monkeypatch):
    """The > 2^31-element path (int64 offsets), exercised on a small tensor."""
    if "triton" not in ops.backends()["available"]:
        pytest.skip("triton unavailable")
    kernel_module = importlib.import_module("fused_diffusion.ops.kernels.lincomb")
    monkeypatch.setattr(kernel_module, "needs_int64", lambda n: True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    xs = [randn((3, 5, 7, 11), torch.float32, device, seed=i) for i in range(2)]
    c = coeff_row(2, device, batch=3)
    with ops.use_backend("triton"):
        assert_matches(ops.lincomb(xs, c), reference.lincomb(xs, c))


def test_empty(backend):
    _, device = backend
    x = torch.empty((0, 3), device=device)
    assert ops.lincomb([x, x], coeff_row(2, device)).shape == (0, 3)


def test_mixed_dtypes_fall_back(backend):
    _, device = backend
    x = randn((7, 9), torch.float32, device, seed=0)
    y = randn((7, 9), torch.float16, device, seed=1)
    c = coeff_row(2, device)
    out = poisoned((7, 9), torch.float16, device)
    ops.lincomb([x, y], c, out=out)
    assert_matches(out, reference.lincomb([x, y], c, out=torch.empty_like(out)))
    x64 = randn((5,), torch.float64, device, seed=2)
    assert_matches(ops.lincomb([x64], coeff_row(1, device)), reference.lincomb([x64], coeff_row(1, device)))


@pytest.mark.parametrize("per_sample", [False, True], ids=["row", "per_sample"])
def test_function_gradcheck_fp64(per_sample):
    """Backward formulas of LincombFunction (reference forward; it computes in fp32, hence eps 1e-3)."""
    xs = [torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    c = torch.randn((2, 3) if per_sample else (3,), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda c, *xs: LincombFunction.apply(reference.lincomb, c, *xs), (c, *xs), eps=1e-3, atol=1e-3, rtol=1e-3
    )


@pytest.mark.parametrize("per_sample", [False, True], ids=["row", "per_sample"])
def test_gradients_match_reference(backend, per_sample):
    _, device = backend
    leaves = [randn((3, 4, 5), torch.float32, device, seed=i).requires_grad_() for i in range(3)]
    c = torch.randn((3, 3) if per_sample else (3,), device=device, requires_grad=True)
    grad_out = randn((3, 4, 5), torch.float32, device, seed=9)

    def grads(fn):
        out = fn(leaves[:2] + [leaves[2] * 1.0], c)
        return torch.autograd.grad(out, [*leaves, c], grad_out)

    got, expected = grads(ops.lincomb), grads(reference.lincomb)
    for g, e in zip(got, expected):
        assert rel_err(g, e) <= 1e-5


def test_grad_into_out(backend):
    _, device = backend
    x = randn((4, 6), torch.float32, device, seed=0).requires_grad_()
    out = torch.zeros(4, 6, device=device)
    ops.lincomb([x, x], torch.tensor([2.0, 1.0], device=device), out=out)
    out.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3.0))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x: ([x] * 7, torch.ones(7)), "1 to 6 inputs"),
        (lambda x: ([], torch.ones(0)), "1 to 6 inputs"),
        (lambda x: ([x, x], torch.ones(3)), "K=3 columns but 2 inputs"),
        (lambda x: ([x, x[:2]], torch.ones(2)), r"inputs\[1\] has shape"),
        (lambda x: ([x], torch.ones(4, 1)), "4 rows but the batch size is 3"),
        (lambda x: ([x], torch.ones(1, 1, 1)), r"\[K\] or per-sample \[B, K\]"),
        (lambda x: ([x], torch.ones(1, device="meta")), "coeffs is on meta"),
        (lambda x: ([x], [1.0]), "floating-point tensor"),
    ],
)
def test_errors(make, match):
    inputs, coeffs = make(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=match):
        ops.lincomb(inputs, coeffs)


def test_out_shape_error():
    with pytest.raises(ValueError, match="out has shape"):
        ops.lincomb([torch.zeros(3)], torch.ones(1), out=torch.zeros(4))
