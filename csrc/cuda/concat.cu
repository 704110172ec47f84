// skip_concat / blend / blend_concat on CUDA: one grid-stride kernel running a RowScalePlan
// (see ops.h), per (dtype, blend or not, vector width); scalars read on the device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "../ops.h"
#include "common.cuh"

namespace fused_diffusion {
namespace {

template <typename T>
struct RowScaleArgs {
  T* out;
  const T* first;
  const T* cached;
  const T* skip;
  Scalar w, b, rho;
  int64_t rows, len1, len2, rows_per_batch;
};

// VEC > 1 only when VEC divides len1 and len2 and every pointer is 16-byte aligned, so a vector
// always lies inside one block (first or skip) of one row.
template <typename T, bool Blend, int VEC>
__global__ void row_scale_kernel(RowScaleArgs<T> a) {
  const int64_t row_len = a.len1 + a.len2, total = a.rows * row_len, stride = grid_threads() * VEC;
  for (int64_t i = global_thread() * VEC; i < total; i += stride) {
    const int64_t row = i / row_len, col = i - row * row_len, n = row / a.rows_per_batch;
    float x[VEC];
    float s;
    if (col < a.len1) {
      const int64_t off = row * a.len1 + col;
      const Pack<T, VEC> f = load_pack<VEC>(a.first + off);
#pragma unroll
      for (int j = 0; j < VEC; ++j) x[j] = static_cast<float>(f.v[j]);
      if constexpr (Blend) {
        const Pack<T, VEC> c = load_pack<VEC>(a.cached + off);
        const float w = a.w.at(n), w1 = 1.0f - w;
#pragma unroll
        for (int j = 0; j < VEC; ++j) x[j] = w * x[j] + w1 * static_cast<float>(c.v[j]);
      }
      s = a.b.at(n);
    } else {
      const Pack<T, VEC> k = load_pack<VEC>(a.skip + row * a.len2 + (col - a.len1));
#pragma unroll
      for (int j = 0; j < VEC; ++j) x[j] = static_cast<float>(k.v[j]);
      s = a.rho.at(n);
    }
    Pack<T, VEC> res;
#pragma unroll
    for (int j = 0; j < VEC; ++j) res.v[j] = static_cast<T>(x[j] * s);
    store_pack<VEC>(a.out + i, res);
  }
}

template <typename T, bool Blend>
void launch(const RowScalePlan& p) {
  const RowScaleArgs<T> a{p.out.mutable_data_ptr<T>(),
                          p.first.const_data_ptr<T>(),
                          Blend ? p.cached.const_data_ptr<T>() : nullptr,
                          p.len2 ? p.skip.const_data_ptr<T>() : nullptr,
                          p.w, p.b, p.rho, p.rows, p.len1, p.len2, p.rows_per_batch};
  constexpr int VEC = kVecWidth<T>;
  const bool vectorise = p.len1 % VEC == 0 && p.len2 % VEC == 0 && is_aligned16(a.out) &&
                         is_aligned16(a.first) && (!Blend || is_aligned16(a.cached)) &&
                         (!a.skip || is_aligned16(a.skip));
  const int64_t total = p.rows * (p.len1 + p.len2);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (vectorise)
    row_scale_kernel<T, Blend, VEC><<<grid_size(total / VEC), kThreads, 0, stream>>>(a);
  else
    row_scale_kernel<T, Blend, 1><<<grid_size(total), kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void row_scale_cuda(const RowScalePlan& plan) {
  const c10::cuda::CUDAGuard guard(plan.out.device());
  FD_DISPATCH_DATA_TYPES(plan.out.scalar_type(), "row_scale_cuda", [&] {
    if (plan.cached.defined())
      launch<scalar_t, true>(plan);
    else
      launch<scalar_t, false>(plan);
  });
}

}  // namespace fused_diffusion
