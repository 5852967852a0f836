// A transport for device memory over a transport for host memory (MPI):
// each transfer is staged through pinned host memory, in pieces, so that
// copying one piece across PCIe overlaps sending or receiving the next.
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "../transport/transport.h"
#include "device_memory.h"

namespace pyallreduce::cuda {

class StagedTransport final : public Transport {
 public:
  // Pieces of this many bytes travel as separate host messages; both sides
  // cut a transfer alike, so they pair up in order.
  static constexpr size_t kPieceBytes = size_t{1} << 20;

  StagedTransport(Transport& host, const StreamOrder& order);
  ~StagedTransport() override;
  StagedTransport(const StagedTransport&) = delete;
  StagedTransport& operator=(const StagedTransport&) = delete;

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  size_t max_receive_window() const override { return host_.max_receive_window(); }
  // The host transport's waits are this one's: its deadline and notices rule them.
  void set_deadline(Clock::time_point deadline) override { host_.set_deadline(deadline); }
  Clock::time_point deadline() const override { return host_.deadline(); }
  const std::map<int, Notice>& collect_notices() override { return host_.collect_notices(); }
  void set_idle_since(Clock::time_point since) override { host_.set_idle_since(since); }
  // Copies `data` to pinned memory on the stream (after the work that wrote
  // it) and hands each piece to the host transport as soon as it is there:
  // the host waits for the copies.
  RequestPtr isend(int peer, const void* data, size_t bytes) override;
  // Receives into pinned memory; wait() copies each piece to `data` on the
  // stream as it arrives, without waiting for the copies.
  RequestPtr irecv(int peer, void* data, size_t bytes) override;

  // Called before each allreduce: waits for the previous call's copies out
  // of pinned memory, then reuses all of it.
  void begin_call();

 private:
  Transport& host_;
  const StreamOrder& order_;
  PinnedArena staging_;
  std::vector<cudaEvent_t> piece_copied_;  // one per piece of the largest send so far
  cudaEvent_t receives_copied_ = nullptr;  // after the last copy out of pinned memory
};

}  // namespace pyallreduce::cuda
