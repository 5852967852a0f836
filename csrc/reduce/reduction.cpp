#include "reduction.h"

#include "element_ops.h"

#include <cstdint>
#include <fstream>
#include <string>
#include <type_traits>

#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace pyallreduce {
namespace {

using elements::combined;
using elements::divided;

// With kStream, out-of-place combines write `out` with non-temporal stores.
// An ordinary store first reads the output line into the cache, so
// out = a + b moves four streams through memory; streaming stores skip that
// read and move three. That pays only when the output would leave the cache
// before it is read again (see streaming_vector_bytes below).
template <class S, class Op, bool kStream>
void combine_kernel(const void* left, const void* right, void* out, size_t count) {
  const S* a = static_cast<const S*>(left);
  const S* b = static_cast<const S*>(right);
  S* o = static_cast<S*>(out);
  size_t i = 0;
#if defined(__SSE2__)
  if (kStream && o != a && o != b) {
    // Ordinary stores up to the first 16-byte boundary of `out`, then 16 bytes
    // (16 / sizeof(S) elements) per streaming store; the loop below finishes
    // the tail. Example, float32 with `out` 8 bytes past a boundary: elements
    // 0 and 1 are stored plainly, then 2-5, 6-9, ... stream.
    constexpr size_t kLane = 16 / sizeof(S);
    for (; i < count && reinterpret_cast<uintptr_t>(o + i) % 16 != 0; ++i) o[i] = combined<S, Op>(a[i], b[i]);
    for (; i + kLane <= count; i += kLane) {
      alignas(16) S lane[kLane];
      for (size_t j = 0; j < kLane; ++j) lane[j] = combined<S, Op>(a[i + j], b[i + j]);
      _mm_stream_si128(reinterpret_cast<__m128i*>(o + i), _mm_load_si128(reinterpret_cast<const __m128i*>(lane)));
    }
    _mm_sfence();  // the streamed lines are visible before anything is sent
  }
#endif
  for (; i < count; ++i) o[i] = combined<S, Op>(a[i], b[i]);
}

template <class S>
void divide_kernel(void* data, size_t count, int divisor) {
  S* d = static_cast<S*>(data);
  for (size_t i = 0; i < count; ++i) d[i] = divided(d[i], divisor);
}

}  // namespace

// The last-level cache's size as Linux describes cpu0's caches in sysfs (the
// highest index, e.g. index3/size = "32768K"), else as the C library reports
// it, else 32 MiB. sysfs comes first because inside a virtual machine glibc's
// figure can be the whole host package's, many times what the guest's cores
// share, where sysfs and lscpu give the guest's own.
size_t last_level_cache_bytes() {
  static const size_t cache_bytes = [] {
    size_t bytes = 0;
    for (int index = 0; index < 8; ++index) {
      std::ifstream file("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
      size_t value = 0;
      char unit = 0;
      if (!(file >> value)) continue;
      file >> unit;
      bytes = value << (unit == 'K' ? 10 : unit == 'M' ? 20 : 0);
    }
    if (bytes > 0) return bytes;
    const long reported = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return reported > 0 ? static_cast<size_t>(reported) : size_t{32} << 20;
  }();
  return cache_bytes;
}

// The default where pyallreduce.tune has not measured where streaming pays
// (CommunicatorOptions::streaming_store_bytes). Two ranks on a node, each
// with an input and an output, hold 4x the vector; once that exceeds the
// last-level cache, an output line is evicted before the ring's allgather
// reads it, so storing it through the cache only costs the extra read. Below
// that, the allgather finds it in the cache. How much the cache really keeps
// depends on its policy and on what else runs, which is why tune measures it.
size_t streaming_vector_bytes() {
  return last_level_cache_bytes() / 4;
}

Reduction::Reduction(DType dtype, ReduceOp op, bool stream)
    : dtype_(dtype), op_(op), element_size_(pyallreduce::element_size(dtype)) {
  elements::with_storage_type(dtype, [&](auto* type) {
    using S = std::remove_pointer_t<decltype(type)>;
    elements::with_operator(op, [&](auto op_type) {
      using Op = decltype(op_type);
      combine_ = stream ? combine_kernel<S, Op, true> : combine_kernel<S, Op, false>;
    });
    divide_ = op == ReduceOp::kAvg ? divide_kernel<S> : nullptr;
  });
}

void Reduction::combine(const void* left, const void* right, void* out, size_t count) const {
  combine_(left, right, out, count);
}

void Reduction::finalize(void* data, size_t count, int world_size) const {
  if (divide_ != nullptr && world_size > 1) divide_(data, count, world_size);
}

}  // namespace pyallreduce
