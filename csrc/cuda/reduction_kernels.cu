#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "check.h"
#include "reduction_kernels.cuh"

namespace pyallreduce::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 8192;  // grid-stride beyond: ~60 blocks per SM on an H100
constexpr size_t kVectorBytes = 16;    // one 128-bit load or store per thread and step

// How a storage type is widened to its compute type and rounded back.
template <class S> struct Codec {
  using Compute = S;
  __device__ static S load(S s) { return s; }
  __device__ static S store(S c) { return c; }
};
template <> struct Codec<__half> {
  using Compute = float;
  __device__ static float load(__half h) { return __half2float(h); }
  __device__ static __half store(float f) { return __float2half_rn(f); }
};
template <> struct Codec<__nv_bfloat16> {
  using Compute = float;
  __device__ static float load(__nv_bfloat16 b) { return __bfloat162float(b); }
  __device__ static __nv_bfloat16 store(float f) { return __float2bfloat16_rn(f); }
};

// Integer sum and product wrap around (in unsigned arithmetic, which is defined).
template <class T> __device__ T wrapping_add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}
template <class T> __device__ T wrapping_mul(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
  } else {
    return a * b;
  }
}

struct SumOp { template <class T> __device__ static T apply(T a, T b) { return wrapping_add(a, b); } };
struct ProdOp { template <class T> __device__ static T apply(T a, T b) { return wrapping_mul(a, b); } };
struct MinOp { template <class T> __device__ static T apply(T a, T b) { return (a < b || a != a) ? a : b; } };
struct MaxOp { template <class T> __device__ static T apply(T a, T b) { return (a > b || a != a) ? a : b; } };

// kLanes elements of S in one aligned 16-byte word.
template <class S> struct alignas(kVectorBytes) Lanes {
  static constexpr int kLanes = kVectorBytes / sizeof(S);
  S value[kLanes];
};

template <class S, class Op>
__device__ S combined(S a, S b) {
  return Codec<S>::store(Op::apply(Codec<S>::load(a), Codec<S>::load(b)));
}

// With `vectorized` (all three pointers 16-byte aligned), threads move whole
// 16-byte words: word w covers elements [w * kLanes, (w + 1) * kLanes), and the
// last count % kLanes elements are done one by one. Example, float16 (8 lanes)
// and count = 20: words 0 and 1 cover elements 0-15, then 16-19 singly.
template <class S, class Op>
__global__ void combine_kernel(const S* left, const S* right, S* out, size_t count, bool vectorized) {
  constexpr int kLanes = Lanes<S>::kLanes;
  const size_t first = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t words = vectorized ? count / kLanes : 0;
  const auto* left_words = reinterpret_cast<const Lanes<S>*>(left);
  const auto* right_words = reinterpret_cast<const Lanes<S>*>(right);
  auto* out_words = reinterpret_cast<Lanes<S>*>(out);
  for (size_t w = first; w < words; w += stride) {
    const Lanes<S> a = left_words[w];
    const Lanes<S> b = right_words[w];
    Lanes<S> o;
#pragma unroll
    for (int lane = 0; lane < kLanes; ++lane) o.value[lane] = combined<S, Op>(a.value[lane], b.value[lane]);
    out_words[w] = o;
  }
  for (size_t i = words * kLanes + first; i < count; i += stride) out[i] = combined<S, Op>(left[i], right[i]);
}

template <class S>
__global__ void divide_kernel(S* data, size_t count, int divisor) {
  using C = typename Codec<S>::Compute;
  const C p = static_cast<C>(divisor);
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count; i += stride) {
    data[i] = Codec<S>::store(Codec<S>::load(data[i]) / p);
  }
}

unsigned blocks_for(size_t work_items) {
  return static_cast<unsigned>(std::min<size_t>((work_items + kThreads - 1) / kThreads, kMaxBlocks));
}

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

template <class S, class Op>
void combine_as(const void* left, const void* right, void* out, size_t count, cudaStream_t stream) {
  const bool vectorized = aligned(left) && aligned(right) && aligned(out);
  const size_t work = vectorized ? count / Lanes<S>::kLanes + count % Lanes<S>::kLanes : count;
  combine_kernel<S, Op><<<blocks_for(work), kThreads, 0, stream>>>(
      static_cast<const S*>(left), static_cast<const S*>(right), static_cast<S*>(out), count, vectorized);
}

template <class S>
void combine_with(ReduceOp op, const void* left, const void* right, void* out, size_t count, cudaStream_t stream) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: combine_as<S, SumOp>(left, right, out, count, stream); return;
    case ReduceOp::kMin: combine_as<S, MinOp>(left, right, out, count, stream); return;
    case ReduceOp::kMax: combine_as<S, MaxOp>(left, right, out, count, stream); return;
    case ReduceOp::kProd: combine_as<S, ProdOp>(left, right, out, count, stream); return;
  }
  throw InvalidArgument("unknown reduction op code " + std::to_string(static_cast<int>(op)));
}

// Calls fn with a null pointer of the storage type of `dtype`.
template <class Fn>
void with_storage_type(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::kFloat32: fn(static_cast<float*>(nullptr)); return;
    case DType::kFloat64: fn(static_cast<double*>(nullptr)); return;
    case DType::kFloat16: fn(static_cast<__half*>(nullptr)); return;
    case DType::kBFloat16: fn(static_cast<__nv_bfloat16*>(nullptr)); return;
    case DType::kInt32: fn(static_cast<int32_t*>(nullptr)); return;
    case DType::kInt64: fn(static_cast<int64_t*>(nullptr)); return;
  }
  throw InvalidArgument("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

}  // namespace

void launch_combine(DType dtype, ReduceOp op, const void* left, const void* right, void* out, size_t count,
                    cudaStream_t stream) {
  if (count == 0) return;
  with_storage_type(dtype, [&](auto* type) {
    using S = std::remove_pointer_t<decltype(type)>;
    combine_with<S>(op, left, right, out, count, stream);
  });
  check_cuda(cudaGetLastError(), "launching a reduction kernel");
}

void launch_divide(DType dtype, void* data, size_t count, int divisor, cudaStream_t stream) {
  if (count == 0) return;
  with_storage_type(dtype, [&](auto* type) {
    using S = std::remove_pointer_t<decltype(type)>;
    divide_kernel<S><<<blocks_for(count), kThreads, 0, stream>>>(static_cast<S*>(data), count, divisor);
  });
  check_cuda(cudaGetLastError(), "launching the average's division");
}

}  // namespace pyallreduce::cuda
