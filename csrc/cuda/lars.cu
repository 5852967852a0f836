#include <algorithm>
#include <string>

#include "../reduce/element_ops.h"
#include "check.h"
#include "lars.cuh"

namespace pyallreduce::cuda {

namespace {

constexpr int kThreads = 256;
constexpr size_t kChunkElements = size_t{1} << 16;  // elements per block
constexpr int kTensorsPerLaunch = 48;               // keeps the kernel parameters under 4 KiB

size_t blocks_for(size_t count) { return (count + kChunkElements - 1) / kChunkElements; }

// Up to kTensorsPerLaunch tensors, passed by value as a kernel parameter.
// Tensor t owns blocks [first_block[t], first_block[t + 1]) of the launch,
// one per chunk of kChunkElements. Example: tensors of 100,000 and 0 and 5
// elements give first_block = {0, 2, 2, 3}: blocks 0-1 cover the first
// (elements 0-65535 and 65536-99999), the empty one has none, block 2 the last.
struct LaunchTensors {
  float* param[kTensorsPerLaunch];
  const void* grad[kTensorsPerLaunch];
  float* momentum_buffer[kTensorsPerLaunch];
  size_t count[kTensorsPerLaunch];
  double momentum_correction[kTensorsPerLaunch];
  int first_block[kTensorsPerLaunch + 1];
  bool adapt[kTensorsPerLaunch];
  int tensors;
};

// Gradient element i, widened to float32 (elements::Codec: the reductions' own).
template <class G>
__device__ float load(const void* grad, size_t i) {
  return elements::Codec<G>::load(static_cast<const G*>(grad)[i]);
}

// The tensor that block `block` of the launch belongs to.
__device__ int tensor_of_block(const LaunchTensors& t, int block) {
  int tensor = 0;
  while (t.first_block[tensor + 1] <= block) ++tensor;
  return tensor;
}

__device__ double block_sum(double value, double* shared) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += shared[w];  // fixed order: the same bits every run
  }
  __syncthreads();
  return total;
}

// Each block writes the sums of squares of its chunk of w and g to
// workspace[2 * block] and workspace[2 * block + 1].
template <class G>
__global__ void __launch_bounds__(kThreads) chunk_norms(LaunchTensors t, double* workspace) {
  __shared__ double shared[kThreads / 32];
  const int block = blockIdx.x;
  const int tensor = tensor_of_block(t, block);
  const size_t begin = (block - t.first_block[tensor]) * kChunkElements;
  const size_t end = min(begin + kChunkElements, t.count[tensor]);
  double w_sum = 0.0, g_sum = 0.0;
  if (t.adapt[tensor]) {
    for (size_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const double w = t.param[tensor][i], g = load<G>(t.grad[tensor], i);
      w_sum += w * w;
      g_sum += g * g;
    }
  }
  w_sum = block_sum(w_sum, shared);
  g_sum = block_sum(g_sum, shared);
  if (threadIdx.x == 0) {
    workspace[2 * block] = w_sum;
    workspace[2 * block + 1] = g_sum;
  }
}

// Each block adds up its tensor's chunk sums (in chunk order, so every block
// of the tensor finds the same trust ratio), then updates its own chunk.
template <class G>
__global__ void __launch_bounds__(kThreads) chunk_updates(LaunchTensors t, const double* workspace,
                                                          LarsHyperparameters hyper) {
  __shared__ float scale;
  const int block = blockIdx.x;
  const int tensor = tensor_of_block(t, block);
  if (threadIdx.x == 0) {
    double ratio = 1.0;
    if (t.adapt[tensor]) {
      double w_squares = 0.0, g_squares = 0.0;
      for (int b = t.first_block[tensor]; b < t.first_block[tensor + 1]; ++b) {
        w_squares += workspace[2 * b];
        g_squares += workspace[2 * b + 1];
      }
      ratio = trust_ratio(hyper, w_squares, g_squares);
    }
    scale = static_cast<float>(hyper.lr * ratio);
  }
  __syncthreads();
  const size_t begin = (block - t.first_block[tensor]) * kChunkElements;
  const size_t end = min(begin + kChunkElements, t.count[tensor]);
  const float decay = t.adapt[tensor] ? static_cast<float>(hyper.weight_decay) : 0.0f;
  const float carried = static_cast<float>(hyper.momentum * t.momentum_correction[tensor]);
  const float momentum = static_cast<float>(hyper.momentum);
  float* w = t.param[tensor];
  float* v = t.momentum_buffer[tensor];
  for (size_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const float d = scale * (load<G>(t.grad[tensor], i) + decay * w[i]);
    if (v == nullptr) {
      w[i] -= d;
      continue;
    }
    const float vi = carried * v[i] + d;
    v[i] = vi;
    w[i] -= hyper.nesterov ? momentum * vi + d : vi;
  }
}

template <class G>
void launch_all(const std::vector<LarsTensor>& tensors, const LarsHyperparameters& hyper, double* workspace,
                cudaStream_t stream) {
  for (size_t first = 0; first < tensors.size(); first += kTensorsPerLaunch) {
    LaunchTensors launch{};
    launch.tensors = static_cast<int>(std::min<size_t>(kTensorsPerLaunch, tensors.size() - first));
    for (int k = 0; k < launch.tensors; ++k) {
      const LarsTensor& x = tensors[first + k];
      launch.param[k] = x.param;
      launch.grad[k] = x.grad;
      launch.momentum_buffer[k] = x.momentum_buffer;
      launch.count[k] = x.count;
      launch.momentum_correction[k] = x.momentum_correction;
      launch.adapt[k] = x.adapt;
      launch.first_block[k + 1] = launch.first_block[k] + static_cast<int>(blocks_for(x.count));
    }
    const int blocks = launch.first_block[launch.tensors];
    if (blocks == 0) continue;
    chunk_norms<G><<<blocks, kThreads, 0, stream>>>(launch, workspace);
    check_cuda(cudaGetLastError(), "launching the LARS norm kernel");
    chunk_updates<G><<<blocks, kThreads, 0, stream>>>(launch, workspace, hyper);
    check_cuda(cudaGetLastError(), "launching the LARS update kernel");
    workspace += 2 * static_cast<size_t>(blocks);
  }
}

}  // namespace

size_t lars_workspace_elements(const std::vector<LarsTensor>& tensors) {
  size_t blocks = 0;
  for (const LarsTensor& x : tensors) blocks += blocks_for(x.count);
  return 2 * blocks;
}

void lars_step(const std::vector<LarsTensor>& tensors, GradType grad_type, const LarsHyperparameters& hyper,
               double* workspace, cudaStream_t stream) {
  switch (grad_type) {
    case GradType::kFloat32: return launch_all<float>(tensors, hyper, workspace, stream);
    case GradType::kFloat16: return launch_all<elements::Half>(tensors, hyper, workspace, stream);
    case GradType::kBFloat16: return launch_all<elements::BFloat16>(tensors, hyper, workspace, stream);
  }
}

}  // namespace pyallreduce::cuda
