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
#include <optional>
#include <string>
#include <vector>

#include "transport.h"

namespace pyallreduce {

// What one posted send or receive looks like while it waits for its partner.
struct LocalTransfer {
  const void* send_data = nullptr;  // set for a send
  void* recv_data = nullptr;        // set for a receive
  int peer = -1;                    // the other side
  bool is_send = false;
  size_t bytes = 0;                 // a bounded receive's bound
  size_t* received = nullptr;       // set for a bounded receive: where the length that came goes
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

// A fault the in-process world injects into one rank's sends, for tests of
// what its peers see. Sends are counted per rank from 0, the argument check's
// messages included.
struct LocalFault {
  enum class Kind {
    kStall,  // send number `message` is posted `seconds` late (a rank that stops there for a while)
    kSlow,   // every send from number `message` on is posted `seconds` late
    kShort,  // send number `message` carries one byte less than its receiver expects
  };
  int rank;
  Kind kind;
  size_t message;
  double seconds = 0;
};

// The state the threads of one in-process world share.
class LocalWorld {
 public:
  // `host_of` (one entry per rank, or empty for one host) says which ranks
  // the world's communicators treat as sharing a host (see HostLayout).
  LocalWorld(int size, bool grouped, const std::vector<int>& host_of = {});
  int size() const { return size_; }
  const HostLayout& layout() const { return layout_; }
  bool grouped() const { return grouped_; }
  LocalChannel& channel(int from, int to) { return *channels_[static_cast<size_t>(from * size_ + to)]; }

  // Wakes every waiting rank with a TransportError carrying `reason`; used
  // when one rank fails, so that its peers raise instead of hanging.
  void abort(const std::string& reason);
  bool aborted() const { return aborted_.load(); }
  std::string abort_reason();

  void inject(const LocalFault& fault);
  // The fault for `rank`'s send number `message`, if any.
  std::optional<LocalFault> fault_for(int rank, size_t message);
  // Sleeps `seconds`, or less if the world aborts meanwhile.
  void sleep(double seconds);

  // Notices between ranks (see Transport::post_notice): posting one wakes
  // every waiting rank, which then finds it.
  void post_notice(int to, const std::string& bytes);
  std::optional<std::string> take_notice(int rank);
  bool has_notice(int rank);

 private:
  void wake_all();
  int size_;
  bool grouped_;
  HostLayout layout_;
  std::vector<std::unique_ptr<LocalChannel>> channels_;
  std::atomic<bool> aborted_{false};
  std::mutex reason_mutex_;  // also guards the faults and notices
  std::condition_variable aborting_;
  std::string abort_reason_;
  std::vector<LocalFault> faults_;
  std::vector<std::deque<std::string>> notices_;  // by receiving rank
  std::atomic<int> pending_notices_{0};
};

class LocalTransport : public Transport {
 public:
  LocalTransport(std::shared_ptr<LocalWorld> world, int rank);
  int rank() const override { return rank_; }
  int size() const override { return world_->size(); }
  RequestPtr isend(int peer, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, void* data, size_t bytes) override;
  RequestPtr isend_bounded(int peer, const void* data, size_t bytes, size_t bound) override;
  RequestPtr irecv_bounded(int peer, void* data, size_t bound, size_t* received) override;
  size_t max_receive_window() const override { return world_->grouped() ? 1 : Transport::max_receive_window(); }
  void post_notice(const Notice& notice) override;

  // Grouped worlds: starts the pending group and waits until all of it is
  // done (or the world aborts).
  void run_pending_group();
  // Drops a transfer that was never started from the pending group.
  void withdraw_pending(const std::shared_ptr<LocalTransfer>& transfer);
  // Waits on `channel` until `transfer` is done; throws TransportError if it
  // failed or the world aborted, and as check_wait() does.
  void wait_for(LocalChannel& channel, const LocalTransfer& transfer);

 protected:
  std::optional<Notice> receive_notice() override;

 private:
  struct Pending {
    LocalChannel* channel;
    std::shared_ptr<LocalTransfer> transfer;
    bool is_send;
  };
  void check_peer(int peer) const;
  // A receive of exactly `bytes`, or with `received` set, of at most `bytes`.
  RequestPtr receive(int peer, void* data, size_t bytes, size_t* received);
  RequestPtr post(LocalChannel& channel, std::shared_ptr<LocalTransfer> transfer, bool is_send);
  // Matches the transfer on its channel, or queues it there for its partner.
  void start(LocalChannel& channel, const std::shared_ptr<LocalTransfer>& transfer, bool is_send);
  std::shared_ptr<LocalWorld> world_;
  int rank_;
  size_t sends_ = 0;  // posted so far, for LocalFault
  std::vector<Pending> pending_;  // grouped worlds: posted since the last wait
};

}  // namespace pyallreduce
