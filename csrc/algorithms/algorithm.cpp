#include "algorithm.h"

#include <cstring>
#include <new>

namespace pyallreduce {

void* Workspace::reserve(size_t bytes) {
  if (bytes > capacity_) {
    constexpr size_t kAlignment = 64;
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    memory_.reset();  // release the old region first, so peak memory stays one region
    capacity_ = 0;
    void* region = std::aligned_alloc(kAlignment, rounded);
    if (region == nullptr) throw std::bad_alloc();
    memory_.reset(region);
    capacity_ = rounded;
  }
  return memory_.get();
}

void Vector::take_input() const {
  if (input != data && count > 0) std::memcpy(data, input, bytes(count));
}

}  // namespace pyallreduce
