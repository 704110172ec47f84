// The fused ops as torch custom ops in the namespace fused_diffusion: a functional form (allocates its output)
// and an .out form of each, with CPU and CUDA kernels, so torch's dispatcher routes the calls, torch.compile traces
// them (their fake kernels and autograd are registered in fused_diffusion/ops/library.py) and
// torch.library.opcheck checks them. The kernels address flat memory: operands in another layout are made dense
// here, and an `out` they cannot write directly receives a dense result.
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include "ops.h"

namespace fused_diffusion {
namespace {

at::Tensor dense(const at::Tensor& t, at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  return t.is_contiguous(format) ? t : t.contiguous(format);
}

// Coefficients and per-sample scalars as the kernels read them: float32 and contiguous (the common case without a
// dispatcher call: a host cost every op call pays).
at::Tensor param(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t;
  // real values only, as ops/_common.py as_scalar takes them: a complex one would lose its imaginary part
  TORCH_CHECK(at::isFloatingType(t.scalar_type()) || t.scalar_type() == at::kInt || t.scalar_type() == at::kLong,
              "fused_diffusion: scalars and coefficients must be real (floating-point or int32 / int64), got ",
              t.scalar_type());
  return dense(t.to(at::kFloat));
}

std::optional<at::Tensor> param(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(param(*t)) : std::nullopt;
}

// channels_last when every 4-D / 5-D part is stored that way (and not also plain contiguous), else contiguous.
at::MemoryFormat concat_format(std::initializer_list<at::Tensor> parts) {
  for (const auto& dims : {4, 5}) {
    const auto format = dims == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
    bool all = true;
    for (const auto& p : parts) all &= p.dim() == dims && !p.is_contiguous() && p.is_contiguous(format);
    if (all) return format;
  }
  return at::MemoryFormat::Contiguous;
}

// Runs `kernel(destination)` into out, through a dense temporary when out has another layout or shares memory
// with an input in part.
template <typename Kernel>
void into(at::Tensor& out, at::MemoryFormat format, std::initializer_list<at::Tensor> inputs, const Kernel& kernel) {
  bool direct = out.is_contiguous(format);
  for (const auto& t : inputs) direct &= at::get_overlap_status(out, t) != at::MemOverlapStatus::Partial;
  if (direct) {
    kernel(out);
    return;
  }
  at::Tensor dst = at::empty_like(out, format);
  kernel(dst);
  out.copy_(dst);
}

std::vector<at::Tensor> dense_all(at::TensorList inputs) {
  std::vector<at::Tensor> result;
  result.reserve(inputs.size());
  for (const auto& t : inputs) result.push_back(dense(t));
  return result;
}

}  // namespace

// The entries: the functional forms are also fused_diffusion._C's allocating calls (bindings.cpp, ops.h).

at::Tensor lincomb_new(at::TensorList inputs, const at::Tensor& coeffs) {
  TORCH_CHECK(!inputs.empty(), "lincomb: needs 1 to ", kMaxInputs, " inputs, got none");
  TORCH_CHECK(at::isFloatingType(coeffs.scalar_type()), "lincomb: coeffs must be floating-point, got ",
              coeffs.scalar_type());
  std::vector<at::Tensor> ins = dense_all(inputs);
  at::Tensor out = at::empty(ins[0].sizes(), ins[0].options());  // contiguous; one dispatcher call, not empty_like's two
  lincomb(ins, param(coeffs), out);
  return out;
}

void lincomb_out(at::TensorList inputs, const at::Tensor& coeffs, at::Tensor& out) {
  std::vector<at::Tensor> ins = dense_all(inputs);
  bool direct = out.is_contiguous();
  for (const auto& t : ins) direct &= at::get_overlap_status(out, t) != at::MemOverlapStatus::Partial;
  at::Tensor dst = direct ? out : at::empty_like(out, at::MemoryFormat::Contiguous);
  lincomb(ins, param(coeffs), dst);
  if (!direct) out.copy_(dst);
}

at::Tensor skip_concat_new(const at::Tensor& h, const at::Tensor& skip, const at::Tensor& rho,
                           const std::optional<at::Tensor>& b) {
  TORCH_CHECK(h.dim() >= 2 && skip.dim() == h.dim(), "skip_concat: h ", h.sizes(), " and skip ", skip.sizes(),
              " must be [B, C, ...] tensors of the same number of dims");
  const auto format = concat_format({h, skip});
  auto sizes = h.sizes().vec();
  sizes[1] += skip.size(1);
  at::Tensor out = at::empty(sizes, h.options().memory_format(format));
  skip_concat(dense(h, format), dense(skip, format), param(rho), param(b), out);
  return out;
}

void skip_concat_out(const at::Tensor& h, const at::Tensor& skip, const at::Tensor& rho,
                            const std::optional<at::Tensor>& b, at::Tensor& out) {
  const auto format = concat_format({out});
  into(out, format, {h, skip}, [&](at::Tensor& dst) {
    skip_concat(dense(h, format), dense(skip, format), param(rho), param(b), dst);
  });
}

at::Tensor blend_new(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w) {
  at::Tensor out = at::empty(fresh.sizes(), fresh.options());
  blend(dense(fresh), dense(cached), param(w), out);
  return out;
}

void blend_out(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w, at::Tensor& out) {
  into(out, at::MemoryFormat::Contiguous, {fresh, cached},
              [&](at::Tensor& dst) { blend(dense(fresh), dense(cached), param(w), dst); });
}

at::Tensor blend_concat_new(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w,
                            const at::Tensor& skip, const at::Tensor& rho, const std::optional<at::Tensor>& b) {
  TORCH_CHECK(fresh.dim() >= 2 && skip.dim() == fresh.dim(), "blend_concat: fresh ", fresh.sizes(), " and skip ",
              skip.sizes(), " must be [B, C, ...] tensors of the same number of dims");
  const auto format = concat_format({fresh, skip});
  auto sizes = fresh.sizes().vec();
  sizes[1] += skip.size(1);
  at::Tensor out = at::empty(sizes, fresh.options().memory_format(format));
  blend_concat(dense(fresh, format), dense(cached, format), param(w), dense(skip, format), param(rho), param(b),
               out);
  return out;
}

void blend_concat_out(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w,
                             const at::Tensor& skip, const at::Tensor& rho, const std::optional<at::Tensor>& b,
                             at::Tensor& out) {
  const auto format = concat_format({out});
  into(out, format, {fresh, cached, skip}, [&](at::Tensor& dst) {
    blend_concat(dense(fresh, format), dense(cached, format), param(w), dense(skip, format), param(rho), param(b),
                 dst);
  });
}

TORCH_LIBRARY(fused_diffusion, m) {
  m.def("lincomb(Tensor[] inputs, Tensor coeffs) -> Tensor");
  m.def("lincomb.out(Tensor[] inputs, Tensor coeffs, *, Tensor(a!) out) -> ()");
  m.def("skip_concat(Tensor h, Tensor skip, Tensor rho, Tensor? b) -> Tensor");
  m.def("skip_concat.out(Tensor h, Tensor skip, Tensor rho, Tensor? b, *, Tensor(a!) out) -> ()");
  m.def("blend(Tensor fresh, Tensor cached, Tensor w) -> Tensor");
  m.def("blend.out(Tensor fresh, Tensor cached, Tensor w, *, Tensor(a!) out) -> ()");
  m.def("blend_concat(Tensor fresh, Tensor cached, Tensor w, Tensor skip, Tensor rho, Tensor? b) -> Tensor");
  m.def("blend_concat.out(Tensor fresh, Tensor cached, Tensor w, Tensor skip, Tensor rho, Tensor? b, *, "
        "Tensor(a!) out) -> ()");
}

// One implementation per op for both devices: the entry points pick the CPU or CUDA kernels by the tensors' device.
#define FD_REGISTER_KERNELS(m)                          \
  m.impl("lincomb", &lincomb_new);                      \
  m.impl("lincomb.out", &lincomb_out);                  \
  m.impl("skip_concat", &skip_concat_new);              \
  m.impl("skip_concat.out", &skip_concat_out);          \
  m.impl("blend", &blend_new);                          \
  m.impl("blend.out", &blend_out);                      \
  m.impl("blend_concat", &blend_concat_new);            \
  m.impl("blend_concat.out", &blend_concat_out);

TORCH_LIBRARY_IMPL(fused_diffusion, CPU, m) { FD_REGISTER_KERNELS(m) }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(fused_diffusion, CUDA, m) { FD_REGISTER_KERNELS(m) }
#endif

}  // namespace fused_diffusion
