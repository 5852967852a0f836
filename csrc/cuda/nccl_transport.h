// Device memory between ranks with ncclSend/ncclRecv, on the caller's CUDA
// stream. NCCL runs a rank's transfers as groups (ncclGroupStart/End): what
// was posted since the last wait is issued as one group when any of it is
// waited for, and wait() returns without waiting for the GPU: later work on
// the stream runs after the group. Algorithms keep to the group rules of
// transport.h, and max_receive_window() is 1 so pipelines run in lockstep.
#pragma once

#include <memory>
#include <vector>

#include "../transport/transport.h"
#include "device_memory.h"
#include "nccl_library.h"

namespace pyallreduce::cuda {

class NcclTransport final : public Transport {
 public:
  // Collective over `host`'s ranks: rank 0 makes the NCCL unique id and
  // sends it to the others over `host`, then every rank joins the NCCL
  // communicator on its device. Throws TransportError on every rank if NCCL
  // fails to load on any of them.
  static std::unique_ptr<NcclTransport> join(Transport& host, const StreamOrder& order);
  NcclTransport(const NcclLibrary& nccl, const StreamOrder& order, const ncclUniqueId& id, int rank,
                const HostLayout& layout);
  ~NcclTransport() override;
  NcclTransport(const NcclTransport&) = delete;
  NcclTransport& operator=(const NcclTransport&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  size_t max_receive_window() const override { return 1; }
  RequestPtr isend(int peer, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, void* data, size_t bytes) override;

  struct Transfer {
    bool is_send;
    int peer;
    const void* send_data;
    void* recv_data;
    size_t bytes;
    bool issued = false;
  };
  // Issues every pending transfer as one group on the stream.
  void issue_pending_group();
  // Throws TransportError if NCCL has reported an asynchronous error (a peer
  // gone, a network failure) on this communicator.
  void check_async_error() const;
  // Tears the NCCL communicator down without waiting for its work (which
  // may never finish); every later transfer throws.
  void abort();
  // Drops a transfer that was never issued (its request is being destroyed
  // while its rank unwinds from an error).
  void withdraw(const std::shared_ptr<Transfer>& transfer);

 private:
  RequestPtr post(std::shared_ptr<Transfer> transfer);
  const NcclLibrary& nccl_;
  const StreamOrder& order_;
  ncclComm_t comm_ = nullptr;
  int rank_;
  int size_;
  std::vector<std::shared_ptr<Transfer>> pending_;
};

}  // namespace pyallreduce::cuda
