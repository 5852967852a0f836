// Elementwise reductions: the only place that knows how to combine two vectors
// of a given dtype under a given operator.
#pragma once

#include <cstddef>

#include "../types.h"

namespace pyallreduce {

class Reduction {
 public:
  Reduction(DType dtype, ReduceOp op);

  DType dtype() const { return dtype_; }
  ReduceOp op() const { return op_; }
  size_t element_size() const { return element_size_; }

  // out[i] = left[i] (op) right[i] for i < count. `out` may be the same pointer
  // as `left` or `right`; partial overlaps are not allowed. Algorithms pass the
  // lower-ranked contribution as `left`, so that even a non-commutative corner
  // (two NaN payloads under min/max) gives every rank the same bits.
  // float16/bfloat16 are widened to float32, combined, and rounded back once.
  void combine(const void* left, const void* right, void* out, size_t count) const;

  // Applied exactly once to every fully reduced element: "avg" divides by
  // world_size (integers round toward zero, as in C and NCCL); other ops leave
  // the data alone.
  void finalize(void* data, size_t count, int world_size) const;

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
