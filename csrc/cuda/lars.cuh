// The fused LARS step on a CUDA stream: per-tensor norms, trust ratios and
// updates of many tensors in two kernel launches per chunk of tensors, with
// nothing waiting on the host. The update is the CPU step's (csrc/optim/lars.h).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../optim/lars.h"

namespace pyallreduce::cuda {

enum class GradType { kFloat32, kFloat16, kBFloat16 };

// One float32 parameter (or master weight), its gradient of `grad_type` and
// its float32 momentum buffer (null when momentum is 0), on the device.
struct LarsTensor {
  float* param;
  const void* grad;
  float* momentum_buffer;
  size_t count;
  bool adapt;
  double momentum_correction;
};

using pyallreduce::LarsHyperparameters;

// How many float64 values of device workspace lars_step needs for these tensors.
size_t lars_workspace_elements(const std::vector<LarsTensor>& tensors);

// Enqueues the step on `stream`; `workspace` holds lars_workspace_elements
// doubles on the device. Throws TransportError (a std::runtime_error) on a CUDA error.
void lars_step(const std::vector<LarsTensor>& tensors, GradType grad_type, const LarsHyperparameters& hyper,
               double* workspace, cudaStream_t stream);

}  // namespace pyallreduce::cuda
