// Fused elementwise ops of fused_diffusion: declarations and the small helpers that the CPU (.cpp)
// and CUDA (.cu) implementations share. The torch definitions they must match live in
// fused_diffusion/ops/reference.py.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <type_traits>
#include <optional>
#include <vector>

#ifdef __CUDACC__
#define FD_HOST_DEVICE __host__ __device__
#else
#define FD_HOST_DEVICE
#endif

namespace fused_diffusion {

// Enough for every solver stage in the library (iPNDM's 4 derivatives + x + noise).
constexpr int kMaxInputs = 6;

// ---- Public entry points (validate, then run on the tensors' device). All write into `out`. ----

// out = sum_k coeffs[..., k] * inputs[k]; coeffs float32 [K] or [B, K] (one row per batch element).
void lincomb(const std::vector<at::Tensor>& inputs, const at::Tensor& coeffs, at::Tensor& out);
// out = cat([h * b, skip * rho], dim=1); b absent means 1.
void skip_concat(const at::Tensor& h, const at::Tensor& skip, const at::Tensor& rho,
                 const std::optional<at::Tensor>& b, at::Tensor& out);
// out = w * fresh + (1 - w) * cached.
void blend(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w, at::Tensor& out);
// skip_concat(blend(fresh, cached, w), skip, rho, b) in one pass.
void blend_concat(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w,
                  const at::Tensor& skip, const at::Tensor& rho, const std::optional<at::Tensor>& b,
                  at::Tensor& out);

// ---- Device-side views of the float32 coefficients and scalars (read in the kernels, never on the host). ----

// Coefficient k of element i: rows of coeffs cover `row_len` consecutive elements each
// (row_stride == 0 when one row is shared by the whole tensor).
struct Coeffs {
  const float* ptr;
  int64_t row_stride, k_stride, row_len;
  FD_HOST_DEVICE float at(int64_t row, int k) const { return ptr[row * row_stride + k * k_stride]; }
};

// A per-sample scalar with 1 or N elements; a null pointer reads as 1 (the optional `b`).
struct Scalar {
  const float* ptr;
  int64_t stride;  // 0 when one value is shared by the batch
  FD_HOST_DEVICE float at(int64_t n) const { return ptr ? ptr[n * stride] : 1.0f; }
};

// ---- The "row copy with scale" behind skip_concat, blend and blend_concat. ----
// out is viewed as `rows` rows of (len1 + len2) elements: NCHW as [N, (C1 + C2) * S] and NHWC as
// [N * S, C1 + C2], so both layouts are plain rows. Row r of out holds row r of `first` (blended
// with row r of `cached` when that is defined) times b, then row r of `skip` times rho. Row r belongs
// to batch element r / rows_per_batch, which picks the per-sample scalars.
struct RowScalePlan {
  at::Tensor out, first, cached, skip;  // cached undefined: no blend; skip undefined: len2 == 0
  Scalar w, b, rho;
  int64_t rows, len1, len2, rows_per_batch;
};

#ifdef WITH_CUDA
void lincomb_cuda(const std::vector<at::Tensor>& inputs, const Coeffs& coeffs, at::Tensor& out);
void row_scale_cuda(const RowScalePlan& plan);
#endif

// Runs f(std::integral_constant<int, K>{}) for 1 <= k <= kMaxInputs: one unrolled kernel per K.
template <typename F>
inline void dispatch_num_inputs(int k, const F& f) {
  switch (k) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    default: TORCH_CHECK(false, "fused_diffusion: unsupported number of inputs ", k);
  }
}

// The data dtypes every op supports (computed in float32, stored in the data dtype).
#define FD_DISPATCH_DATA_TYPES(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                 \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)    \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)     \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

#ifndef __CUDACC__
// The allocating (functional) forms, which are also the custom ops' (library.cpp): operands in another layout are
// made dense, coefficients and scalars float32; out is contiguous (the concat ops: channels_last when every part is).
at::Tensor lincomb_new(at::TensorList inputs, const at::Tensor& coeffs);
at::Tensor skip_concat_new(const at::Tensor& h, const at::Tensor& skip, const at::Tensor& rho,
                           const std::optional<at::Tensor>& b);
at::Tensor blend_new(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w);
at::Tensor blend_concat_new(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w,
                            const at::Tensor& skip, const at::Tensor& rho, const std::optional<at::Tensor>& b);

// ---- Argument checks shared by the entry points; messages name the op and the argument. ----

// A data tensor must live on out's device and share out's dtype, which must be a supported one.
inline void check_data(const char* op, const char* name, const at::Tensor& t, const at::Tensor& out) {
  TORCH_CHECK(t.device() == out.device(), op, ": ", name, " is on ", t.device(), " but out is on ",
              out.device());
  TORCH_CHECK(t.scalar_type() == out.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but out has dtype ", out.scalar_type());
  const auto dt = out.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": dtype must be float32, float16 or bfloat16, got ", dt);
}

// Coefficients and scalars are float32 tensors on out's device (read there, never synced to the host).
inline void check_param(const char* op, const char* name, const at::Tensor& t, const at::Tensor& out) {
  TORCH_CHECK(t.device() == out.device(), op, ": ", name, " is on ", t.device(), " but out is on ",
              out.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
}

// Calls fn(row, col, len) for each maximal run of [begin, end) that stays inside one row of
// `row_len` elements, so the CPU inner loops see constant coefficients and vectorise.
template <typename F>
inline void for_each_row_run(int64_t begin, int64_t end, int64_t row_len, const F& fn) {
  int64_t row = begin / row_len, col = begin % row_len;
  while (begin < end) {
    const int64_t len = std::min(row_len - col, end - begin);
    fn(row, col, len);
    begin += len;
    ++row;
    col = 0;
  }
}
#endif

}  // namespace fused_diffusion
