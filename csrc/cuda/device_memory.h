// Device memory and pinned host memory for a communicator's CUDA calls.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "../algorithms/algorithm.h"

namespace pyallreduce::cuda {

// The device and stream a context's calls are ordered on; shared by its
// memory, reductions and transport.
struct StreamOrder {
  int device = 0;
  cudaStream_t stream = nullptr;
};

// Scratch device memory from the stream-ordered allocator (cudaMallocAsync),
// and device-to-device copies, all on the current stream: a region grown
// while earlier kernels still read the old one is freed after them, in order.
class DeviceMemory final : public MemorySpace {
 public:
  explicit DeviceMemory(const StreamOrder& order) : order_(order) {}
  ~DeviceMemory() override;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* reserve(size_t bytes) override;
  void copy(void* target, const void* source, size_t bytes) override;

 private:
  const StreamOrder& order_;
  void* region_ = nullptr;
  size_t capacity_ = 0;
};

// Pinned host memory handed out by bumping a pointer, and taken back all at
// once by reset(). A request that outgrows the current block gets a new one;
// reset() then replaces the blocks by one of their total size, so a steady
// sequence of calls allocates nothing.
class PinnedArena {
 public:
  PinnedArena() = default;
  ~PinnedArena();
  PinnedArena(const PinnedArena&) = delete;
  PinnedArena& operator=(const PinnedArena&) = delete;
  // `bytes` of pinned memory, 256-byte aligned, valid until reset().
  char* allocate(size_t bytes);
  // Takes every allocation back: the caller has made sure that nothing (no
  // copy, no MPI transfer) still uses them.
  void reset();

 private:
  struct Block {
    char* memory;
    size_t capacity;
  };
  void add_block(size_t bytes);
  void release_all();
  std::vector<Block> blocks_;
  size_t used_ = 0;  // in the last block
  size_t total_capacity_ = 0;
};

}  // namespace pyallreduce::cuda
