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
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace pyallreduce {

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
