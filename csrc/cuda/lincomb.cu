// lincomb on CUDA: one grid-stride kernel per (dtype, K, vector width), coefficients read on the device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "../ops.h"
#include "common.cuh"

namespace fused_diffusion {
namespace {

template <typename T, int K>
struct InputPtrs {
  const T* p[K];
};

// VEC > 1 only when every pointer is 16-byte aligned and a vector never straddles two coefficient
// rows (row_len % VEC == 0); numel % VEC leftover elements exist only with one shared row.
template <typename T, int K, int VEC>
__global__ void lincomb_kernel(InputPtrs<T, K> in, T* out, Coeffs c, int64_t numel) {
  const int64_t stride = grid_threads();
  const int64_t num_vecs = numel / VEC;
  for (int64_t v = global_thread(); v < num_vecs; v += stride) {
    const int64_t i = v * VEC, row = i / c.row_len;
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float ck = c.at(row, k);
      const Pack<T, VEC> x = load_pack<VEC>(in.p[k] + i);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float term = ck * static_cast<float>(x.v[j]);
        acc[j] = k == 0 ? term : acc[j] + term;
      }
    }
    Pack<T, VEC> res;
#pragma unroll
    for (int j = 0; j < VEC; ++j) res.v[j] = static_cast<T>(acc[j]);
    store_pack<VEC>(out + i, res);
  }
  for (int64_t i = num_vecs * VEC + global_thread(); i < numel; i += stride) {
    const int64_t row = i / c.row_len;
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) acc += c.at(row, k) * static_cast<float>(in.p[k][i]);
    out[i] = static_cast<T>(acc);
  }
}

template <typename T, int K>
void launch(const std::vector<at::Tensor>& inputs, const Coeffs& c, at::Tensor& out) {
  InputPtrs<T, K> in;
  T* dst = out.mutable_data_ptr<T>();
  bool vectorise = is_aligned16(dst) && c.row_len % kVecWidth<T> == 0;
  for (int k = 0; k < K; ++k) {
    in.p[k] = inputs[k].const_data_ptr<T>();
    vectorise = vectorise && is_aligned16(in.p[k]);
  }
  const int64_t numel = out.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (vectorise) {
    constexpr int VEC = kVecWidth<T>;
    lincomb_kernel<T, K, VEC><<<grid_size(numel / VEC), kThreads, 0, stream>>>(in, dst, c, numel);
  } else {
    lincomb_kernel<T, K, 1><<<grid_size(numel), kThreads, 0, stream>>>(in, dst, c, numel);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void lincomb_cuda(const std::vector<at::Tensor>& inputs, const Coeffs& coeffs, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  FD_DISPATCH_DATA_TYPES(out.scalar_type(), "lincomb_cuda", [&] {
    dispatch_num_inputs(static_cast<int>(inputs.size()),
                        [&](auto k) { launch<scalar_t, decltype(k)::value>(inputs, coeffs, out); });
  });
}

}  // namespace fused_diffusion
