// Elementwise reductions on the GPU, enqueued on a stream: the device
// counterpart of csrc/reduce/reduction.cpp, with the same element operations
// (csrc/reduce/element_ops.h), so both round to the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "../types.h"

namespace pyallreduce::cuda {

// out[i] = left[i] (op) right[i] for i < count; `out` may be `left` or
// `right`. float16/bfloat16 are widened to float32, combined and rounded once
// (to nearest even). Integer sum and product wrap around; min and max
// propagate NaN, keeping `left`'s when both are NaN. Throws TransportError if
// the launch fails.
void launch_combine(DType dtype, ReduceOp op, const void* left, const void* right, void* out, size_t count,
                    cudaStream_t stream);

// data[i] /= divisor, in float32 for float16/bfloat16; integers round toward zero.
void launch_divide(DType dtype, void* data, size_t count, int divisor, cudaStream_t stream);

}  // namespace pyallreduce::cuda
