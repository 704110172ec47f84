"""The Triton launchers as torch custom ops (torch.ops.fused_diffusion_triton.*, torch.library.triton_op): torch's op
checks, values and gradients against the reference, the graph torch.compile's AOT stage traces from each op's body
(the op's Triton kernel, which inductor compiles with the graph), which op dispatch gives a traced call, and on a GPU
torch.compile(fullgraph=True) through the Triton ops.

Without a GPU the kernels run under TRITON_INTERPRET (conftest), which torch.compile cannot trace through a triton_op:
wrap_triton hands an interpreted kernel back unchanged, and AOTAutograd runs each op's body on fake tensors, whose
data the interpreter then tries to read ("Attempted to access the data pointer on an invalid python storage"). So
opcheck's AOT check and torch.compile through the Triton ops run on a GPU only (the `gpu` tests, which
`bash bench/gpu_check.sh quick` runs); here the op bodies are traced with the kernels Triton defines without the
interpreter, as a GPU's trace sees them up to the launch.
"""
from __future__ import annotations

import pytest
import torch
from test_ops_library import CHEAP, DEVICE, data, scalar, samples, solver_stage
from torch.library import opcheck

from fused_diffusion import ops
from fused_diffusion.ops import availability, dispatch, library

DTYPES = [torch.float32, torch.float16]
OPS = ("lincomb", "blend", "skip_concat", "blend_concat")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    module, mode = availability.triton_kernels()
    if module is None:
        pytest.skip(mode)
    return module


def triton_op(name: str):
    return getattr(torch.ops.fused_diffusion_triton, name).default


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(dtype):
    """Schema, fake kernel and autograd registration, on every sample."""
    for name, args in samples(dtype):
        opcheck(triton_op(name), args, test_utils=CHEAP)


@pytest.mark.gpu
def test_opcheck_aot_dispatch():
    """AOT dispatch (what torch.compile runs: each op decomposed into its kernel launch, with dynamic shapes and
    gradients) on each op's first float32 sample; the interpreter cannot be traced (see above)."""
    first = {}
    for name, args in samples(torch.float32):
        first.setdefault(name, args)
    for name, args in first.items():
        opcheck(triton_op(name), args, test_utils="test_aot_dispatch_dynamic")


def test_values_and_gradients_equal_the_torch_reference():
    for name, args in samples(torch.float32):
        expected = getattr(ops.reference, name)(*args)
        result = triton_op(name)(*args)
        torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)
        assert result.stride() == library.allocate(name, *args).stride()  # the layout the fake kernel promises
        leaves = [t for a in args for t in (a if isinstance(a, list) else [a]) if t is not None and t.requires_grad]
        if leaves:
            weight = torch.randn_like(expected)
            ours = torch.autograd.grad((result * weight).sum(), leaves)
            for a, b in zip(ours, torch.autograd.grad((expected * weight).sum(), leaves)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_each_op_body_traces_into_its_kernel(monkeypatch):
    """What AOTAutograd makes of each op under torch.compile: its body with the kernel launch as a Triton-kernel node
    (the constexprs the eager launcher passes), no opaque custom-op call. Here the interpreted kernels are swapped for
    the JIT functions Triton defines without the interpreter; nothing is launched (tracing uses fake tensors)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    from torch._functorch.aot_autograd import aot_export_module
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from fused_diffusion.ops.kernels import blend, blend_concat, lincomb, skip_concat

    for module in (lincomb, blend, skip_concat, blend_concat):
        for attr, value in list(vars(module).items()):
            if isinstance(value, InterpretedFunction):  # the kernels and the jit helpers they call
                monkeypatch.setattr(module, attr, JITFunction(value.fn))

    class Stage(torch.nn.Module):
        def forward(self, x, y, skip, coeffs, w, rho):
            fd = torch.ops.fused_diffusion_triton
            return (fd.lincomb([x, y], coeffs), fd.blend(x, y, w), fd.skip_concat(x, skip, rho, None),
                    fd.blend_concat(x, y, w, skip, rho, rho))

    args = (data(2, 3, 4, 5), data(2, 3, 4, 5), data(2, 1, 4, 5), scalar(2, 2), scalar(2), scalar(1))
    graph, _ = aot_export_module(Stage(), args, trace_joint=False)
    targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
    assert not [t for t in targets if "fused_diffusion" in t], targets
    launches = [(kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__, node.kwargs["kwargs"])
                for node in graph.graph.nodes if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    assert [name for name, _ in launches] == ["_lincomb_kernel", "_blend_kernel", "_concat_kernel", "_concat_kernel"]
    (_, lincomb), (_, blend), (_, skip_concat), (_, blend_concat) = launches
    assert (lincomb["K"], lincomb["PER_ROW"], blend["PER_BATCH"]) == (2, True, True)
    assert (skip_concat["BLEND"], skip_concat["HAS_B"], blend_concat["BLEND"], blend_concat["HAS_B"]) == (
        False, False, True, True)


@pytest.mark.parametrize("choice, mode, device, extension_devices, expected", [
    ("triton", "compiled", "cuda", {"cpu", "cuda"}, library.TRITON),
    ("triton", "interpreted", "cpu", {"cpu"}, library.EXTENSION),  # the interpreter cannot be traced
    ("triton", "interpreted", "cpu", set(), None),
    ("cuda", "compiled", "cuda", {"cpu", "cuda"}, library.EXTENSION),
    ("cpp", "compiled", "cpu", {"cpu"}, library.EXTENSION),
    ("torch", "compiled", "cuda", {"cpu", "cuda"}, None),
])
def test_traced_calls_take_the_op_of_the_backend_eager_calls_get(monkeypatch, choice, mode, device, extension_devices,
                                                                 expected):
    monkeypatch.setattr(dispatch, "choose", lambda d: choice)
    monkeypatch.setattr(dispatch, "triton_kernels", lambda: (availability.triton_kernels()[0], mode))
    monkeypatch.setattr(dispatch, "extension", lambda: (object(), "loaded"))
    monkeypatch.setattr(library, "devices", frozenset(extension_devices))
    assert dispatch.traced_namespace(device) == expected


def record_graph(seen: list[str]):
    """A torch.compile backend that records the call targets of the graph Dynamo hands it and runs that graph."""
    def backend(gm: torch.fx.GraphModule, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    return backend


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter runs CPU tensors only")
def test_compiled_calls_under_the_interpreter_take_no_triton_op():
    """With Triton the forced backend but interpreted, a traced call takes the extension's op (or the reference):
    still one graph, equal to eager."""
    seen: list[str] = []
    args = (data(2, 4, 6, 6), data(2, 4, 6, 6), data(2, 4, 6, 6), data(2, 3, 6, 6), torch.tensor([1.0, -0.5]),
            scalar(2), scalar(1))
    with ops.use_backend("triton"):
        torch._dynamo.reset()
        compiled = torch.compile(solver_stage, backend=record_graph(seen), fullgraph=True)
        for a, b in zip(compiled(*args), solver_stage(*args)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not [t for t in seen if library.TRITON in t]
    assert bool([t for t in seen if t.startswith(f"{library.EXTENSION}.")]) == ("cpu" in library.devices)
    torch._dynamo.reset()  # the choice is a constant of the trace: the next compile chooses afresh


@pytest.mark.gpu
def test_torch_compile_traces_the_triton_ops_into_inductors_code():
    """On CUDA with the Triton backend: torch.compile(fullgraph=True) holds each op as its Triton custom op (Dynamo's
    graph), inductor's generated code launches the ops' own kernels, and the results equal eager Triton calls; each op
    names its kernel to AOTAutograd's cache key, so editing a kernel invalidates cached graphs."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.utils import run_and_get_code
    from torch._library.triton import get_triton_kernels_for_op

    kernels = {"lincomb": "_lincomb_kernel", "blend": "_blend_kernel", "skip_concat": "_concat_kernel",
               "blend_concat": "_concat_kernel"}
    for name, kernel in kernels.items():
        assert [k.fn.__name__ for k in get_triton_kernels_for_op(f"{library.TRITON}::{name}")] == [kernel]
    seen: list[str] = []

    def recording_inductor(gm: torch.fx.GraphModule, example_inputs):
        record_graph(seen)(gm, example_inputs)
        return compile_fx(gm, example_inputs)

    args = (data(2, 4, 6, 6), data(2, 4, 6, 6), data(2, 4, 6, 6), data(2, 3, 6, 6),
            torch.tensor([1.0, -0.5], device=DEVICE), scalar(2), scalar(1))
    with ops.use_backend("triton"):
        compiled = torch.compile(solver_stage, backend=recording_inductor, fullgraph=True)
        results, code = run_and_get_code(compiled, *args)  # resets Dynamo first: the choice is made in this block
        for a, b in zip(results, solver_stage(*args)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert {f"{library.TRITON}.{name}.default" for name in OPS} <= set(seen)
    assert all(kernel in "".join(code) for kernel in kernels.values()), "inductor's code launches no fused kernel"
    torch._dynamo.reset()
