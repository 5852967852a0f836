#include "algorithm.h"

#include <cstring>
#include <new>
#include <string>

namespace pyallreduce {

void* HostMemory::reserve(size_t bytes) {
  if (bytes > capacity_) {
    constexpr size_t kAlignment = 64;
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    region_.reset();  // release the old region first, so peak memory stays one region
    capacity_ = 0;
    void* region = std::aligned_alloc(kAlignment, rounded);
    if (region == nullptr) throw std::bad_alloc();
    region_.reset(region);
    capacity_ = rounded;
  }
  return region_.get();
}

void HostMemory::copy(void* target, const void* source, size_t bytes) {
  if (bytes > 0) std::memcpy(target, source, bytes);
}

std::string StepTracker::describe() const {
  const char* stage = stage_.load(std::memory_order_relaxed);
  const char* phase = phase_.load(std::memory_order_relaxed);
  std::string text = stage != nullptr ? stage : "setup";
  if (phase != nullptr) {
    text += std::string(" ") + phase + " step " + std::to_string(step_.load(std::memory_order_relaxed) + 1) +
            " of " + std::to_string(steps_.load(std::memory_order_relaxed));
  }
  return text;
}

void run_allreduce(Algorithm algorithm, const CollectiveContext& ctx, Vector vec) {
  switch (algorithm) {
    case Algorithm::kRing: return ring_allreduce(ctx, vec);
    case Algorithm::kHalvingDoubling: return halving_doubling_allreduce(ctx, vec);
    case Algorithm::kRecursiveDoubling: return recursive_doubling_allreduce(ctx, vec);
    case Algorithm::kHierarchical: return hierarchical_allreduce(ctx, vec);
    default: break;
  }
  throw InvalidArgument("run_allreduce needs a concrete algorithm, not auto");
}

void run_reduce_scatter(Algorithm algorithm, const CollectiveContext& ctx, Vector vec) {
  switch (algorithm) {
    case Algorithm::kRing: return ring_reduce_scatter_blocks(ctx, vec);
    case Algorithm::kHalvingDoubling: return halving_reduce_scatter_blocks(ctx, vec);
    case Algorithm::kHierarchical: return hierarchical_reduce_scatter_blocks(ctx, vec);
    default: break;
  }
  throw InvalidArgument(std::string("run_reduce_scatter: ") + algorithm_name(algorithm) + " is not a reduce_scatter algorithm");
}

void run_allgather(Algorithm algorithm, const CollectiveContext& ctx, Vector vec) {
  switch (algorithm) {
    case Algorithm::kRing: return ring_allgather_blocks(ctx, vec);
    case Algorithm::kRecursiveDoubling: return recursive_doubling_allgather_blocks(ctx, vec);
    case Algorithm::kHierarchical: return hierarchical_allgather_blocks(ctx, vec);
    default: break;
  }
  throw InvalidArgument(std::string("run_allgather: ") + algorithm_name(algorithm) + " is not an allgather algorithm");
}

void run_broadcast(Algorithm algorithm, const CollectiveContext& ctx, Vector vec, int root) {
  switch (algorithm) {
    case Algorithm::kBinomialTree: return binomial_tree_broadcast(ctx, vec, root);
    case Algorithm::kScatterAllgather: return scatter_allgather_broadcast(ctx, vec, root);
    default: break;
  }
  throw InvalidArgument(std::string("run_broadcast: ") + algorithm_name(algorithm) + " is not a broadcast algorithm");
}

void Vector::take_input(MemorySpace& memory) const {
  if (input != data) memory.copy(data, input, bytes(count));
}

}  // namespace pyallreduce
