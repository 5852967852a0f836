// MPI point-to-point transport on a private duplicate of a user communicator,
// with small messages to the ranks of the same host sent through
// shared-memory pipes instead (shared_memory_pipes.h).
#pragma once

#include <mpi.h>

#include <list>
#include <memory>
#include <string>

#include "shared_memory_pipes.h"
#include "transport.h"

namespace pyallreduce {

class MpiTransport : public Transport {
 public:
  // Duplicates `comm` (collective over its ranks), so that pyallreduce's
  // messages never match the application's. Transfers larger than
  // `max_message_bytes` (at most INT_MAX) are split into several messages.
  // Transfers of at most `shared_memory_message_bytes` to a rank of the
  // same host go through shared-memory pipes (0: none do, and none are
  // made); every rank must pass the same value, since sender and receiver
  // each pick the way by the size alone.
  MpiTransport(MPI_Comm comm, size_t max_message_bytes, size_t shared_memory_message_bytes);
  ~MpiTransport() override;
  MpiTransport(const MpiTransport&) = delete;
  MpiTransport& operator=(const MpiTransport&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  RequestPtr isend(int peer, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, void* data, size_t bytes) override;
  RequestPtr isend_bounded(int peer, const void* data, size_t bytes, size_t bound) override;
  RequestPtr irecv_bounded(int peer, void* data, size_t bound, size_t* received) override;
  void post_notice(const Notice& notice) override;

  // The largest transfer the pipes carry; 0 where there are none (turned
  // off, or this rank alone on its host, or they could not be made:
  // shared_memory_absent() says why).
  size_t shared_memory_message_bytes() const { return pipes_ ? shared_memory_message_bytes_ : 0; }
  // Collective in effect: every rank must set the same value between calls.
  // Changes nothing where there are no pipes.
  void set_shared_memory_message_bytes(size_t bytes) { shared_memory_message_bytes_ = bytes; }
  const std::string& shared_memory_absent() const { return shared_memory_absent_; }

  // For MpiRequest's waits: moves the pipes' transfers too, so that none
  // waits on a rank that is itself waiting for an MPI message.
  void progress_pipes() {
    if (pipes_ && pipes_->busy()) pipes_->progress();
  }
  // MPI requests posted and not yet complete, for the pipes' waits.
  size_t mpi_in_flight = 0;

  // The MPI library's own description, e.g. "MPICH Version: 5.0.2 ...".
  static std::string library_version();

 protected:
  std::optional<Notice> receive_notice() override;

 private:
  // Whether a transfer of `bytes` to or from `peer` goes through the pipes.
  bool through_pipes(int peer, size_t bytes) const;
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
  size_t shared_memory_message_bytes_;
  std::unique_ptr<SharedMemoryPipes> pipes_;
  std::string shared_memory_absent_;
};

// Throws TransportError naming `what` and MPI's message unless rc is MPI_SUCCESS.
void check_mpi(int rc, const char* what);

}  // namespace pyallreduce
