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
// own corresponding waits, as a pairwise exchange does; receive_window()
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
  Clock::time_point since{};  // set by its first Transport::check_wait
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

class Request {
 public:
  virtual ~Request() = default;
  // Blocks until the transfer is complete: the send buffer may be reused, or
  // the receive buffer holds the data. Throws TransportError on failure.
  virtual void wait() = 0;
};
using RequestPtr = std::unique_ptr<Request>;

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // `data` must stay valid (and, for isend, unchanged) until wait() returns.
  virtual RequestPtr isend(int peer, const void* data, size_t bytes) = 0;
  virtual RequestPtr irecv(int peer, void* data, size_t bytes) = 0;
  // How many receives a pipelined algorithm may have posted at once, counting
  // the one it waits for next. Transports that match each message as it
  // comes (MPI, threads) let receives run ahead, so the next segments arrive
  // while one is being reduced; a grouped transport allows 1, which makes
  // every wait close the group {receive k, send k} of a lockstep exchange.
  virtual size_t receive_window() const { return 4; }

  // Every wait from now on throws TimeoutError once `deadline` has passed
  // (Clock::time_point::max(): never). A transport that wraps another passes
  // it on; one whose waits never block the host ignores it.
  virtual void set_deadline(Clock::time_point deadline) { deadline_ = deadline; }
  Clock::time_point deadline() const { return deadline_; }

  // Sends `notice` to every peer without waiting (best effort: a dead peer
  // never reads it). Transports that cannot carry notices drop them.
  virtual void post_notice(const Notice&) {}
  // Takes in every notice that has arrived; returns all received so far, by rank.
  const std::map<int, Notice>& collect_notices();

  // Throws PeerGaveUp if any peer has posted a notice: the one `wait`
  // waits for, if it has.
  void check_notices(const PendingWait& wait);
  // Called by a wait loop between polls (at least every few microseconds):
  // throws PeerGaveUp if a notice has arrived (looked for about once a
  // millisecond) and TimeoutError describing `wait` once the deadline has
  // passed.
  void check_wait(PendingWait& wait);

 protected:
  // One notice that has arrived, if any.
  virtual std::optional<Notice> receive_notice() { return std::nullopt; }

 private:
  Clock::time_point deadline_ = Clock::time_point::max();
  Clock::time_point next_notice_check_{};
  std::map<int, Notice> notices_;
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
