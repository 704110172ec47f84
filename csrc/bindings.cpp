// Python bindings of fused_diffusion._C. Every op writes into `out` and returns None, and its `<op>_new` form
// allocates and returns the result (what a public call without `out` takes: one call, ~1 us of host time); the
// device of the tensors picks the CPU or CUDA kernels. The GIL is released while a kernel runs or launches.
#include <torch/extension.h>

#include "ops.h"

namespace fd = fused_diffusion;
using release_gil = py::call_guard<py::gil_scoped_release>;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fused_diffusion C++/CUDA kernels: lincomb, skip_concat, blend, blend_concat";
  m.def("lincomb", &fd::lincomb, "out = sum_k coeffs[..., k] * inputs[k] (coeffs float32 [K] or [B, K])",
        py::arg("inputs"), py::arg("coeffs"), py::arg("out"), release_gil());
  m.def("skip_concat", &fd::skip_concat, "out = cat([h * b, skip * rho], dim=1) (b=None means 1)",
        py::arg("h"), py::arg("skip"), py::arg("rho"), py::arg("b"), py::arg("out"), release_gil());
  m.def("blend", &fd::blend, "out = w * fresh + (1 - w) * cached", py::arg("fresh"), py::arg("cached"),
        py::arg("w"), py::arg("out"), release_gil());
  m.def("blend_concat", &fd::blend_concat, "skip_concat(blend(fresh, cached, w), skip, rho, b) in one pass",
        py::arg("fresh"), py::arg("cached"), py::arg("w"), py::arg("skip"), py::arg("rho"), py::arg("b"),
        py::arg("out"), release_gil());
  m.def("lincomb_new", [](const std::vector<at::Tensor>& inputs, const at::Tensor& coeffs) {
    return fd::lincomb_new(inputs, coeffs);
  }, py::arg("inputs"), py::arg("coeffs"), release_gil());
  m.def("skip_concat_new", &fd::skip_concat_new, py::arg("h"), py::arg("skip"), py::arg("rho"), py::arg("b"),
        release_gil());
  m.def("blend_new", &fd::blend_new, py::arg("fresh"), py::arg("cached"), py::arg("w"), release_gil());
  m.def("blend_concat_new", &fd::blend_concat_new, py::arg("fresh"), py::arg("cached"), py::arg("w"),
        py::arg("skip"), py::arg("rho"), py::arg("b"), release_gil());
  m.def("has_cuda", [] {
#ifdef WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernels were compiled in");
}
