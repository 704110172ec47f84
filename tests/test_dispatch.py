"""Backend choice, forcing and availability reporting (ops/availability.py) and the one dispatch path with its launch
counter (ops/dispatch.py)."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from conftest import HAS_CUDA, randn

import fused_diffusion
from fused_diffusion import ops
from fused_diffusion.ops import availability
from fused_diffusion.ops import reference


@pytest.fixture
def fresh_caches():
    """Clears the cached availability before and after a test that fakes the environment."""
    availability.clear_caches()
    yield
    availability.clear_caches()


def run_all_ops(device: str = "cpu") -> None:
    x = torch.randn(2, 3, 4, 4, device=device)
    one = torch.ones(1, device=device)
    ops.lincomb([x, x], torch.ones(2, device=device))
    ops.skip_concat(x, x, one)
    ops.blend(x, x, one)
    ops.blend_concat(x, x, one, x, one)


def test_backends_report():
    info = ops.backends()
    assert "torch" in info["available"]
    assert set(info["available"]) | set(info["unavailable"]) == set(availability.BACKENDS)
    assert all(isinstance(why, str) and why for why in info["unavailable"].values())
    assert info["active"]["cpu"] in info["available"]
    assert info["active"]["cuda"] == (None if not HAS_CUDA else info["active"]["cuda"])
    if HAS_CUDA:
        assert info["active"]["cuda"] in ("triton", "cuda", "torch")
    assert ops.backends is availability.backends and "use_backend" in ops.__all__


@pytest.mark.parametrize("name", ["torch", "cpp", "triton"])
def test_use_backend_runs_that_backend(name):
    if name not in ops.backends()["available"]:
        pytest.skip(f"{name} unavailable here")
    x = torch.randn(5)
    with ops.use_backend(name), ops.count_op_launches() as launches:
        assert ops.backends()["forced"] == name
        ops.lincomb([x], torch.ones(1))
    assert launches.launches == {("lincomb", name): 1}
    assert ops.backends()["forced"] is None


def test_use_backend_nests_and_restores():
    x = torch.randn(5)
    with ops.use_backend("torch"), ops.count_op_launches() as launches:
        with ops.use_backend("triton" if "triton" in ops.backends()["available"] else "torch"):
            pass
        ops.blend(x, x, 0.5)
    assert launches.launches == {("blend", "torch"): 1}
    assert ops.backends()["forced"] is None


def test_environment_variable_forces(monkeypatch):
    monkeypatch.setenv("FUSED_DIFFUSION_BACKEND", "torch")
    assert ops.backends()["active"]["cpu"] == "torch"
    x = torch.randn(2, 3, 4)
    with ops.count_op_launches() as launches:
        ops.skip_concat(x, x, torch.ones(1))
    assert launches.launches == {("skip_concat", "torch"): 1}


def test_unknown_backend_names():
    with pytest.raises(ValueError, match="unknown backend 'metal'"):
        with ops.use_backend("metal"):
            pass


def test_bad_environment_variable(monkeypatch):
    monkeypatch.setenv("FUSED_DIFFUSION_BACKEND", "fast")
    with pytest.raises(ValueError, match="FUSED_DIFFUSION_BACKEND='fast'"):
        ops.lincomb([torch.ones(2)], torch.ones(1))


def test_forced_backend_on_wrong_device_says_why(monkeypatch):
    monkeypatch.setenv("FUSED_DIFFUSION_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="'cuda' was forced but cannot run cpu tensors: .*"):
        ops.lincomb([torch.ones(2)], torch.ones(1))


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
def test_use_backend_unavailable_everywhere_raises():
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: cuda: torch sees no CUDA device"):
        with ops.use_backend("cuda"):
            pass


def test_missing_extension_is_reported(monkeypatch, fresh_caches):
    monkeypatch.setitem(sys.modules, "fused_diffusion._ext", None)  # makes the import fail
    monkeypatch.delattr(fused_diffusion, "_ext", raising=False)
    info = ops.backends()
    assert "cpp" not in info["available"]
    assert "fused_diffusion._ext is missing" in info["unavailable"]["cpp"]
    assert info["active"]["cpu"] == "torch"
    with pytest.raises(RuntimeError, match="_ext is missing"):
        with ops.use_backend("cpp"):
            pass


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_runs_here():
    """With CUDA, or under TRITON_INTERPRET=1 (conftest sets it on CPU), the op suite must reach triton."""
    if HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1":
        assert "triton" in ops.backends()["available"], ops.backends()["unavailable"].get("triton")


def test_auto_order_on_cpu():
    expected = "cpp" if "cpp" in ops.backends()["available"] else "torch"
    assert ops.backends()["active"]["cpu"] == expected


def test_count_op_launches_during_and_after(backend):
    name, device = backend
    with ops.count_op_launches() as outer:
        assert outer.count == 0
        run_all_ops(device)
        assert outer.count == 4
        with ops.count_op_launches() as inner:
            ops.lincomb([torch.ones(3, device=device)], torch.ones(1, device=device))
        run_all_ops(device)
    ops.lincomb([torch.ones(3, device=device)], torch.ones(1, device=device))
    assert (inner.count, outer.count) == (1, 9)
    assert outer.launches == {(op, name): 2 for op in ("lincomb", "skip_concat", "blend", "blend_concat")} | {
        ("lincomb", name): 3}


def test_backward_launches_are_counted(backend):
    name, device = backend
    xs = [randn((4, 5), torch.float32, device, seed=i).requires_grad_() for i in range(3)]
    with ops.count_op_launches() as n:
        out = ops.lincomb(xs, torch.ones(3, device=device))
        assert n.count == 1
        out.sum().backward()
    # Kernel backends launch one lincomb per input gradient; torch differentiates the reference.
    assert n.count == (1 if name == "torch" else 4)


def test_grad_goes_through_function(backend):
    name, device = backend
    x = randn((4, 5), torch.float32, device, seed=0).requires_grad_()
    c = torch.ones(1, device=device)
    y = ops.lincomb([x], c)
    assert ("LincombFunction" in type(y.grad_fn).__name__) == (name != "torch")
    with torch.no_grad():
        assert ops.lincomb([x], c).grad_fn is None


def test_unsupported_dtype_falls_back_to_reference(backend):
    name, device = backend
    x = torch.randn(5, dtype=torch.float64, device=device)
    with ops.count_op_launches() as launches:
        y = ops.lincomb([x, x.float()], torch.ones(2, device=device))
    assert launches.launches == {("lincomb", "torch"): 1} and y.dtype == torch.float64
    assert torch.allclose(y, reference.lincomb([x, x.float()], torch.ones(2, device=device)))


@pytest.mark.parametrize("name", sorted(ops.SPECS))
def test_every_op_is_described_once_for_every_backend(name):
    """Each spec names its torch definition, Triton launcher and extension entry; the public function uses it."""
    spec = ops.SPECS[name]
    assert spec.reference is getattr(reference, name)
    assert getattr(ops, name).__module__ == f"fused_diffusion.ops.{name}"
    kernels, _ = availability.triton_kernels()
    if kernels is not None:
        assert callable(spec.triton(kernels))
    module, _ = availability.extension()
    if module is not None:
        assert callable(getattr(module, name))


def test_gradients_through_the_extension_need_no_triton(monkeypatch, fresh_caches):
    """The autograd Function lives with the op, not in a backend: with triton failing to import, a differentiable
    lincomb still runs forward and backward on the C++ extension."""
    from fused_diffusion import ops as ops_package

    monkeypatch.setitem(sys.modules, "fused_diffusion.ops.kernels", None)  # makes the import fail
    monkeypatch.delattr(ops_package, "kernels", raising=False)
    assert "triton" not in ops.backends()["available"]
    if "cpp" not in ops.backends()["available"]:
        pytest.skip("the C++ extension is unavailable here")
    x = randn((4, 5), torch.float32, "cpu", seed=0).requires_grad_()
    with ops.use_backend("cpp"), ops.count_op_launches() as launches:
        y = ops.lincomb([x], torch.full((1,), 3.0))
        y.sum().backward()
    assert "LincombFunction" in type(y.grad_fn).__name__
    assert launches.launches == {("lincomb", "cpp"): 2}
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))


@pytest.mark.skipif(availability.unavailable("cpp", "cpu") is not None, reason="the C++ extension is not built")
def test_common_call_takes_the_allocating_entry(monkeypatch):
    """A call without out, on contiguous fp32 data needing no gradient, is one call of the extension's `<op>_new`
    (what makes a public call cost about two torch ops); what it refuses or cannot take goes the full path."""
    module = availability.extension()[0]
    entries = {}
    for name, spec in ops.SPECS.items():
        entry = getattr(module, spec.allocating_entry)
        monkeypatch.setattr(module, spec.allocating_entry,
                            lambda *a, entry=entry, name=name: entries.__setitem__(name, entries.get(name, 0) + 1)
                            or entry(*a))
    x = torch.randn(2, 3, 4, 4)
    one = torch.ones(1)
    expected = reference.blend(x, 2 * x, one * 0.25, torch.empty_like(x))
    with ops.use_backend("cpp"):
        run_all_ops()
        assert entries == dict.fromkeys(ops.SPECS, 1)
        torch.testing.assert_close(ops.blend(x, 2 * x, one * 0.25), expected)
        ops.blend(x, 2 * x, 0.25)  # a Python number: converted by the full path
        ops.blend(x.to(memory_format=torch.channels_last), x, one)  # another layout: the full path keeps it
        ops.blend(x.requires_grad_(), x, one)  # a gradient to record
        with pytest.raises(ValueError, match=r"w must have 1 element or one per batch element \(2\)"):
            ops.blend(x, x, torch.ones(1, 2))  # refused by the extension, named by the full path's checks
        with pytest.raises(TypeError, match="w must be a real tensor, got dtype torch.complex64"):
            ops.blend(x.detach(), x.detach(), torch.tensor([0.5 + 1j]))  # not converted: it would lose its imaginary part
        with pytest.raises(ValueError, match="coeffs must be a floating-point tensor"):
            ops.lincomb([x.detach(), x.detach()], torch.tensor([1, 2]))
    assert entries["blend"] == 4 and entries["lincomb"] == 2  # the extension refused the last of each
