"""The fused ops as torch custom ops (torch.ops.fused_diffusion.*, defined by the C++/CUDA extension): torch's own
op checks (schema, fake kernel, autograd registration, AOT dispatch) for each op and form, and torch.compile tracing
them with no graph break, equal to eager."""
from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from fused_diffusion import ops
from fused_diffusion.ops import availability, library

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module", autouse=True)
def extension():
    module, why = availability.extension()
    if module is None:
        pytest.skip(f"the C++ extension is unavailable: {why}")
    return module


def data(*shape: int, dtype=torch.float32, channels_last: bool = False, grad: bool = False) -> torch.Tensor:
    t = torch.randn(shape, device=DEVICE).to(dtype)
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def scalar(*shape: int, grad: bool = False) -> torch.Tensor:
    return torch.rand(shape, device=DEVICE).requires_grad_(grad)


# (op, args) samples: odd sizes, per-sample and shared coefficients / scalars, optional b absent and present,
# channels_last data, gradients on every differentiable argument where the dtype is float32
def samples(dtype: torch.dtype):
    grad = dtype == torch.float32
    x, y, z = (data(3, 5, 7, 9, dtype=dtype, grad=grad) for _ in range(3))
    skip = data(3, 2, 7, 9, dtype=dtype, grad=grad)
    last = [data(2, 4, 5, 3, dtype=dtype, channels_last=True, grad=grad) for _ in range(3)]
    return [
        ("lincomb", ([x, y, z], scalar(3, grad=grad))),
        ("lincomb", ([x, y], scalar(3, 2, grad=grad))),
        ("lincomb", ([data(1, dtype=dtype)], scalar(1))),
        ("lincomb", (last[:2], scalar(2))),
        ("blend", (x, y, scalar(1, grad=grad))),
        ("blend", (x, y, scalar(3, grad=grad))),
        ("skip_concat", (x, skip, scalar(1, grad=grad), None)),
        ("skip_concat", (x, skip, scalar(3, grad=grad), scalar(3, grad=grad))),
        ("skip_concat", (last[0], last[1], scalar(2), scalar(1))),
        ("blend_concat", (x, y, scalar(3, grad=grad), skip, scalar(1, grad=grad), scalar(3, grad=grad))),
        ("blend_concat", (last[0], last[1], scalar(1), last[2], scalar(2), None)),
    ]


# AOT dispatch (the slow check, ~1 s a sample) on each op's first sample; the cheap checks on every sample
CHEAP = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_functional_forms(dtype):
    checked = set()
    for name, args in samples(dtype):
        full = dtype == torch.float32 and name not in checked
        opcheck(getattr(torch.ops.fused_diffusion, name).default, args, test_utils=(*CHEAP, "test_aot_dispatch_dynamic") if full else CHEAP)
        checked.add(name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_out_forms(dtype):
    for name, args in samples(dtype):
        args = tuple([t.detach() for t in a] if isinstance(a, list) else a if a is None else a.detach() for a in args)
        expected = getattr(torch.ops.fused_diffusion, name)(*args)
        outs = [torch.empty_like(expected)]
        if expected.dim() >= 2:  # and one in another layout: written through a dense temporary
            outs.append(torch.empty_like(expected).transpose(-1, -2).contiguous().transpose(-1, -2))
        for out in outs:
            opcheck(getattr(torch.ops.fused_diffusion, name).out, args, {"out": out}, test_utils=CHEAP)
            getattr(torch.ops.fused_diffusion, name).out(*args, out=out)
            torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_custom_ops_equal_the_torch_reference():
    for name, args in samples(torch.float32):
        args = tuple([t.detach() for t in a] if isinstance(a, list) else a if a is None else a.detach() for a in args)
        expected = getattr(ops.reference, name)(*args)
        torch.testing.assert_close(getattr(torch.ops.fused_diffusion, name)(*args), expected, rtol=1e-6, atol=1e-6)


def test_gradients_equal_the_torch_reference():
    for name, args in samples(torch.float32):
        leaves = [t for a in args for t in (a if isinstance(a, list) else [a]) if t is not None and t.requires_grad]
        if not leaves:
            continue
        weight = torch.randn_like(getattr(ops.reference, name)(*args))
        ours = torch.autograd.grad((getattr(torch.ops.fused_diffusion, name)(*args) * weight).sum(), leaves)
        expected = torch.autograd.grad((getattr(ops.reference, name)(*args) * weight).sum(), leaves)
        for a, b in zip(ours, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def solver_stage(x, denoised, cached, skip, coeffs, w, rho):
    """What a sampling step and a cached U-Net block do: the public ops, as a model or loop would call them."""
    fresh = ops.lincomb([x, denoised], coeffs)
    blended = ops.blend(fresh, cached, w)
    return ops.skip_concat(blended, skip, rho), ops.blend_concat(fresh, cached, w, skip, rho, 0.5)


def test_torch_compile_traces_the_ops_with_no_graph_break():
    seen = []

    def recording_inductor(gm: torch.fx.GraphModule, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    args = (data(2, 4, 6, 6), data(2, 4, 6, 6), data(2, 4, 6, 6), data(2, 3, 6, 6),
            torch.tensor([1.0, -0.5], device=DEVICE), scalar(2), scalar(1))
    with ops.use_backend("cuda" if DEVICE == "cuda" else "cpp"):  # on CUDA, Triton's ops: test_ops_triton_op.py
        torch._dynamo.reset()  # the backend is chosen as a graph is traced
        compiled = torch.compile(solver_stage, backend=recording_inductor, fullgraph=True)
        for a, b in zip(compiled(*args), solver_stage(*args)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        names = ("lincomb", "blend", "skip_concat", "blend_concat")
        assert {f"fused_diffusion.{name}.default" for name in names} <= set(seen)
        # float64 data are not the kernels': the torch reference is traced instead, which inductor fuses
        double = tuple(t.double() if t.dtype == torch.float32 and t.dim() > 1 else t for t in args)
        for a, b in zip(compiled(*double), solver_stage(*double)):
            torch.testing.assert_close(a, b)
    torch._dynamo.reset()


def test_eager_calls_keep_the_direct_path(monkeypatch):
    """Eager calls go straight to the extension (~1 us), not through an OpOverload (~5 us): only tracing uses those."""
    def traced_only(*args, **kwargs):
        raise AssertionError("an eager call went through torch.ops.fused_diffusion")

    monkeypatch.setattr(library, "call", traced_only)
    x = data(2, 4, 6, 6)
    torch.testing.assert_close(ops.lincomb([x, x], torch.tensor([1.0, 2.0], device=DEVICE)), 3 * x)
    torch.testing.assert_close(ops.blend(x, 2 * x, 0.5), 1.5 * x)
