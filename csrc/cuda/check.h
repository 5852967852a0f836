// Turning CUDA runtime errors into the core's exceptions.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "../types.h"

namespace pyallreduce::cuda {

// Throws TransportError naming `what` and CUDA's message unless rc is cudaSuccess.
inline void check_cuda(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) {
    throw TransportError(std::string(what) + " failed: " + cudaGetErrorName(rc) + ": " + cudaGetErrorString(rc));
  }
}

}  // namespace pyallreduce::cuda
