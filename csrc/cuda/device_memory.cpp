#include "device_memory.h"

#include <algorithm>

#include "check.h"

namespace pyallreduce::cuda {

DeviceMemory::~DeviceMemory() {
  // Synchronously: the last call's stream may be gone by now.
  if (region_ != nullptr) cudaFree(region_);
}

void* DeviceMemory::reserve(size_t bytes) {
  if (bytes > capacity_) {
    constexpr size_t kAlignment = 256;
    const size_t rounded = std::max<size_t>(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
    if (region_ != nullptr) check_cuda(cudaFreeAsync(region_, order_.stream), "cudaFreeAsync");
    region_ = nullptr;
    capacity_ = 0;
    check_cuda(cudaMallocAsync(&region_, rounded, order_.stream), "cudaMallocAsync");
    capacity_ = rounded;
  }
  return region_;
}

void DeviceMemory::copy(void* target, const void* source, size_t bytes) {
  if (bytes == 0) return;
  check_cuda(cudaMemcpyAsync(target, source, bytes, cudaMemcpyDeviceToDevice, order_.stream), "cudaMemcpyAsync");
}

PinnedArena::~PinnedArena() { release_all(); }

void PinnedArena::release_all() {
  for (const Block& block : blocks_) cudaFreeHost(block.memory);
  blocks_.clear();
  used_ = 0;
  total_capacity_ = 0;
}

void PinnedArena::add_block(size_t bytes) {
  void* memory = nullptr;
  check_cuda(cudaHostAlloc(&memory, bytes, cudaHostAllocPortable), "cudaHostAlloc");
  blocks_.push_back({static_cast<char*>(memory), bytes});
  total_capacity_ += bytes;
  used_ = 0;
}

char* PinnedArena::allocate(size_t bytes) {
  constexpr size_t kAlignment = 256;
  const size_t rounded = std::max<size_t>(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  if (blocks_.empty() || used_ + rounded > blocks_.back().capacity) {
    // At least double what is held, so a growing call adds few blocks.
    add_block(std::max(rounded, total_capacity_));
  }
  char* memory = blocks_.back().memory + used_;
  used_ += rounded;
  return memory;
}

void PinnedArena::reset() {
  if (blocks_.size() > 1) {
    const size_t total = total_capacity_;
    release_all();
    add_block(total);
  }
  used_ = 0;
}

}  // namespace pyallreduce::cuda
