// The one interface an algorithm talks to: non-blocking point-to-point
// transfers of byte ranges between the ranks of a fixed group, and waiting for
// them. A transport never knows what the bytes mean.
//
// Matching: messages between one (sender, receiver) pair are matched in the
// order they were posted on each side, so a receive posted k-th gets the k-th
// send; a send and its receive always name the same number of bytes.
//
// Groups: a transport may start what was posted since the last wait only at
// the next wait, as one group that completes when all of it has met its
// partners (NCCL does, on a CUDA stream). Algorithms therefore post between
// two waits only transfers whose partners are posted between the partners'
// own corresponding waits, as a pairwise exchange does; max_receive_window()
// says how far a pipeline may post receives ahead of that.
//
// Deadlines and notices: every wait of a call returns by the call's deadline
// or throws TimeoutError naming the peer it waited for. A rank that gives up
// on a call (a timeout, a transport error) posts a notice to every peer out
// of band, and a peer's wait that sees it throws PeerGaveUp at once instead
// of waiting for its own deadline.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../types.h"

namespace pyallreduce {

using Clock = std::chrono::steady_clock;

// What a rank tells its peers when it gives up on a call.
struct Notice {
  int rank = -1;         // the rank that gave up
  uint64_t call = 0;     // the sequence number of its call on the communicator
  int waiting_on = -1;   // the peer it was waiting for when it gave up, or -1 for another failure
  double posted_s = 0;   // when it gave up, in seconds since the epoch
  double waiting_since_s = 0;  // since when it had been waiting on `waiting_on`, likewise
  std::string text;      // what happened, for people
};
// A notice as bytes on the wire, and back; decode throws TransportError on a
// malformed message.
std::string encode_notice(const Notice& notice);
Notice decode_notice(const std::string& bytes);

// What a blocked wait waits for, for its errors.
struct PendingWait {
  bool is_send;
  int peer;
  size_t bytes;
  Clock::time_point since{};  // set by its first Transport::check_wait (see set_idle_since)
  double waited_s() const;
};

// Thrown by `wait` when a peer has posted a notice.
class PeerGaveUp : public TransportError {
 public:
  PeerGaveUp(const Notice& notice, const PendingWait& wait);
  const Notice& notice() const { return notice_; }
  int waiting_for() const { return waiting_for_; }
  double waited_s() const { return waited_s_; }

 private:
  Notice notice_;
  int waiting_for_;
  double waited_s_;
};

// Which ranks share a host (memory, and the host's network link): host h's
// ranks, in increasing order, are ranks_on(h); hosts are numbered in the
// order of their lowest ranks. Example: ranks on hosts a, b, a, b, c give
// host_of {0, 1, 0, 1, 2}, ranks_on(0) = {0, 2}, local_index(2) = 1.
class HostLayout {
 public:
  // `host_of[r]` names rank r's host by any number; only equality matters.
  explicit HostLayout(const std::vector<int>& host_of);
  // Every one of `size` ranks on one host.
  static HostLayout single_host(int size) { return HostLayout(std::vector<int>(static_cast<size_t>(size), 0)); }
  int size() const { return static_cast<int>(host_of_.size()); }
  int hosts() const { return static_cast<int>(ranks_on_.size()); }
  int host_of(int rank) const { return host_of_[static_cast<size_t>(rank)]; }
  const std::vector<int>& ranks_on(int host) const { return ranks_on_[static_cast<size_t>(host)]; }
  // Rank's position among the ranks of its host.
  int local_index(int rank) const { return local_index_[static_cast<size_t>(rank)]; }
  int fewest_ranks_per_host() const;
  int most_ranks_per_host() const;
  // The layout of the ranks `members` (ranks here), in that order.
  HostLayout subset(const std::vector<int>& members) const;
  // E.g. "2 hosts x 2 ranks" or "3 hosts (3, 2, 2 ranks)".
  std::string describe() const;

 private:
  std::vector<int> host_of_;
  std::vector<std::vector<int>> ranks_on_;
  std::vector<int> local_index_;
};

class Request {
 public:
  virtual ~Request() = default;
  // Blocks until the transfer is complete: the send buffer may be reused, or
  // the receive buffer holds the data. Throws TransportError on failure.
  virtual void wait() = 0;
  // Whether the transfer is complete, without blocking (for schedules that
  // keep transfers of several groups in flight at once: hierarchical's
  // pipeline); once true, wait() returns at once. Throws as wait() does. A
  // transport whose transfers cannot be polled waits here instead.
  virtual bool test() {
    wait();
    return true;
  }
};
using RequestPtr = std::unique_ptr<Request>;

class Transport {
 public:
  explicit Transport(HostLayout layout) : layout_(std::move(layout)) {}
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Which of the ranks share a host.
  const HostLayout& layout() const { return layout_; }
  // `data` must stay valid (and, for isend, unchanged) until wait() returns.
  virtual RequestPtr isend(int peer, const void* data, size_t bytes) = 0;
  virtual RequestPtr irecv(int peer, void* data, size_t bytes) = 0;
  // A message whose receiver knows only a bound on its length (the argument
  // check's frames, each as long as its own call needs): the sender posts
  // `bytes` <= `bound`, the receiver posts the same `bound`, and once the
  // receive's wait returns `*received` holds the length that came; a longer
  // message fails the receive. The length never picks the way the message
  // travels (only the sender knows it), and it stays one message, never
  // split into pieces. The host transports (MPI, in-process) carry these;
  // the others throw TransportError.
  virtual RequestPtr isend_bounded(int peer, const void* data, size_t bytes, size_t bound);
  virtual RequestPtr irecv_bounded(int peer, void* data, size_t bound, size_t* received);
  // The most receives a pipelined algorithm may have posted at once, counting
  // the one it waits for next. Transports that match each message as it
  // comes (MPI, threads) allow any number, so the next segments arrive while
  // one is being reduced; a grouped transport allows 1, which makes every
  // wait close the group {receive k, send k} of a lockstep exchange.
  virtual size_t max_receive_window() const { return SIZE_MAX; }

  // Every wait from now on throws TimeoutError once `deadline` has passed
  // (Clock::time_point::max(): never). A transport whose transfers are
  // another's (StagedTransport) takes the deadline, the notices and
  // set_idle_since from that one, whose waits they rule; one whose waits
  // never block the host ignores them.
  virtual void set_deadline(Clock::time_point deadline) { deadline_ = deadline; }
  virtual Clock::time_point deadline() const { return deadline_; }

  // Sends `notice` to every peer without waiting (best effort: a dead peer
  // never reads it). Transports that cannot carry notices drop them.
  virtual void post_notice(const Notice&) {}
  // Takes in every notice that has arrived; returns all received so far, by rank.
  virtual const std::map<int, Notice>& collect_notices();

  // Throws PeerGaveUp if any peer has posted a notice: the one `wait`
  // waits for, if it has.
  void check_notices(const PendingWait& wait);
  // Called by a wait loop between polls (at least every few microseconds):
  // throws PeerGaveUp if a notice has arrived (looked for about once a
  // millisecond) and TimeoutError describing `wait` once the deadline has
  // passed.
  void check_wait(PendingWait& wait);
  // A loop that polls transfers of several phases without blocking
  // (run_pipeline) says since when none of them has moved; a wait that begins
  // while this is set counts as begun then, so that the notice this rank
  // posts, which a culprit search follows, shows how long it has really been
  // held up. Clock::time_point{} (the default): a wait counts from its start.
  virtual void set_idle_since(Clock::time_point since) { idle_since_ = since; }

 protected:
  // When a wait that begins at `now` counts as begun (see set_idle_since).
  Clock::time_point wait_began(Clock::time_point now) const {
    return idle_since_ == Clock::time_point{} ? now : idle_since_;
  }
  // One notice that has arrived, if any.
  virtual std::optional<Notice> receive_notice() { return std::nullopt; }

 private:
  HostLayout layout_;
  Clock::time_point deadline_ = Clock::time_point::max();
  Clock::time_point next_notice_check_{};
  Clock::time_point idle_since_{};
  std::map<int, Notice> notices_;
};

// Ranks `members` of `parent` (in the order that numbers them here) as a
// transport of their own, for algorithms that run on part of a group: rank i
// here is rank members[i] there. Transfers, deadlines and notices are the
// parent's, so errors name the parent's ranks. Only members may use it.
class GroupTransport final : public Transport {
 public:
  GroupTransport(Transport& parent, std::vector<int> members);
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  RequestPtr isend(int peer, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, void* data, size_t bytes) override;
  size_t max_receive_window() const override { return parent_.max_receive_window(); }

 private:
  int parent_rank(int peer) const;
  Transport& parent_;
  std::vector<int> members_;
  int rank_;
};

// Waits for every request in the list, then clears it.
void wait_all(std::vector<RequestPtr>& requests);

// Sends `send_bytes` to `peer` while receiving `recv_bytes` from it, and waits
// for both: the pairwise exchange every algorithm's step is made of.
void exchange(Transport& transport, int peer, const void* send_data, size_t send_bytes,
              void* recv_data, size_t recv_bytes);

// Cutting a transfer into pieces of at most `max_piece` bytes, which sender
// and receiver do alike so that in-order matching pairs the pieces up. Piece i
// starts at i * max_piece; an empty transfer is one empty piece. Example:
// 2.5 MiB in 1 MiB pieces gives pieces of 1, 1 and 0.5 MiB.
size_t piece_count(size_t bytes, size_t max_piece);
size_t piece_length(size_t bytes, size_t max_piece, size_t i);

// Collective setup helpers over a host transport (for one-time work such as
// creating a device transport, not for the data path).
// The lowest rank whose `ok` is false, or -1 when every rank's is true; the
// same answer on every rank, gathered at rank 0 and sent back.
int first_failing_rank(Transport& transport, bool ok);
// Copies rank 0's `bytes` at `data` to every other rank's `data`.
void broadcast_from_rank0(Transport& transport, void* data, size_t bytes);

}  // namespace pyallreduce
