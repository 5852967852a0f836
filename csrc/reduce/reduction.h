// Elementwise reductions: the only place that knows how to combine two vectors
// of a given dtype under a given operator.
#pragma once

#include <cstddef>

#include "../types.h"

namespace pyallreduce {

// What an algorithm is told about the elements it moves: how to combine two
// runs of them and how to finish a fully reduced one. Algorithms see only
// this, so the same algorithm reduces tensors or the communicator's check
// frames (see communicator.cpp).
class Combiner {
 public:
  virtual ~Combiner() = default;
  // out[i] = left[i] (op) right[i] for i < count. `out` may be the same pointer
  // as `left` or `right`; partial overlaps are not allowed. Algorithms pass the
  // lower-ranked contribution as `left`, so that even a non-commutative corner
  // (two NaN payloads under min/max) gives every rank the same bits.
  virtual void combine(const void* left, const void* right, void* out, size_t count) const = 0;
  // Applied exactly once to every fully reduced element.
  virtual void finalize(void* data, size_t count, int world_size) const = 0;
};

// The size of the last-level cache, from sysfs (where glibc can be wrong).
size_t last_level_cache_bytes();

// The vector size from which out-of-place combines write around the cache
// where nothing was measured (a quarter of the last-level cache; see
// reduction.cpp).
size_t streaming_vector_bytes();

// An elementwise reduction of one dtype under one operator.
class Reduction final : public Combiner {
 public:
  // With `stream_outputs`, out-of-place combines write their outputs with
  // streaming stores, around the cache (for vectors that would leave it
  // before their outputs are read again).
  Reduction(DType dtype, ReduceOp op, bool stream_outputs = false);
  // A size where the flag belongs would convert to true: refused.
  Reduction(DType dtype, ReduceOp op, size_t) = delete;

  DType dtype() const { return dtype_; }
  ReduceOp op() const { return op_; }
  size_t element_size() const { return element_size_; }

  // float16/bfloat16 are widened to float32, combined, and rounded back once.
  void combine(const void* left, const void* right, void* out, size_t count) const override;

  // "avg" divides by world_size (integers round toward zero, as in C and
  // NCCL); other ops leave the data alone.
  void finalize(void* data, size_t count, int world_size) const override;

 private:
  using CombineFn = void (*)(const void*, const void*, void*, size_t);
  using FinalizeFn = void (*)(void*, size_t, int);

  DType dtype_;
  ReduceOp op_;
  size_t element_size_;
  CombineFn combine_;
  FinalizeFn divide_;  // null unless op is avg
};

}  // namespace pyallreduce
