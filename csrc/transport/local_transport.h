// In-process transport: the ranks are threads of one process and a message is
// a memcpy from the sender's buffer into the receiver's. It lets tests run any
// world size in milliseconds, with the same algorithms as the MPI transport.
//
// A grouped world keeps NCCL's group semantics instead (see transport.h):
// what a rank posts starts only at its next wait, as one group, and that wait
// returns only once the whole group has met its partners, as a CUDA stream
// moves past a group only then. An algorithm that would deadlock on NCCL
// deadlocks here, so tests show the algorithms keep to the rules without a GPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport.h"

namespace pyallreduce {

// What one posted send or receive looks like while it waits for its partner.
struct LocalTransfer {
  const void* send_data = nullptr;  // set for a send
  void* recv_data = nullptr;        // set for a receive
  size_t bytes = 0;
  bool done = false;
  bool started = true;  // false while it waits in a grouped rank's pending group
  std::string error;  // set instead of copying when the two sides disagree
};

// The messages from one rank to another, in posting order.
struct LocalChannel {
  std::mutex mutex;
  std::condition_variable completed;
  std::deque<std::shared_ptr<LocalTransfer>> unmatched_sends;
  std::deque<std::shared_ptr<LocalTransfer>> unmatched_recvs;
};

// The state the threads of one in-process world share.
class LocalWorld {
 public:
  LocalWorld(int size, bool grouped);
  int size() const { return size_; }
  bool grouped() const { return grouped_; }
  LocalChannel& channel(int from, int to) { return *channels_[static_cast<size_t>(from * size_ + to)]; }

  // Wakes every waiting rank with a TransportError carrying `reason`; used
  // when one rank fails, so that its peers raise instead of hanging.
  void abort(const std::string& reason);
  bool aborted() const { return aborted_.load(); }
  std::string abort_reason();

 private:
  int size_;
  bool grouped_;
  std::vector<std::unique_ptr<LocalChannel>> channels_;
  std::atomic<bool> aborted_{false};
  std::mutex reason_mutex_;
  std::string abort_reason_;
};

class LocalTransport : public Transport {
 public:
  LocalTransport(std::shared_ptr<LocalWorld> world, int rank);
  int rank() const override { return rank_; }
  int size() const override { return world_->size(); }
  RequestPtr isend(int peer, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, void* data, size_t bytes) override;
  size_t receive_window() const override { return world_->grouped() ? 1 : Transport::receive_window(); }

  // Grouped worlds: starts the pending group and waits until all of it is
  // done (or the world aborts).
  void run_pending_group();
  // Drops a transfer that was never started from the pending group.
  void withdraw_pending(const std::shared_ptr<LocalTransfer>& transfer);

 private:
  struct Pending {
    LocalChannel* channel;
    std::shared_ptr<LocalTransfer> transfer;
    bool is_send;
  };
  void check_peer(int peer) const;
  RequestPtr post(LocalChannel& channel, std::shared_ptr<LocalTransfer> transfer, bool is_send);
  // Matches the transfer on its channel, or queues it there for its partner.
  void start(LocalChannel& channel, const std::shared_ptr<LocalTransfer>& transfer, bool is_send);
  std::shared_ptr<LocalWorld> world_;
  int rank_;
  std::vector<Pending> pending_;  // grouped worlds: posted since the last wait
};

}  // namespace pyallreduce
