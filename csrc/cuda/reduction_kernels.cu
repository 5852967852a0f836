#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../reduce/element_ops.h"
#include "check.h"
#include "reduction_kernels.cuh"

namespace pyallreduce::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 8192;  // grid-stride beyond: ~60 blocks per SM on an H100
constexpr size_t kVectorBytes = 16;    // one 128-bit load or store per thread and step

using elements::combined;
using elements::divided;

// kLanes elements of S in one aligned 16-byte word.
template <class S> struct alignas(kVectorBytes) Lanes {
  static constexpr int kLanes = kVectorBytes / sizeof(S);
  S value[kLanes];
};

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
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count; i += stride) {
    data[i] = divided(data[i], divisor);
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

}  // namespace

void launch_combine(DType dtype, ReduceOp op, const void* left, const void* right, void* out, size_t count,
                    cudaStream_t stream) {
  if (count == 0) return;
  elements::with_storage_type(dtype, [&](auto* type) {
    using S = std::remove_pointer_t<decltype(type)>;
    elements::with_operator(op, [&](auto op_type) { combine_as<S, decltype(op_type)>(left, right, out, count, stream); });
  });
  check_cuda(cudaGetLastError(), "launching a reduction kernel");
}

void launch_divide(DType dtype, void* data, size_t count, int divisor, cudaStream_t stream) {
  if (count == 0) return;
  elements::with_storage_type(dtype, [&](auto* type) {
    using S = std::remove_pointer_t<decltype(type)>;
    divide_kernel<S><<<blocks_for(count), kThreads, 0, stream>>>(static_cast<S*>(data), count, divisor);
  });
  check_cuda(cudaGetLastError(), "launching the average's division");
}

}  // namespace pyallreduce::cuda
