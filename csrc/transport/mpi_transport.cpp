#include "mpi_transport.h"

#include <algorithm>
#include <climits>
#include <vector>

#include "../types.h"

namespace pyallreduce {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char message[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, message, &length);
  throw TransportError(std::string(what) + " failed: " + std::string(message, length));
}

namespace {

// One logical transfer: a single MPI request, or several when the transfer
// was split into pieces of at most max_message_bytes.
class MpiRequest : public Request {
 public:
  explicit MpiRequest(size_t pieces) : requests_(pieces, MPI_REQUEST_NULL) {}
  MPI_Request* slot(size_t i) { return &requests_[i]; }
  void wait() override {
    check_mpi(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
              "MPI_Waitall");
  }

 private:
  std::vector<MPI_Request> requests_;
};

// Posts `bytes` as pieces of at most `max_piece` bytes (see piece_count).
// Example: 5 GiB with max_piece = 2^31 - 1 gives pieces at offsets 0,
// 2^31 - 1 and 2^32 - 2, the last 1 GiB + 2 bytes long.
template <class PostPiece>
RequestPtr post_in_pieces(size_t bytes, size_t max_piece, PostPiece post_piece) {
  const size_t pieces = piece_count(bytes, max_piece);
  auto request = std::make_unique<MpiRequest>(pieces);
  for (size_t i = 0; i < pieces; ++i) {
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

MpiTransport::MpiTransport(MPI_Comm comm, size_t max_message_bytes)
    : max_message_bytes_(max_message_bytes) {
  if (max_message_bytes == 0 || max_message_bytes > static_cast<size_t>(INT_MAX)) {
    throw InvalidArgument("max_message_bytes must be in 1..INT_MAX");
  }
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  // Errors come back as return codes (turned into exceptions) instead of
  // aborting the job.
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

MpiTransport::~MpiTransport() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

RequestPtr MpiTransport::isend(int peer, const void* data, size_t bytes) {
  require_mpi_running();
  const char* base = static_cast<const char*>(data);
  return post_in_pieces(bytes, max_message_bytes_, [&](size_t offset, int length, MPI_Request* r) {
    check_mpi(MPI_Isend(base + offset, length, MPI_BYTE, peer, 0, comm_, r), "MPI_Isend");
  });
}

RequestPtr MpiTransport::irecv(int peer, void* data, size_t bytes) {
  require_mpi_running();
  char* base = static_cast<char*>(data);
  return post_in_pieces(bytes, max_message_bytes_, [&](size_t offset, int length, MPI_Request* r) {
    check_mpi(MPI_Irecv(base + offset, length, MPI_BYTE, peer, 0, comm_, r), "MPI_Irecv");
  });
}

std::string MpiTransport::library_version() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(version, &length);
  return std::string(version, length);
}

}  // namespace pyallreduce
