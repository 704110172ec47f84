"""Shared fixtures: backend/device/dtype parametrisation and comparison helpers for the op tests.

Without CUDA the Triton kernels run under the interpreter on CPU tensors; TRITON_INTERPRET must be
set before anything imports triton, so it is set here, before the package is imported.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fused_diffusion import ops  # noqa: E402  (after TRITON_INTERPRET)

HAS_CUDA = torch.cuda.is_available()
TOL = {torch.float64: 1e-5, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

# The interpreter mis-handles bf16 loads, so bf16 runs on GPU only.
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu, id="bfloat16")]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def backend_device(name: str) -> str:
    """The device whose tensors a backend runs in these tests."""
    if name == "cpp":
        return "cpu"
    return "cuda" if HAS_CUDA or name == "cuda" else "cpu"


@pytest.fixture(params=["torch", "cpp", "cuda", "triton"])
def backend(request: pytest.FixtureRequest):
    """(name, device) with that backend forced for the test; skipped when it cannot run here."""
    name = request.param
    info = ops.backends()
    if name not in info["available"]:
        pytest.skip(f"{name} unavailable: {info['unavailable'][name]}")
    device = backend_device(name)
    if name == "cuda" and not HAS_CUDA:
        pytest.skip("cuda backend needs a CUDA device")
    with ops.use_backend(name):
        yield name, device


@pytest.fixture(scope="module")
def gmm():
    """The solver tests' analytic Gaussian mixture: 3 components in 4 dimensions."""
    from fused_diffusion import GaussianMixture

    return GaussianMixture.random(3, 4, seed=0, spread=1.0)


@pytest.fixture(scope="module")
def noise():
    """Initial noise for `gmm` at sigma_max = 20, float64."""
    return torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 20.0


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


# (h shape, skip shape): odd sizes, 4-D U-Net features and other ranks (contiguous path).
CONCAT_SHAPES = [
    ((1, 1, 1, 1), (1, 2, 1, 1)),
    ((3, 5, 7, 11), (3, 4, 7, 11)),
    ((2, 3, 1023), (2, 1, 1023)),
    ((7, 4097), (7, 1)),
]


def concat_scalars(kind: str, batch: int, device: str):
    """(rho, b) in the forms the op accepts: device scalars, per-sample vectors, Python numbers, no b."""
    gen = torch.Generator().manual_seed(batch)
    vec = lambda n: (torch.rand(n, generator=gen) + 0.5).to(device)  # noqa: E731
    return {
        "scalar": (vec(1).reshape(()), None),
        "per_sample": (vec(batch), vec(batch)),
        "mixed": (vec(batch), vec(1)),
        "python": (0.7, 1.3),
    }[kind]


def concat_shape(h_shape, skip_shape):
    return (h_shape[0], h_shape[1] + skip_shape[1], *h_shape[2:])


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (NaN when out has unwritten poisoned elements)."""
    diff = (out.double() - ref.double()).norm()
    return (diff / ref.double().norm().clamp_min(1e-30)).item()


def assert_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not out.isnan().any(), "output has unwritten (NaN-poisoned) elements"
    err = rel_err(out, ref)
    assert err <= TOL[ref.dtype], f"relative error {err:.3g} > {TOL[ref.dtype]:g}"


def poisoned(shape, dtype: torch.dtype, device: str, channels_last: bool = False) -> torch.Tensor:
    """An output buffer filled with NaN, so elements a kernel fails to write are caught."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.full(shape, float("nan"), dtype=dtype, device=device).contiguous(memory_format=fmt)


def randn(shape, dtype: torch.dtype, device: str, channels_last: bool = False, seed: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    t = torch.randn(shape, generator=gen).to(dtype=dtype, device=device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t
