// skip_concat, blend and blend_concat: argument checks, the RowScalePlan each one reduces to, and the
// CPU kernel that runs a plan.
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include "cpu_convert.h"
#include "ops.h"

namespace fused_diffusion {
namespace {

// A per-sample scalar: 1 element, or one per sample along dim 0 ([N] or e.g. [N, 1, 1, 1]), the rule of the
// Python checks (ops/_common.py as_scalar), which a call this refuses falls back to.
Scalar per_sample(const char* op, const char* name, const at::Tensor& t, const at::Tensor& out,
                  int64_t batch) {
  check_param(op, name, t, out);
  TORCH_CHECK(t.numel() == 1 || (t.numel() == batch && t.size(0) == batch), op, ": ", name,
              " must have 1 element or one per batch element (", batch, ") along dim 0, got shape ", t.sizes());
  return {t.const_data_ptr<float>(), t.numel() == 1 ? 0 : t.stride(0)};
}

bool is_channels_last(const at::Tensor& t) {
  return (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
         (t.dim() == 5 && t.is_contiguous(at::MemoryFormat::ChannelsLast3d));
}

// The rows of cat([first, skip], dim=1): [N, C * S] when all three are contiguous, [N * S, C] when all
// three are channels_last. Scalars are filled in by the caller.
RowScalePlan concat_plan(const char* op, const char* first_name, const at::Tensor& first,
                         const at::Tensor& skip, const at::Tensor& out) {
  check_data(op, first_name, first, out);
  check_data(op, "skip", skip, out);
  TORCH_CHECK(out.dim() >= 2 && first.dim() == out.dim() && skip.dim() == out.dim(), op,
              ": ", first_name, ", skip and out must have the same number (>= 2) of dims, got ",
              first.sizes(), ", ", skip.sizes(), ", ", out.sizes());
  for (int64_t d = 0; d < out.dim(); ++d) {
    const int64_t want = d == 1 ? first.size(1) + skip.size(1) : first.size(d);
    TORCH_CHECK(skip.size(d) == first.size(d) || d == 1, op, ": ", first_name, " ", first.sizes(),
                " and skip ", skip.sizes(), " differ outside dim 1");
    TORCH_CHECK(out.size(d) == want, op, ": out has shape ", out.sizes(), " but cat([", first_name,
                ", skip], dim=1) has shape ", first.sizes(), " + ", skip.sizes(), " along dim 1");
  }
  at::assert_no_overlap(out, first);
  at::assert_no_overlap(out, skip);

  const int64_t n = out.size(0), c1 = first.size(1), c2 = skip.size(1);
  const int64_t spatial = c1 + c2 == 0 || n == 0 ? 0 : out.numel() / (n * (c1 + c2));
  RowScalePlan plan{out, first, at::Tensor(), skip, {}, {}, {}, 0, 0, 0, 0};
  if (first.is_contiguous() && skip.is_contiguous() && out.is_contiguous()) {
    plan.rows = n;
    plan.len1 = c1 * spatial;
    plan.len2 = c2 * spatial;
    plan.rows_per_batch = 1;
  } else if (is_channels_last(first) && is_channels_last(skip) && is_channels_last(out)) {
    plan.rows = n * spatial;
    plan.len1 = c1;
    plan.len2 = c2;
    plan.rows_per_batch = std::max<int64_t>(spatial, 1);
  } else {
    TORCH_CHECK(false, op, ": ", first_name, ", skip and out must all be contiguous or all channels_last, got strides ",
                first.strides(), ", ", skip.strides(), ", ", out.strides());
  }
  return plan;
}

// Elementwise partner of `first` (blend's cached): same shape and memory layout.
void check_like(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                const at::Tensor& like, const at::Tensor& out) {
  check_data(op, name, t, out);
  TORCH_CHECK(t.sizes() == like.sizes() && t.strides() == like.strides(), op, ": ", name, " (shape ",
              t.sizes(), ", strides ", t.strides(), ") must match ", like_name, " (shape ", like.sizes(),
              ", strides ", like.strides(), ")");
}

// out[i] = (blend ? w * x[i] + (1 - w) * cached[i] : x[i]) * s, in float32.
template <typename T, bool Blend>
void scale_run(T* out, const T* x, const T* cached, float w, float s, int64_t len) {
  const float w1 = 1.0f - w;
  // One read and one write per index: out aliasing x or cached (blend) is safe.
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    float v = cpu::to_float(x[i]);
    if constexpr (Blend) v = w * v + w1 * cpu::to_float(cached[i]);
    out[i] = cpu::from_float<T>(v * s);
  }
}

template <typename T, bool Blend>
void row_scale_cpu(const RowScalePlan& p) {
  T* out = p.out.mutable_data_ptr<T>();
  const T* first = p.first.const_data_ptr<T>();
  const T* cached = Blend ? p.cached.const_data_ptr<T>() : nullptr;
  const T* skip = p.len2 ? p.skip.const_data_ptr<T>() : nullptr;
  const int64_t row_len = p.len1 + p.len2;
  at::parallel_for(0, p.rows * row_len, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    for_each_row_run(begin, end, row_len, [&](int64_t row, int64_t col, int64_t len) {
      const int64_t n = row / p.rows_per_batch, stop = col + len;
      if (col < p.len1) {  // the part of the run inside the first block
        const int64_t off = row * p.len1 + col;
        scale_run<T, Blend>(out + row * row_len + col, first + off, Blend ? cached + off : nullptr,
                            p.w.at(n), p.b.at(n), std::min(stop, p.len1) - col);
      }
      if (stop > p.len1) {  // the part inside the skip block
        const int64_t from = std::max(col, p.len1);
        scale_run<T, false>(out + row * row_len + from, skip + row * p.len2 + from - p.len1, nullptr,
                            1.0f, p.rho.at(n), stop - from);
      }
    });
  });
}

void run(const char* op, const RowScalePlan& plan) {
  if (plan.rows == 0 || plan.len1 + plan.len2 == 0) return;
  if (plan.out.is_cuda()) {
#ifdef WITH_CUDA
    row_scale_cuda(plan);
    return;
#else
    TORCH_CHECK(false, op, ": fused_diffusion._C was built without CUDA");
#endif
  }
  TORCH_CHECK(plan.out.is_cpu(), op, ": unsupported device ", plan.out.device());
  FD_DISPATCH_DATA_TYPES(plan.out.scalar_type(), "row_scale_cpu", [&] {
    if (plan.cached.defined())
      row_scale_cpu<scalar_t, true>(plan);
    else
      row_scale_cpu<scalar_t, false>(plan);
  });
}

}  // namespace

void skip_concat(const at::Tensor& h, const at::Tensor& skip, const at::Tensor& rho,
                 const std::optional<at::Tensor>& b, at::Tensor& out) {
  constexpr const char* op = "skip_concat";
  RowScalePlan plan = concat_plan(op, "h", h, skip, out);
  plan.rho = per_sample(op, "rho", rho, out, out.size(0));
  if (b) plan.b = per_sample(op, "b", *b, out, out.size(0));
  run(op, plan);
}

void blend(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w, at::Tensor& out) {
  constexpr const char* op = "blend";
  check_like(op, "fresh", fresh, "out", out, out);
  check_like(op, "cached", cached, "out", out, out);
  TORCH_CHECK(out.is_non_overlapping_and_dense(), op,
              ": tensors must be dense (contiguous or channels_last), got strides ", out.strides());
  at::assert_no_partial_overlap(out, fresh);
  at::assert_no_partial_overlap(out, cached);

  const int64_t numel = out.numel(), batch = out.dim() ? out.size(0) : 1;
  const Scalar ws = per_sample(op, "w", w, out, batch);
  // Pure elementwise: one row per sample when w is per-sample (batch dim must be outermost), else one row.
  const int64_t rows = ws.stride == 0 ? 1 : batch;
  TORCH_CHECK(rows == 1 || numel == 0 || out.stride(0) == numel / batch, op,
              ": per-sample w needs the batch dim outermost in memory, got strides ", out.strides());
  run(op, RowScalePlan{out, fresh, cached, at::Tensor(), ws, {}, {}, rows, rows ? numel / rows : 0, 0, 1});
}

void blend_concat(const at::Tensor& fresh, const at::Tensor& cached, const at::Tensor& w,
                  const at::Tensor& skip, const at::Tensor& rho, const std::optional<at::Tensor>& b,
                  at::Tensor& out) {
  constexpr const char* op = "blend_concat";
  RowScalePlan plan = concat_plan(op, "fresh", fresh, skip, out);
  check_like(op, "cached", cached, "fresh", fresh, out);
  at::assert_no_overlap(out, cached);
  plan.cached = cached;
  plan.w = per_sample(op, "w", w, out, out.size(0));
  plan.rho = per_sample(op, "rho", rho, out, out.size(0));
  if (b) plan.b = per_sample(op, "b", *b, out, out.size(0));
  run(op, plan);
}

}  // namespace fused_diffusion
