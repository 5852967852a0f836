// pyallreduce's CUDA backend: device contexts whose transport is NCCL or MPI
// staged through pinned memory, whose scratch is device memory, and whose
// reductions are the kernels of reduction_kernels.cu, all on one stream.
#pragma once

#include "../device/device.h"

namespace pyallreduce::cuda {

// The process's backend, registered with pyallreduce._C when _cuda is imported.
DeviceBackend& cuda_backend();

}  // namespace pyallreduce::cuda
