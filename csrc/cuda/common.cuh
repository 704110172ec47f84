// Helpers shared by the CUDA kernels: 16-byte packed loads/stores and the grid-stride launch size.
#pragma once

#include <ATen/cuda/CUDAContextLight.h>  // device properties, with fewer transitive includes than CUDAContext.h
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace fused_diffusion {

// VEC elements moved as one 16-byte (or narrower) memory transaction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Elements per 16-byte transaction: 4 for float32, 8 for float16 / bfloat16.
template <typename T>
constexpr int kVecWidth = 16 / sizeof(T);

template <int VEC, typename T>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <int VEC, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& x) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = x;
}

inline bool is_aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

constexpr int kThreads = 256;

// Enough blocks to fill the GPU a few times over; the kernels grid-stride over the rest.
inline unsigned int grid_size(int64_t work_items) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min((work_items + kThreads - 1) / kThreads, sms * 8)));
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

}  // namespace fused_diffusion
