// MPI point-to-point transport on a private duplicate of a user communicator.
#pragma once

#include <mpi.h>

#include <list>
#include <string>

#include "transport.h"

namespace pyallreduce {

class MpiTransport : public Transport {
 public:
  // Duplicates `comm` (collective over its ranks), so that pyallreduce's
  // messages never match the application's. Transfers larger than
  // `max_message_bytes` (at most INT_MAX) are split into several messages.
  MpiTransport(MPI_Comm comm, size_t max_message_bytes);
  ~MpiTransport() override;
  MpiTransport(const MpiTransport&) = delete;
  MpiTransport& operator=(const MpiTransport&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  RequestPtr isend(int peer, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, void* data, size_t bytes) override;
  void post_notice(const Notice& notice) override;

  // The MPI library's own description, e.g. "MPICH Version: 5.0.2 ...".
  static std::string library_version();

 protected:
  std::optional<Notice> receive_notice() override;

 private:
  // A notice's bytes stay alive until its send completes.
  struct NoticeSend {
    std::string bytes;
    MPI_Request request = MPI_REQUEST_NULL;
  };
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::list<NoticeSend> notice_sends_;
  int rank_ = 0;
  int size_ = 0;
  size_t max_message_bytes_;
};

// Throws TransportError naming `what` and MPI's message unless rc is MPI_SUCCESS.
void check_mpi(int rc, const char* what);

}  // namespace pyallreduce
