// Byte pipes in shared memory between the ranks of one host, which
// MpiTransport sends its small messages to a host's peers through instead of
// MPI: a message is copied into its pipe by the sender and out of it by the
// receiver, and the only synchronization is a counter on each side. The
// MPI library's own path for such a message (matching, a queue of cells, its
// progress engine) costs more than the two copies where messages are small.
//
// Each rank maps one segment per rank of its host; rank r's segment holds
// the pipes from every other rank of its host to r, so what r reads lies in
// memory r touched first (its NUMA node). A pipe is a ring of `capacity`
// bytes with two monotonic byte counters: `written`, advanced only by the
// sender once bytes are in place, and `read`, advanced only by the receiver
// once it has copied them out. The sender may write while written - read <
// capacity, the receiver read while read < written. Example: capacity 4096,
// written 5000, read 4500: 500 bytes wait at ring offsets 404..903, and the
// sender may write 3596 more, starting at offset 904.
//
// A message is its length (8 bytes) followed by its bytes; a message longer
// than the pipe streams through it, the sender writing as the receiver
// drains. The receiver checks the length against what it posted (for a
// bounded receive, against its bound), so ranks that disagree about a call
// fail with an error instead of reading each other's bytes as data.
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "transport.h"

namespace pyallreduce {

class PipeTransfer;

class SharedMemoryPipes {
 public:
  // Collective over `comm` (whose ranks `layout` describes): maps the
  // segments of this rank's host, each holding a pipe of `capacity` bytes
  // (a power of two) from every other rank of the host. Returns null, with
  // the reason in `why_not`, on every rank of a host where any of its ranks
  // could not map them (no /dev/shm, or too little room in it); the
  // transport then sends everything through MPI.
  static std::unique_ptr<SharedMemoryPipes> create(MPI_Comm comm, const HostLayout& layout, size_t capacity,
                                                   std::string* why_not);
  ~SharedMemoryPipes();
  SharedMemoryPipes(const SharedMemoryPipes&) = delete;
  SharedMemoryPipes& operator=(const SharedMemoryPipes&) = delete;

  size_t capacity() const { return capacity_; }
  // Whether a pipe joins this rank to `peer` (a rank of the same host).
  bool reaches(int peer) const;
  // Transfers whose waits poll `owner` for its deadline and notices.
  RequestPtr isend(Transport& owner, int peer, const void* data, size_t bytes);
  RequestPtr irecv(Transport& owner, int peer, void* data, size_t bytes);
  // A receive of at most `bound` bytes (Transport::irecv_bounded).
  RequestPtr irecv_bounded(Transport& owner, int peer, void* data, size_t bound, size_t* received);
  // Moves what the pipes allow of every posted transfer, each peer's in the
  // order posted; returns whether any byte moved. Every wait of the
  // transport calls it, so that a transfer completes while its rank waits
  // for another one, as MPI's progress engine does.
  bool progress();
  bool busy() const { return pending_ > 0; }

  // What a waiting transfer does between unanswered polls, besides giving
  // the core away: MpiTransport drives MPI's progress there while MPI
  // requests of its own are in flight.
  std::function<void()> between_polls;

 private:
  struct Pipe;
  struct Mapping {
    void* base = nullptr;
    size_t bytes = 0;
  };
  SharedMemoryPipes(int rank, size_t capacity, const HostLayout& layout);
  Pipe pipe(int receiver, int sender);
  RequestPtr post(std::unique_ptr<PipeTransfer> transfer);
  bool advance(PipeTransfer& transfer);
  bool advance_queue(std::deque<PipeTransfer*>& queue);
  void forget(PipeTransfer* transfer);
  friend class PipeTransfer;

  Clock::duration yield_cost_;         // how long a wait spins before it yields (PipeTransfer::wait)
  int rank_;
  size_t capacity_;
  size_t pipe_stride_;                 // a pipe's counters and ring
  std::vector<int> host_peers_;        // the other ranks of this host
  std::vector<int> local_index_;       // by rank: its index on this host, or -1 on another host
  std::vector<Mapping> segments_;      // by local index: that rank's inbound pipes
  std::vector<std::deque<PipeTransfer*>> sends_;     // by rank: posted and not complete, in order
  std::vector<std::deque<PipeTransfer*>> receives_;  // by rank
  std::vector<std::string> broken_;    // by rank: why its pipes can no longer be read in order, if they cannot
  size_t pending_ = 0;                 // transfers posted and not complete
};

}  // namespace pyallreduce
