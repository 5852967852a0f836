#include "mpi_transport.h"

#include <algorithm>
#include <climits>
#include <optional>
#include <thread>
#include <vector>

#include "../types.h"

namespace pyallreduce {

namespace {

// Data travels with this tag, notices with kNoticeTag: a notice never matches
// a data receive.
constexpr int kDataTag = 0;
constexpr int kNoticeTag = 1;

// How long a dropped request's cancellation may take before MPI is left to
// finish it alone (see ~MpiRequest).
constexpr auto kCancelGrace = std::chrono::seconds(1);

// Each shared-memory pipe's ring. Messages longer than it stream through
// it; it bounds the memory the pipes take: a rank maps one pipe per rank of
// its host into each of their segments.
constexpr size_t kPipeCapacity = size_t{1} << 16;

std::string mpi_error_text(int code) {
  char message[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, message, &length);
  return std::string(message, length);
}

// One logical transfer: a single MPI request, or several when the transfer
// was split into pieces of at most max_message_bytes. A bounded receive
// (`received` set) is one request of `bytes`, the bound.
class MpiRequest : public Request {
 public:
  MpiRequest(MpiTransport& transport, bool is_send, int peer, size_t bytes, size_t max_piece,
             size_t* received = nullptr)
      : transport_(transport), is_send_(is_send), peer_(peer), bytes_(bytes), max_piece_(max_piece),
        received_(received), requests_(piece_count(bytes, max_piece), MPI_REQUEST_NULL) {
    ++transport_.mpi_in_flight;
  }
  MPI_Request* slot(size_t i) { return &requests_[i]; }

  // A request dropped before it completed (its call is unwinding from an
  // error) is cancelled, so that MPI writes into no buffer the call is about
  // to release; a receive that had already matched is waited out. What
  // cannot be cancelled in time (a send being read by its peer) is handed to
  // MPI, which only reads its buffer.
  ~MpiRequest() override {
    if (in_flight_) --transport_.mpi_in_flight;
    if (std::all_of(requests_.begin(), requests_.end(), [](MPI_Request r) { return r == MPI_REQUEST_NULL; })) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    for (MPI_Request& r : requests_) {
      if (r != MPI_REQUEST_NULL) MPI_Cancel(&r);
    }
    const Clock::time_point give_up = Clock::now() + kCancelGrace;
    int done = 0;
    while (MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE) ==
               MPI_SUCCESS &&
           !done && Clock::now() < give_up) {
    }
    for (MPI_Request& r : requests_) {
      if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    }
  }

  // Polls until every piece is done, checking between polls for the
  // deadline and for peers' notices (Transport::check_wait).
  void wait() override {
    PendingWait pending{is_send_, peer_, bytes_};
    for (unsigned polls = 1; !poll(); ++polls) {
      if (polls % 64 == 0) transport_.check_wait(pending);
      // Every unanswered poll gives the core away once, so that whatever
      // shares it (a peer rank where ranks outnumber cores, the training
      // thread beside the progress thread) can make the progress waited
      // for. Where nothing else is runnable the yield returns at once. A
      // spin of a thousand polls before yielding (MPICH's default for its
      // own waits) made each step of a call wait out the peer's time slice
      // with more ranks than cores; bench/RESULTS.md has the measurements.
      std::this_thread::yield();
      transport_.progress_pipes();
    }
  }

  bool test() override {
    if (poll()) return true;
    transport_.progress_pipes();
    return false;
  }

 private:
  // One MPI_Testall of the pieces; once they are done, checks them (see
  // finish) and stays done.
  bool poll() {
    if (complete_) return true;
    MPI_Status one_status;
    std::vector<MPI_Status> statuses(requests_.size() > 1 ? requests_.size() : 0);
    MPI_Status* status = requests_.size() > 1 ? statuses.data() : &one_status;
    int done = 0;
    const int rc = MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, status);
    if (rc == MPI_SUCCESS && !done) return false;
    complete_ = true;
    finish(rc, status);
    return true;
  }

  // A receive checks that each piece got exactly the bytes expected: a
  // shorter message means the ranks disagree on the call, and is never read
  // as data. A bounded receive takes any length up to its bound (MPI fails a
  // longer one with MPI_ERR_TRUNCATE) and reports it.
  void finish(int rc, MPI_Status* status) {
    if (in_flight_) --transport_.mpi_in_flight;
    in_flight_ = false;
    for (size_t i = 0; i < requests_.size(); ++i) {
      const int code = rc == MPI_ERR_IN_STATUS ? status[i].MPI_ERROR : rc;
      if (rc != MPI_SUCCESS && code != MPI_SUCCESS && code != MPI_ERR_PENDING) fail(code);
      if (is_send_) continue;
      int received = 0;
      MPI_Get_count(&status[i], MPI_BYTE, &received);
      if (received_ != nullptr) {
        *received_ = static_cast<size_t>(received);
        continue;
      }
      const size_t expected = piece_length(bytes_, max_piece_, i);
      if (static_cast<size_t>(received) != expected) {
        throw TransportError("message size mismatch: received " + std::to_string(received) + " bytes from rank " +
                             std::to_string(peer_) + " where " + std::to_string(expected) +
                             " were expected; the ranks are not running the same call");
      }
    }
  }

  [[noreturn]] void fail(int code) const {
    int error_class = code;
    MPI_Error_class(code, &error_class);
    const std::string what = is_send_ ? "sending " + std::to_string(bytes_) + " bytes to rank " + std::to_string(peer_)
                                      : "receiving " + std::to_string(bytes_) + " bytes from rank " +
                                            std::to_string(peer_);
    if (error_class == MPI_ERR_TRUNCATE) {
      throw TransportError("message size mismatch " + what + ": rank " + std::to_string(peer_) +
                           " sent more; the ranks are not running the same call");
    }
    throw TransportError("MPI failed " + what + ": " + mpi_error_text(code));
  }

  MpiTransport& transport_;
  bool is_send_;
  int peer_;
  size_t bytes_;
  size_t max_piece_;
  size_t* received_;
  std::vector<MPI_Request> requests_;
  bool in_flight_ = true;
  bool complete_ = false;
};

// Posts `bytes` as pieces of at most `max_piece` bytes (see piece_count).
// Example: 5 GiB with max_piece = 2^31 - 1 gives pieces at offsets 0,
// 2^31 - 1 and 2^32 - 2, the last 1 GiB + 2 bytes long.
// With `received` (a bounded receive), `bytes` is the bound.
template <class PostPiece>
RequestPtr post_in_pieces(MpiTransport& transport, bool is_send, int peer, size_t bytes, size_t max_piece,
                          PostPiece post_piece, size_t* received = nullptr) {
  auto request = std::make_unique<MpiRequest>(transport, is_send, peer, bytes, max_piece, received);
  for (size_t i = 0; i < piece_count(bytes, max_piece); ++i) {
    post_piece(i * max_piece, static_cast<int>(piece_length(bytes, max_piece, i)), request->slot(i));
  }
  return request;
}

// MPI routines called after MPI_Finalize abort the process (MPICH) or are
// undefined; a call on a communicator that outlived MPI raises instead.
void require_mpi_running() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) throw TransportError("MPI has been finalized; a pyallreduce communicator cannot be used after it");
}

}  // namespace

void check_mpi(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw TransportError(std::string(what) + " failed: " + mpi_error_text(rc));
}

namespace {

// Which ranks of `comm` share memory (MPI_COMM_TYPE_SHARED: a host), each
// host named by its lowest rank. Collective over `comm`.
HostLayout shared_memory_layout(MPI_Comm comm) {
  int rank = 0, size = 0;
  check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  MPI_Comm host = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &host), "MPI_Comm_split_type");
  int lowest = rank;
  const int rc = MPI_Allreduce(&rank, &lowest, 1, MPI_INT, MPI_MIN, host);
  MPI_Comm_free(&host);
  check_mpi(rc, "MPI_Allreduce (the lowest rank of each host)");
  std::vector<int> host_of(static_cast<size_t>(size));
  check_mpi(MPI_Allgather(&lowest, 1, MPI_INT, host_of.data(), 1, MPI_INT, comm), "MPI_Allgather (hosts)");
  return HostLayout(host_of);
}

}  // namespace

MpiTransport::MpiTransport(MPI_Comm comm, size_t max_message_bytes, size_t shared_memory_message_bytes)
    : Transport(shared_memory_layout(comm)),
      max_message_bytes_(max_message_bytes),
      shared_memory_message_bytes_(shared_memory_message_bytes) {
  if (max_message_bytes == 0 || max_message_bytes > static_cast<size_t>(INT_MAX)) {
    throw InvalidArgument("max_message_bytes must be in 1..INT_MAX");
  }
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  // Errors come back as return codes (turned into exceptions) instead of
  // aborting the job.
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  if (shared_memory_message_bytes == 0) {
    shared_memory_absent_ = "turned off";
    return;
  }
  pipes_ = SharedMemoryPipes::create(comm_, layout(), kPipeCapacity, &shared_memory_absent_);
  if (pipes_) {
    pipes_->between_polls = [this] {
      int arrived = 0;  // any MPI call drives MPI's progress; a probe changes nothing
      if (mpi_in_flight > 0) MPI_Iprobe(MPI_ANY_SOURCE, kNoticeTag, comm_, &arrived, MPI_STATUS_IGNORE);
    };
  }
}

MpiTransport::~MpiTransport() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (NoticeSend& send : notice_sends_) {
    int done = 0;
    MPI_Test(&send.request, &done, MPI_STATUS_IGNORE);
    if (!done) {
      MPI_Cancel(&send.request);
      MPI_Request_free(&send.request);
    }
  }
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

bool MpiTransport::through_pipes(int peer, size_t bytes) const {
  return pipes_ && bytes <= shared_memory_message_bytes_ && pipes_->reaches(peer);
}

RequestPtr MpiTransport::isend(int peer, const void* data, size_t bytes) {
  require_mpi_running();
  if (through_pipes(peer, bytes)) return pipes_->isend(*this, peer, data, bytes);
  const char* base = static_cast<const char*>(data);
  return post_in_pieces(*this, true, peer, bytes, max_message_bytes_, [&](size_t offset, int length, MPI_Request* r) {
    check_mpi(MPI_Isend(base + offset, length, MPI_BYTE, peer, kDataTag, comm_, r), "MPI_Isend");
  });
}

RequestPtr MpiTransport::irecv(int peer, void* data, size_t bytes) {
  require_mpi_running();
  if (through_pipes(peer, bytes)) return pipes_->irecv(*this, peer, data, bytes);
  char* base = static_cast<char*>(data);
  return post_in_pieces(*this, false, peer, bytes, max_message_bytes_, [&](size_t offset, int length, MPI_Request* r) {
    check_mpi(MPI_Irecv(base + offset, length, MPI_BYTE, peer, kDataTag, comm_, r), "MPI_Irecv");
  });
}

// A bounded message goes through the pipes wherever they reach its peer,
// whatever its bound (sender and receiver see the same pipes), and through
// MPI as one message elsewhere.
namespace {

// A bounded message's one piece: as long as its bound (at least 1, see piece_count).
size_t one_piece(size_t bound) {
  if (bound > static_cast<size_t>(INT_MAX)) throw InvalidArgument("a bounded message must fit one MPI message");
  return std::max<size_t>(bound, 1);
}

}  // namespace

RequestPtr MpiTransport::isend_bounded(int peer, const void* data, size_t bytes, size_t bound) {
  require_mpi_running();
  if (pipes_ && pipes_->reaches(peer)) return pipes_->isend(*this, peer, data, bytes);
  return post_in_pieces(*this, true, peer, bytes, one_piece(bound), [&](size_t, int length, MPI_Request* r) {
    check_mpi(MPI_Isend(data, length, MPI_BYTE, peer, kDataTag, comm_, r), "MPI_Isend");
  });
}

RequestPtr MpiTransport::irecv_bounded(int peer, void* data, size_t bound, size_t* received) {
  require_mpi_running();
  if (pipes_ && pipes_->reaches(peer)) return pipes_->irecv_bounded(*this, peer, data, bound, received);
  return post_in_pieces(
      *this, false, peer, bound, one_piece(bound),
      [&](size_t, int length, MPI_Request* r) {
        check_mpi(MPI_Irecv(data, length, MPI_BYTE, peer, kDataTag, comm_, r), "MPI_Irecv");
      },
      received);
}

void MpiTransport::post_notice(const Notice& notice) {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  notice_sends_.remove_if([](NoticeSend& send) {
    int done = 0;
    MPI_Test(&send.request, &done, MPI_STATUS_IGNORE);
    return done != 0;
  });
  const std::string bytes = encode_notice(notice);
  for (int peer = 0; peer < size_; ++peer) {
    if (peer == rank_) continue;
    NoticeSend& send = notice_sends_.emplace_back(NoticeSend{bytes});
    MPI_Isend(send.bytes.data(), static_cast<int>(send.bytes.size()), MPI_BYTE, peer, kNoticeTag, comm_,
              &send.request);
  }
}

std::optional<Notice> MpiTransport::receive_notice() {
  int arrived = 0;
  MPI_Message message = MPI_MESSAGE_NULL;
  MPI_Status status;
  if (MPI_Improbe(MPI_ANY_SOURCE, kNoticeTag, comm_, &arrived, &message, &status) != MPI_SUCCESS || !arrived) {
    return std::nullopt;
  }
  int length = 0;
  MPI_Get_count(&status, MPI_BYTE, &length);
  std::string bytes(static_cast<size_t>(length), '\0');
  check_mpi(MPI_Mrecv(bytes.data(), length, MPI_BYTE, &message, MPI_STATUS_IGNORE), "MPI_Mrecv");
  return decode_notice(bytes);
}

std::string MpiTransport::library_version() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(version, &length);
  return std::string(version, length);
}

}  // namespace pyallreduce
