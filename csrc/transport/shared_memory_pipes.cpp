#include "shared_memory_pipes.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <thread>

#include "mpi_transport.h"

namespace pyallreduce {

namespace {

// The counters sit on cache lines of their own, so that the sender's writes
// of `written` and the receiver's of `read` do not contend for one line.
struct PipeCounters {
  alignas(64) std::atomic<uint64_t> written;
  alignas(64) std::atomic<uint64_t> read;
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "pipe counters must be lock-free to be shared");
constexpr size_t kHeaderBytes = sizeof(uint64_t);  // a message's length, ahead of its bytes
constexpr size_t kNameBytes = 64;

std::string errno_text(const char* what, const std::string& name) {
  return std::string(what) + "(" + name + "): " + std::strerror(errno);
}

// Creates and maps this rank's segment: `bytes` of zeros, room reserved in
// the shared-memory file system up front (posix_fallocate), so that a full
// /dev/shm fails here instead of as a SIGBUS on first touch.
void* create_segment(const std::string& name, size_t bytes, std::string* why_not) {
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    *why_not = errno_text("shm_open", name);
    return nullptr;
  }
  void* base = MAP_FAILED;
  const int reserved = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (reserved != 0) {
    errno = reserved;
    *why_not = errno_text("posix_fallocate", name);
  } else {
    base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) *why_not = errno_text("mmap", name);
  }
  close(fd);
  if (base == MAP_FAILED) {
    shm_unlink(name.c_str());
    return nullptr;
  }
  return base;
}

void* map_segment(const std::string& name, size_t bytes, std::string* why_not) {
  const int fd = shm_open(name.c_str(), O_RDWR, 0600);
  if (fd < 0) {
    *why_not = errno_text("shm_open", name);
    return nullptr;
  }
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (base == MAP_FAILED) {
    *why_not = errno_text("mmap", name);
    return nullptr;
  }
  return base;
}

}  // namespace

struct SharedMemoryPipes::Pipe {
  PipeCounters* counters;
  unsigned char* ring;
};

class PipeTransfer final : public Request {
 public:
  PipeTransfer(SharedMemoryPipes& pipes, Transport& owner, bool is_send, int peer, unsigned char* data,
               size_t bytes, size_t* received = nullptr)
      : pipes_(pipes), owner_(owner), is_send_(is_send), peer_(peer), data_(data), bytes_(bytes),
        received_(received), header_(is_send ? bytes : 0) {}
  ~PipeTransfer() override { pipes_.forget(this); }

  // Polls the pipes until this transfer is complete, checking between polls
  // for the deadline and for peers' notices (Transport::check_wait). It
  // spins for as long as giving the core away takes (the pipes' yield_cost),
  // then, like MpiRequest's waits, gives the core away after every poll that
  // moved nothing: a peer that answers within the spin is seen without a
  // system call, and a wait that turns out long costs at most twice what
  // yielding from the start would have, while a rank sharing the core
  // (more ranks than cores, or the training thread beside the progress
  // thread) still gets it within one such cost.
  void wait() override {
    PendingWait pending{is_send_, peer_, bytes_};
    const Clock::time_point spin_until = Clock::now() + pipes_.yield_cost_;
    bool spinning = true;
    for (unsigned polls = 1; !done_; ++polls) {
      if (polls % 64 == 0) owner_.check_wait(pending);
      if (pipes_.progress()) continue;
      if (done_) break;
      if (pipes_.between_polls) pipes_.between_polls();
      if (spinning) spinning = Clock::now() < spin_until;
      if (!spinning) std::this_thread::yield();
    }
    if (!error_.empty()) throw TransportError(error_);
  }

  bool test() override {
    if (!done_) pipes_.progress();
    if (!done_) return false;
    if (!error_.empty()) throw TransportError(error_);
    return true;
  }

  // The message's stream is its 8-byte length, then its bytes; `moved_`
  // counts both.
  size_t stream_bytes() const { return kHeaderBytes + bytes_; }

  SharedMemoryPipes& pipes_;
  Transport& owner_;
  bool is_send_;
  int peer_;
  unsigned char* data_;
  size_t bytes_;         // a bounded receive's bound, until its header says the length
  size_t* received_;     // set for a bounded receive: where the length goes
  uint64_t header_;  // the length sent, or as received
  size_t moved_ = 0;
  bool queued_ = true;
  bool done_ = false;
  std::string error_;
};

std::unique_ptr<SharedMemoryPipes> SharedMemoryPipes::create(MPI_Comm comm, const HostLayout& layout,
                                                             size_t capacity, std::string* why_not) {
  if (capacity == 0 || (capacity & (capacity - 1)) != 0) {
    throw InvalidArgument("a shared-memory pipe's capacity must be a power of two, not " + std::to_string(capacity));
  }
  int rank = 0;
  check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  std::unique_ptr<SharedMemoryPipes> pipes(new SharedMemoryPipes(rank, capacity, layout));
  const auto& host = layout.ranks_on(layout.host_of(rank));
  const size_t segment_bytes = pipes->pipe_stride_ * host.size();

  // The host's ranks, in the layout's order (MPI_Comm_split_type keyed by
  // rank orders them alike), name their segments to each other.
  MPI_Comm host_comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &host_comm), "MPI_Comm_split_type");
  static std::atomic<unsigned> created{0};
  const std::string mine = "/pyallreduce-" + std::to_string(getpid()) + "-" + std::to_string(created++);
  std::string failure;
  const int local = layout.local_index(rank);
  void* own = host.size() > 1 ? create_segment(mine, segment_bytes, &failure) : nullptr;
  if (own != nullptr) {
    pipes->segments_[static_cast<size_t>(local)] = {own, segment_bytes};
    // The counters start at zero (a new segment is zeros) and are made
    // atomics in place before any peer maps the segment.
    for (size_t sender = 0; sender < host.size(); ++sender) {
      new (static_cast<unsigned char*>(own) + sender * pipes->pipe_stride_) PipeCounters{};
    }
  }
  std::vector<char> names(kNameBytes * host.size(), '\0');
  char name[kNameBytes] = {};
  std::strncpy(name, mine.c_str(), kNameBytes - 1);
  int rc = MPI_Allgather(name, kNameBytes, MPI_CHAR, names.data(), kNameBytes, MPI_CHAR, host_comm);
  for (size_t i = 0; rc == MPI_SUCCESS && failure.empty() && i < host.size(); ++i) {
    if (static_cast<int>(i) == local) continue;
    void* base = map_segment(std::string(&names[i * kNameBytes]), segment_bytes, &failure);
    if (base != nullptr) pipes->segments_[i] = {base, segment_bytes};
  }
  // Every rank of the host has mapped every segment (or one failed): the
  // names can go, and the memory lives until the last rank unmaps it.
  int ok = rc == MPI_SUCCESS && failure.empty() && host.size() > 1 ? 1 : 0;
  int all_ok = 0;
  const int agreed = MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, host_comm);
  if (own != nullptr) shm_unlink(mine.c_str());
  MPI_Comm_free(&host_comm);
  check_mpi(rc, "MPI_Allgather (shared-memory segment names)");
  check_mpi(agreed, "MPI_Allreduce (shared-memory segments mapped)");
  if (all_ok == 0) {
    *why_not = host.size() == 1 ? "no other rank on this host"
                                : (failure.empty() ? "another rank of this host could not map them" : failure);
    return nullptr;
  }
  return pipes;
}

namespace {

// What giving the core away costs this process where nothing else waits
// for it: the median of a few timed yields.
Clock::duration measured_yield_cost() {
  std::vector<Clock::duration> times;
  for (int i = 0; i < 31; ++i) {
    const Clock::time_point start = Clock::now();
    std::this_thread::yield();
    times.push_back(Clock::now() - start);
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

}  // namespace

SharedMemoryPipes::SharedMemoryPipes(int rank, size_t capacity, const HostLayout& layout)
    : yield_cost_(measured_yield_cost()),
      rank_(rank),
      capacity_(capacity),
      pipe_stride_(sizeof(PipeCounters) + capacity),
      local_index_(static_cast<size_t>(layout.size()), -1),
      segments_(layout.ranks_on(layout.host_of(rank)).size()),
      sends_(static_cast<size_t>(layout.size())),
      receives_(static_cast<size_t>(layout.size())),
      broken_(static_cast<size_t>(layout.size())) {
  for (int peer : layout.ranks_on(layout.host_of(rank))) {
    local_index_[static_cast<size_t>(peer)] = layout.local_index(peer);
    if (peer != rank) host_peers_.push_back(peer);
  }
}

SharedMemoryPipes::~SharedMemoryPipes() {
  for (const Mapping& segment : segments_) {
    if (segment.base != nullptr) munmap(segment.base, segment.bytes);
  }
}

bool SharedMemoryPipes::reaches(int peer) const {
  return peer != rank_ && peer >= 0 && peer < static_cast<int>(local_index_.size()) &&
         local_index_[static_cast<size_t>(peer)] >= 0;
}

// The pipe from `sender` to `receiver` is slot local_index(sender) of the
// receiver's segment. Example: on a host of ranks {4, 5, 6}, the pipe from 6
// to 5 starts 2 * pipe_stride_ bytes into rank 5's segment (local index 1).
SharedMemoryPipes::Pipe SharedMemoryPipes::pipe(int receiver, int sender) {
  auto* slot = static_cast<unsigned char*>(segments_[static_cast<size_t>(local_index_[static_cast<size_t>(receiver)])].base) +
               static_cast<size_t>(local_index_[static_cast<size_t>(sender)]) * pipe_stride_;
  return {reinterpret_cast<PipeCounters*>(slot), slot + sizeof(PipeCounters)};
}

RequestPtr SharedMemoryPipes::isend(Transport& owner, int peer, const void* data, size_t bytes) {
  return post(std::make_unique<PipeTransfer>(*this, owner, true, peer,
                                             static_cast<unsigned char*>(const_cast<void*>(data)), bytes));
}

RequestPtr SharedMemoryPipes::irecv(Transport& owner, int peer, void* data, size_t bytes) {
  return post(std::make_unique<PipeTransfer>(*this, owner, false, peer, static_cast<unsigned char*>(data), bytes));
}

RequestPtr SharedMemoryPipes::irecv_bounded(Transport& owner, int peer, void* data, size_t bound, size_t* received) {
  return post(std::make_unique<PipeTransfer>(*this, owner, false, peer, static_cast<unsigned char*>(data), bound,
                                             received));
}

// A transfer posted behind none moves what it can at once: a small send is
// then complete when posted, and a receive whose message is there already
// has it.
RequestPtr SharedMemoryPipes::post(std::unique_ptr<PipeTransfer> transfer) {
  auto& queue = (transfer->is_send_ ? sends_ : receives_)[static_cast<size_t>(transfer->peer_)];
  queue.push_back(transfer.get());
  ++pending_;
  if (queue.size() == 1) advance_queue(queue);
  return transfer;
}

bool SharedMemoryPipes::progress() {
  bool moved = false;
  for (int peer : host_peers_) {
    moved |= advance_queue(sends_[static_cast<size_t>(peer)]);
    moved |= advance_queue(receives_[static_cast<size_t>(peer)]);
  }
  return moved;
}

// Advances the transfers of one queue in order while each completes.
bool SharedMemoryPipes::advance_queue(std::deque<PipeTransfer*>& queue) {
  bool moved = false;
  while (!queue.empty()) {
    PipeTransfer& front = *queue.front();
    moved |= advance(front);
    if (!front.done_) break;
    front.queued_ = false;
    queue.pop_front();
    --pending_;
  }
  return moved;
}

// Moves what the pipe allows of `t`'s stream: bytes [moved_, moved_ + n)
// of its header and data, to or from ring offsets that wrap at the
// capacity. Example: capacity 4096, a send of 100 bytes at written = 4090:
// the header's 8 bytes land at offsets 4090..4095 and 0..1, the data at
// 2..101.
bool SharedMemoryPipes::advance(PipeTransfer& t) {
  if (!broken_[static_cast<size_t>(t.peer_)].empty()) {
    t.error_ = broken_[static_cast<size_t>(t.peer_)];
    t.done_ = true;
    return false;
  }
  const Pipe p = t.is_send_ ? pipe(t.peer_, rank_) : pipe(rank_, t.peer_);
  std::atomic<uint64_t>& mine = t.is_send_ ? p.counters->written : p.counters->read;
  std::atomic<uint64_t>& theirs = t.is_send_ ? p.counters->read : p.counters->written;
  const uint64_t position = mine.load(std::memory_order_relaxed);  // only this rank advances it
  const uint64_t other = theirs.load(std::memory_order_acquire);
  const size_t room = t.is_send_ ? capacity_ - static_cast<size_t>(position - other) : static_cast<size_t>(other - position);
  // A receive takes the header alone first, to check it before any data.
  const size_t wanted = !t.is_send_ && t.moved_ < kHeaderBytes ? kHeaderBytes - t.moved_ : t.stream_bytes() - t.moved_;
  const size_t n = std::min(room, wanted);
  if (n == 0) return false;
  auto* header = reinterpret_cast<unsigned char*>(&t.header_);
  for (size_t done = 0; done < n;) {
    const size_t at = t.moved_ + done;
    unsigned char* message = at < kHeaderBytes ? header + at : t.data_ + (at - kHeaderBytes);
    const size_t message_left = at < kHeaderBytes ? kHeaderBytes - at : t.stream_bytes() - at;
    const size_t offset = static_cast<size_t>(position + done) & (capacity_ - 1);
    const size_t length = std::min({n - done, message_left, capacity_ - offset});
    if (t.is_send_) {
      std::memcpy(p.ring + offset, message, length);
    } else {
      std::memcpy(message, p.ring + offset, length);
    }
    done += length;
  }
  mine.store(position + n, std::memory_order_release);
  t.moved_ += n;
  if (!t.is_send_ && t.moved_ == kHeaderBytes) {
    const bool bounded = t.received_ != nullptr;
    if (bounded ? t.header_ > t.bytes_ : t.header_ != t.bytes_) {
      broken_[static_cast<size_t>(t.peer_)] =
          "message size mismatch: received " + std::to_string(t.header_) + " bytes from rank " +
          std::to_string(t.peer_) + " where " + (bounded ? "at most " : "") + std::to_string(t.bytes_) +
          " were expected; the ranks are not running the same call";
      t.error_ = broken_[static_cast<size_t>(t.peer_)];
      t.done_ = true;
      return true;
    }
    if (bounded) *t.received_ = t.bytes_ = static_cast<size_t>(t.header_);
  }
  t.done_ = t.moved_ == t.stream_bytes();
  return true;
}

// A transfer dropped before it completed (its call is unwinding from an
// error) leaves its queue. Half a message in a pipe leaves the pipe out of
// step with its peer, so later transfers with that peer fail at once.
void SharedMemoryPipes::forget(PipeTransfer* transfer) {
  if (!transfer->queued_) return;
  auto& queue = (transfer->is_send_ ? sends_ : receives_)[static_cast<size_t>(transfer->peer_)];
  queue.erase(std::find(queue.begin(), queue.end(), transfer));
  --pending_;
  if (transfer->moved_ > 0 && broken_[static_cast<size_t>(transfer->peer_)].empty()) {
    broken_[static_cast<size_t>(transfer->peer_)] =
        "an earlier transfer with rank " + std::to_string(transfer->peer_) +
        " was abandoned half done; the shared-memory pipes with it are out of step";
  }
}

}  // namespace pyallreduce
