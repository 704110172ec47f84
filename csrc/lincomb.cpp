// lincomb: out = sum_k coeffs[..., k] * inputs[k] — argument checks, device dispatch, CPU kernel.
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include <array>

#include "cpu_convert.h"
#include "ops.h"

namespace fused_diffusion {
namespace {

template <typename T, int K>
void lincomb_cpu(const std::vector<at::Tensor>& inputs, const Coeffs& c, at::Tensor& out) {
  std::array<const T*, K> in;
  for (int k = 0; k < K; ++k) in[k] = inputs[k].const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  at::parallel_for(0, out.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    for_each_row_run(begin, end, c.row_len, [&](int64_t row, int64_t col, int64_t len) {
      float ck[K];
      std::array<const T*, K> x;
      const int64_t start = row * c.row_len + col;
      for (int k = 0; k < K; ++k) {
        ck[k] = c.at(row, k);
        x[k] = in[k] + start;
      }
      T* o = dst + start;
      // Each index is read then written by one iteration, so out aliasing an input is safe here.
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        float acc = ck[0] * cpu::to_float(x[0][i]);
        for (int k = 1; k < K; ++k) acc += ck[k] * cpu::to_float(x[k][i]);
        o[i] = cpu::from_float<T>(acc);
      }
    });
  });
}

}  // namespace

void lincomb(const std::vector<at::Tensor>& inputs, const at::Tensor& coeffs, at::Tensor& out) {
  constexpr const char* op = "lincomb";
  const int num = static_cast<int>(inputs.size());
  TORCH_CHECK(num >= 1 && num <= kMaxInputs, op, ": got ", num, " inputs, supported are 1 to ",
              kMaxInputs);
  TORCH_CHECK(out.is_non_overlapping_and_dense(), op,
              ": out must be dense (contiguous or channels_last), got strides ", out.strides());
  for (int k = 0; k < num; ++k) {
    const std::string name = "inputs[" + std::to_string(k) + "]";
    const at::Tensor& t = inputs[k];
    check_data(op, name.c_str(), t, out);
    TORCH_CHECK(t.sizes() == out.sizes(), op, ": ", name, " has shape ", t.sizes(),
                " but out has shape ", out.sizes());
    TORCH_CHECK(t.strides() == out.strides(), op, ": ", name, " has strides ", t.strides(),
                " but out has strides ", out.strides(), " (all tensors must share one dense layout)");
    at::assert_no_partial_overlap(out, t);
  }
  check_param(op, "coeffs", coeffs, out);
  TORCH_CHECK(coeffs.dim() == 1 || coeffs.dim() == 2, op, ": coeffs must be [K] or [B, K], got shape ",
              coeffs.sizes());
  TORCH_CHECK(coeffs.size(-1) == num, op, ": coeffs has ", coeffs.size(-1), " columns but there are ",
              num, " inputs");

  const int64_t numel = out.numel();
  Coeffs c{coeffs.const_data_ptr<float>(), 0, coeffs.stride(-1), std::max<int64_t>(numel, 1)};
  if (coeffs.dim() == 2 && coeffs.size(0) != 1) {
    const int64_t batch = coeffs.size(0);
    TORCH_CHECK(out.dim() >= 1 && out.size(0) == batch, op, ": coeffs has ", batch,
                " rows but the batch size is ", out.dim() >= 1 ? out.size(0) : 0);
    // Row b of coeffs covers the b-th slab of numel / B elements: the batch dim must be outermost.
    TORCH_CHECK(numel == 0 || out.stride(0) == numel / batch, op,
                ": per-sample coeffs need the batch dim outermost in memory, got strides ",
                out.strides());
    c.row_stride = coeffs.stride(0);
    c.row_len = std::max<int64_t>(numel / batch, 1);
  }
  if (numel == 0) return;

  if (out.is_cuda()) {
#ifdef WITH_CUDA
    lincomb_cuda(inputs, c, out);
    return;
#else
    TORCH_CHECK(false, op, ": fused_diffusion._C was built without CUDA");
#endif
  }
  TORCH_CHECK(out.is_cpu(), op, ": unsupported device ", out.device());
  FD_DISPATCH_DATA_TYPES(out.scalar_type(), "lincomb_cpu", [&] {
    dispatch_num_inputs(num, [&](auto k) { lincomb_cpu<scalar_t, decltype(k)::value>(inputs, c, out); });
  });
}

}  // namespace fused_diffusion
