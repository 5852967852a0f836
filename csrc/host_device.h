// Marks a function that the host compiler and nvcc both compile, for the host
// and, in the CUDA kernels (csrc/cuda/*.cu), the device.
#pragma once

#if defined(__CUDACC__)
#define PYALLREDUCE_HOST_DEVICE __host__ __device__
#else
#define PYALLREDUCE_HOST_DEVICE
#endif
