"""The raw C++/CUDA extension (fused_diffusion._C or its JIT build) against the torch reference ops.

Skips only when the extension cannot be loaded and FUSED_DIFFUSION_REQUIRE_EXT is unset (CI sets it,
so there a missing extension fails instead of silently dropping the cpp backend's coverage).
"""
from __future__ import annotations

import os

import pytest
import torch

from fused_diffusion import _ext
from fused_diffusion.ops import reference as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# Odd sizes (never multiples of a vector or block); the last is large enough to be split across threads
# at points inside a sample.
SIZES = [(1,), (7,), (1023,), (4097,), (3, 5, 7, 11), (5, 20011)]
NAN = float("nan")


@pytest.fixture(scope="module")
def C():
    module, reason = _ext.load()
    if module is None:
        if os.environ.get("FUSED_DIFFUSION_REQUIRE_EXT"):
            pytest.fail(f"FUSED_DIFFUSION_REQUIRE_EXT is set but the extension is unavailable: {reason}")
        pytest.skip(reason)
    return module


@pytest.fixture(params=DEVICES)
def device(request, C):
    if request.param == "cuda" and not C.has_cuda():
        pytest.skip("extension built without CUDA")
    return request.param


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    assert not out.isnan().any(), "unwritten (NaN-poisoned) elements in the output"
    return ((out.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()


def randn(*shape, dtype, device, channels_last=False):
    t = torch.randn(*shape, device=device).to(dtype)
    return t.to(memory_format=torch.channels_last) if channels_last else t


def test_load_reports_how(C):
    _, reason = _ext.load()
    assert reason and _ext.load()[0] is C  # cached: one build, one answer
    assert isinstance(C.has_cuda(), bool)
    for name in ("lincomb", "skip_concat", "blend", "blend_concat"):
        assert callable(getattr(C, name))


# ---- lincomb ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_lincomb(C, device, dtype, shape, k, per_sample):
    xs = [randn(*shape, dtype=dtype, device=device) for _ in range(k)]
    coeffs = torch.randn(shape[0], k, device=device) if per_sample else torch.randn(k, device=device)
    out = torch.full_like(xs[0], NAN)
    assert C.lincomb(xs, coeffs, out) is None
    assert rel_err(out, ref.lincomb(xs, coeffs)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alias", [0, 2])
def test_lincomb_in_place(C, device, dtype, alias):
    xs = [randn(3, 5, 7, 11, dtype=dtype, device=device) for _ in range(3)]
    coeffs = torch.randn(3, 3, device=device)
    expected = ref.lincomb(xs, coeffs)
    C.lincomb(xs, coeffs, xs[alias])
    assert rel_err(xs[alias], expected) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_lincomb_channels_last_per_sample(C, device, dtype):
    xs = [randn(3, 5, 7, 11, dtype=dtype, device=device, channels_last=True) for _ in range(4)]
    coeffs = torch.randn(3, 4, device=device)
    out = torch.full_like(xs[0], NAN)
    C.lincomb(xs, coeffs, out)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, ref.lincomb(xs, coeffs)) <= TOL[dtype]


def test_lincomb_coefficient_views(C, device):
    """A [1, K] row broadcasts; a strided slice of a wider table (one step's row) is read in place."""
    xs = [randn(2, 9, dtype=torch.float32, device=device) for _ in range(2)]
    table = torch.randn(5, 2, 4, device=device)
    for coeffs in (table[3, :1, :2], table[3, :, 1:3], table[:, 0, 3][:2]):
        out = torch.full_like(xs[0], NAN)
        C.lincomb(xs, coeffs, out)
        assert rel_err(out, ref.lincomb(xs, coeffs)) <= 1e-5


def test_lincomb_empty(C, device):
    x = torch.empty(0, 5, device=device)
    C.lincomb([x, x], torch.ones(2, device=device), x)


# ---- skip_concat / blend / blend_concat ----

# (h or fresh shape, skip shape): odd channel and spatial sizes, 2-D to 5-D.
CONCAT_SHAPES = [
    ((1, 1), (1, 1)),
    ((3, 7), (3, 4)),
    ((2, 3, 1023), (2, 5, 1023)),
    ((3, 5, 7, 11), (3, 2, 7, 11)),
    ((1, 8, 4, 4), (1, 8, 4, 4)),
    ((2, 3, 3, 5, 7), (2, 6, 3, 5, 7)),
    ((3, 7, 101, 53), (3, 5, 101, 53)),  # big enough to be split across threads
]
SCALARS = ["shared", "per_sample", "no_b"]


def concat_inputs(h_shape, skip_shape, dtype, device, channels_last, scalars):
    n = h_shape[0]
    h = randn(*h_shape, dtype=dtype, device=device, channels_last=channels_last)
    skip = randn(*skip_shape, dtype=dtype, device=device, channels_last=channels_last)
    out_shape = (n, h_shape[1] + skip_shape[1], *h_shape[2:])
    out = torch.full(out_shape, NAN, dtype=dtype, device=device)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    size = n if scalars == "per_sample" else 1
    rho = torch.rand(size, device=device) + 0.5
    b = None if scalars == "no_b" else torch.rand(size, device=device) + 0.5
    return h, skip, rho, b, out


def layouts():
    """(shapes, channels_last) pairs: every shape contiguous, the 4-D ones also channels_last."""
    for shapes in CONCAT_SHAPES:
        yield pytest.param(shapes, False, id=f"{shapes[0]}+{shapes[1]}")
        if len(shapes[0]) == 4:
            yield pytest.param(shapes, True, id=f"{shapes[0]}+{shapes[1]}-channels_last")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes,channels_last", list(layouts()))
@pytest.mark.parametrize("scalars", SCALARS)
def test_skip_concat(C, device, dtype, shapes, channels_last, scalars):
    h, skip, rho, b, out = concat_inputs(*shapes, dtype, device, channels_last, scalars)
    assert C.skip_concat(h, skip, rho, b, out) is None
    assert rel_err(out, ref.skip_concat(h, skip, rho, b)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes,channels_last", list(layouts()))
@pytest.mark.parametrize("scalars", SCALARS)
def test_blend_concat(C, device, dtype, shapes, channels_last, scalars):
    fresh, skip, rho, b, out = concat_inputs(*shapes, dtype, device, channels_last, scalars)
    cached = torch.randn_like(fresh)
    w = torch.rand(rho.numel(), device=device)
    assert C.blend_concat(fresh, cached, w, skip, rho, b, out) is None
    assert rel_err(out, ref.blend_concat(fresh, cached, w, skip, rho, b)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_blend(C, device, dtype, shape, per_sample):
    fresh, cached = (randn(*shape, dtype=dtype, device=device) for _ in range(2))
    w = torch.rand(shape[0] if per_sample else 1, device=device)
    out = torch.full_like(fresh, NAN)
    assert C.blend(fresh, cached, w, out) is None
    assert rel_err(out, ref.blend(fresh, cached, w)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("into", ["fresh", "cached"])
def test_blend_in_place_channels_last(C, device, dtype, into):
    fresh, cached = (randn(3, 5, 7, 11, dtype=dtype, device=device, channels_last=True) for _ in range(2))
    w = torch.rand(3, 1, 1, 1, device=device)  # per-sample scalars may carry broadcast dims
    expected = ref.blend(fresh, cached, w.flatten())
    out = fresh if into == "fresh" else cached
    C.blend(fresh, cached, w, out)
    assert rel_err(out, expected) <= TOL[dtype]


def test_blend_extremes_are_exact(C, device):
    """w = 0 reuses the cache untouched and w = 1 takes the fresh features (DeepCache's two ends)."""
    fresh, cached = (randn(2, 3, 5, dtype=torch.float16, device=device) for _ in range(2))
    out = torch.full_like(fresh, NAN)
    C.blend(fresh, cached, torch.tensor([0.0, 1.0], device=device), out)
    assert torch.equal(out[0], cached[0]) and torch.equal(out[1], fresh[1])


# ---- CUDA-graph capture: coefficients live in device memory, so a replay sees rewritten values ----


@pytest.mark.gpu
def test_lincomb_graph_replay_reads_new_coefficients(C):
    if not C.has_cuda():
        pytest.skip("extension built without CUDA")
    xs = [torch.randn(4, 3, 33, 33, device="cuda", dtype=torch.float16) for _ in range(3)]
    coeffs = torch.randn(4, 3, device="cuda")
    out = torch.empty_like(xs[0])
    C.lincomb(xs, coeffs, out)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        C.lincomb(xs, coeffs, out)
    coeffs.copy_(torch.randn(4, 3, device="cuda"))
    out.fill_(NAN)
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, ref.lincomb(xs, coeffs)) <= 1e-2


# ---- argument checks: clear messages instead of wrong results ----


def _x(*shape, **kw):
    return torch.randn(*shape, **kw)


ERRORS = {
    "too many inputs": (lambda C: C.lincomb([_x(4)] * 7, _x(7), _x(4)), r"got 7 inputs, supported are 1 to 6"),
    "no inputs": (lambda C: C.lincomb([], _x(0), _x(4)), r"got 0 inputs"),
    "coeff width": (lambda C: C.lincomb([_x(4)] * 2, _x(3), _x(4)), r"coeffs has 3 columns but there are 2 inputs"),
    "coeff rows": (lambda C: C.lincomb([_x(2, 4)], _x(3, 1), _x(2, 4)), r"coeffs has 3 rows but the batch size is 2"),
    "coeff dtype": (
        lambda C: C.lincomb([_x(4)], _x(1, dtype=torch.float64), _x(4)),
        r"coeffs must be float32, got Double",
    ),
    "dtype mismatch": (
        lambda C: C.lincomb([_x(4, dtype=torch.float16)], _x(1), _x(4)),
        r"inputs\[0\] has dtype Half but out has dtype Float",
    ),
    "unsupported dtype": (
        lambda C: C.lincomb([_x(4, dtype=torch.float64)], _x(1), _x(4, dtype=torch.float64)),
        r"dtype must be float32, float16 or bfloat16",
    ),
    "device mismatch": (
        lambda C: C.lincomb([_x(4, device="meta")], _x(1), _x(4)),
        r"inputs\[0\] is on meta but out is on cpu",
    ),
    "numel mismatch": (lambda C: C.lincomb([_x(5)], _x(1), _x(4)), r"inputs\[0\] has shape \[5\] but out has shape \[4\]"),
    "not dense": (lambda C: C.lincomb([_x(4, 8)[:, ::2]], _x(1), _x(4, 8)[:, ::2]), r"out must be dense"),
    "layouts differ": (
        lambda C: C.lincomb([_x(2, 3, 4, 5)], _x(1), _x(2, 3, 4, 5).to(memory_format=torch.channels_last)),
        r"all tensors must share one dense layout",
    ),
    "partial overlap": (
        lambda C: (lambda base: C.lincomb([base[:8]], _x(1), base[1:9]))(_x(10)),
        r"single memory location",
    ),
    "scalar size": (
        lambda C: C.skip_concat(_x(2, 3), _x(2, 1), _x(3), None, _x(2, 4)),
        r"rho must have 1 element or one per batch element \(2\) along dim 0, got shape \[3\]",
    ),
    "scalar dtype": (
        lambda C: C.blend(_x(2, 3), _x(2, 3), _x(1, dtype=torch.float16), _x(2, 3)),
        r"w must be float32, got Half",
    ),
    "concat out shape": (
        lambda C: C.skip_concat(_x(2, 3), _x(2, 1), _x(1), None, _x(2, 5)),
        r"out has shape \[2, 5\]",
    ),
    "mixed concat layouts": (
        lambda C: C.skip_concat(
            _x(2, 3, 4, 5), _x(2, 1, 4, 5), _x(1), None, _x(2, 4, 4, 5).to(memory_format=torch.channels_last)
        ),
        r"must all be contiguous or all channels_last",
    ),
    "blend shape": (lambda C: C.blend(_x(2, 3), _x(2, 4), _x(1), _x(2, 3)), r"cached \(shape \[2, 4\]"),
    "blend_concat cached": (
        lambda C: C.blend_concat(_x(2, 3), _x(2, 2), _x(1), _x(2, 1), _x(1), None, _x(2, 4)),
        r"cached \(shape \[2, 2\].*must match fresh",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_messages(C, case):
    call, message = ERRORS[case]
    with pytest.raises(RuntimeError, match=message):
        call(C)


# ---- _ext.load(): never raises, says why, warns once ----


def test_load_without_prebuilt_or_jit_says_why(monkeypatch):
    monkeypatch.setattr(_ext, "_prebuilt", lambda: (None, "fused_diffusion._C was not built at install time"))
    monkeypatch.setenv("FUSED_DIFFUSION_NO_JIT", "1")
    module, reason = _ext._load()
    assert module is None and "not built" in reason and "FUSED_DIFFUSION_NO_JIT=1" in reason
    monkeypatch.delenv("FUSED_DIFFUSION_NO_JIT")
    monkeypatch.setattr(_ext, "_CSRC", _ext._CSRC / "missing")
    module, reason = _ext._load()
    assert module is None and "no csrc/" in reason


def test_load_failure_warns_once_and_is_cached(monkeypatch):
    monkeypatch.setattr(_ext, "_result", None)
    monkeypatch.setattr(_ext, "_load", lambda: (None, "simulated: no compiler"))
    with pytest.warns(RuntimeWarning, match="simulated: no compiler") as record:
        assert _ext.load() == (None, "simulated: no compiler")
        assert _ext.load() == (None, "simulated: no compiler")
    assert len(record) == 1


def test_build_config_lists_every_source_once():
    """setup.py and the JIT build share fused_diffusion/_build.py: every listed source exists, every csrc source
    is listed."""
    from pathlib import Path

    from fused_diffusion import _build

    root = Path(__file__).resolve().parent.parent
    listed = {Path(s) for s in _build.sources(root, cuda=True)}
    assert all(p.is_file() for p in listed)
    on_disk = {p for p in (root / "csrc").rglob("*") if p.suffix in (".cpp", ".cu")}
    assert listed == on_disk and len(listed) == len(_build.sources(root, cuda=True))
    assert _build.sources(root) == [str(root / s) for s in _build.CPP_SOURCES]
