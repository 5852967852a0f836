// The element operations of every reduction, written once for the CPU
// (reduction.cpp) and the GPU (cuda/reduction_kernels.cu): how each dtype is
// stored and widened to the type it is combined in, the operators, and the
// dispatch from a (dtype, op) pair to those types. The host compiler and nvcc
// both compile it, so a float16 sum rounds to the same bits on either.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "../host_device.h"
#include "../types.h"

namespace pyallreduce::elements {

// ---- 16-bit floating-point storage ------------------------------------------
struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

PYALLREDUCE_HOST_DEVICE inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

PYALLREDUCE_HOST_DEVICE inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

PYALLREDUCE_HOST_DEVICE inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: the value is mantissa * 2^-24, exact in float32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1F) return bits_float(sign | 0x7F800000u | (mantissa << 13));  // inf/NaN
  // Rebias the exponent from 15 to 127: add 112 to the exponent field.
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

PYALLREDUCE_HOST_DEVICE inline uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7E00u;  // NaN stays a (quiet) NaN
  // 0x477FF000 is 65520, halfway between the largest half (65504) and 2^16:
  // from there on, round-to-nearest-even gives infinity.
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;
  if (magnitude < 0x38800000u) {
    // Below 2^-14, the smallest normal half: the result is a subnormal whose
    // mantissa is |f| / 2^-24 rounded to nearest even. Scaling by 2^24 is exact
    // and nearbyintf rounds to even; 1024 rolls over into the smallest normal,
    // which is exactly the bit pattern 0x0400.
    return sign | static_cast<uint16_t>(nearbyintf(fabsf(f) * 0x1p24f));
  }
  // Normal: drop 13 mantissa bits with round-to-nearest-even (add 0xFFF plus the
  // lowest kept bit; a carry correctly bumps the exponent), then rebias the
  // exponent from 127 to 15 by subtracting 112 << 23.
  const uint32_t rounded = magnitude + 0xFFFu + ((magnitude >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - (112u << 23)) >> 13);
}

PYALLREDUCE_HOST_DEVICE inline float bfloat16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

PYALLREDUCE_HOST_DEVICE inline uint16_t float_to_bfloat16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);  // nearest even
}

// Codec<Storage>: how an element is widened to its compute type and stored back.
template <class S> struct Codec {
  using Compute = S;
  PYALLREDUCE_HOST_DEVICE static S load(S s) { return s; }
  PYALLREDUCE_HOST_DEVICE static S store(S c) { return c; }
};
template <> struct Codec<Half> {
  using Compute = float;
  PYALLREDUCE_HOST_DEVICE static float load(Half h) { return half_to_float(h.bits); }
  PYALLREDUCE_HOST_DEVICE static Half store(float f) { return Half{float_to_half(f)}; }
};
template <> struct Codec<BFloat16> {
  using Compute = float;
  PYALLREDUCE_HOST_DEVICE static float load(BFloat16 b) { return bfloat16_to_float(b.bits); }
  PYALLREDUCE_HOST_DEVICE static BFloat16 store(float f) { return BFloat16{float_to_bfloat16(f)}; }
};

// ---- operators on the compute type -------------------------------------------
// Integer sum and product wrap around (two's complement) instead of invoking
// signed-overflow undefined behaviour.
template <class T> PYALLREDUCE_HOST_DEVICE inline T wrapping_add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}
template <class T> PYALLREDUCE_HOST_DEVICE inline T wrapping_mul(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
  } else {
    return a * b;
  }
}

struct SumOp { template <class T> PYALLREDUCE_HOST_DEVICE static T apply(T a, T b) { return wrapping_add(a, b); } };
struct ProdOp { template <class T> PYALLREDUCE_HOST_DEVICE static T apply(T a, T b) { return wrapping_mul(a, b); } };
// min/max propagate NaN like torch.minimum/maximum (a != a only for NaN),
// keeping the left operand's when both are NaN.
struct MinOp {
  template <class T> PYALLREDUCE_HOST_DEVICE static T apply(T a, T b) { return (a < b || a != a) ? a : b; }
};
struct MaxOp {
  template <class T> PYALLREDUCE_HOST_DEVICE static T apply(T a, T b) { return (a > b || a != a) ? a : b; }
};

// One element of out = left (op) right, widened and rounded back once.
template <class S, class Op> PYALLREDUCE_HOST_DEVICE inline S combined(S left, S right) {
  return Codec<S>::store(Op::apply(Codec<S>::load(left), Codec<S>::load(right)));
}

// One element of an average's division (integers round toward zero).
template <class S> PYALLREDUCE_HOST_DEVICE inline S divided(S value, int divisor) {
  using C = typename Codec<S>::Compute;
  return Codec<S>::store(Codec<S>::load(value) / static_cast<C>(divisor));
}

// ---- from run-time codes to types ---------------------------------------------
// Calls fn with a null pointer of the storage type of `dtype`.
template <class Fn> void with_storage_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(static_cast<float*>(nullptr)); return;
    case DType::kFloat64: fn(static_cast<double*>(nullptr)); return;
    case DType::kFloat16: fn(static_cast<Half*>(nullptr)); return;
    case DType::kBFloat16: fn(static_cast<BFloat16*>(nullptr)); return;
    case DType::kInt32: fn(static_cast<int32_t*>(nullptr)); return;
    case DType::kInt64: fn(static_cast<int64_t*>(nullptr)); return;
  }
  throw InvalidArgument("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

// Calls fn with the operator that combines under `op` (avg combines as a sum
// and divides once at the end).
template <class Fn> void with_operator(ReduceOp op, Fn&& fn) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: fn(SumOp{}); return;
    case ReduceOp::kMin: fn(MinOp{}); return;
    case ReduceOp::kMax: fn(MaxOp{}); return;
    case ReduceOp::kProd: fn(ProdOp{}); return;
  }
  throw InvalidArgument("unknown reduction op code " + std::to_string(static_cast<int>(op)));
}

}  // namespace pyallreduce::elements
