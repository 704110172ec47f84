// Float32 <-> float16 / bfloat16 conversions for the CPU inner loops. They give the same bits as
// c10's conversions (round to nearest even, NaN and Inf kept, subnormals exact), but are written with
// masks instead of branches so GCC vectorises the loops that use them; through c10::Half and
// c10::BFloat16 directly, those loops stay scalar (float16 was ~10x slower than float32).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fused_diffusion::cpu {

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// All ones where `cond` holds, else zero: a branch-free select.
inline uint32_t mask(bool cond) { return 0u - static_cast<uint32_t>(cond); }

inline float to_float(float x) { return x; }

inline float to_float(c10::BFloat16 x) { return bits_to_float(static_cast<uint32_t>(x.x) << 16); }

// The exponent-rebias trick of c10::detail::fp16_ieee_to_fp32_value (FP16 library, M. Dukhan).
inline float to_float(c10::Half x) {
  const uint32_t w = static_cast<uint32_t>(x.x) << 16, sign = w & 0x80000000u, two_w = w + w;
  const uint32_t normal = float_to_bits(bits_to_float((two_w >> 4) + (0xE0u << 23)) * bits_to_float(15u << 23));  // * 2^-112
  const uint32_t subnormal = float_to_bits(bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f);
  const uint32_t is_subnormal = mask(two_w < (1u << 27));
  return bits_to_float(sign | (subnormal & is_subnormal) | (normal & ~is_subnormal));
}

template <typename T>
T from_float(float f);

template <>
inline float from_float<float>(float f) {
  return f;
}

template <>
inline c10::BFloat16 from_float<c10::BFloat16>(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t is_nan = mask((u & 0x7FFFFFFFu) > 0x7F800000u);
  return c10::BFloat16(static_cast<uint16_t>((0x7FC0u & is_nan) | (rounded & ~is_nan)), c10::BFloat16::from_bits());
}

// c10::detail::fp16_ieee_from_fp32_value with its two branches turned into max and a mask.
template <>
inline c10::Half from_float<c10::Half>(float f) {
  const float base = std::fabs(f) * bits_to_float(239u << 23) * bits_to_float(17u << 23);
  const uint32_t w = float_to_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
  const uint32_t bias = std::max(shl1_w & 0xFF000000u, 0x71000000u);
  const uint32_t bits = float_to_bits(bits_to_float((bias >> 1) + 0x07800000u) + base);
  const uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
  const uint32_t is_nan = mask(shl1_w > 0xFF000000u);
  return c10::Half(static_cast<uint16_t>((sign >> 16) | (0x7E00u & is_nan) | (nonsign & ~is_nan)),
                   c10::Half::from_bits());
}

}  // namespace fused_diffusion::cpu
