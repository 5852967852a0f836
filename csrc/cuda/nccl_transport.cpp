#include "nccl_transport.h"

#include <string>

#include "check.h"

namespace pyallreduce::cuda {
namespace {

class NcclRequest final : public Request {
 public:
  NcclRequest(NcclTransport& transport, std::shared_ptr<NcclTransport::Transfer> transfer)
      : transport_(transport), transfer_(std::move(transfer)) {}
  ~NcclRequest() override {
    if (!transfer_->issued) transport_.withdraw(transfer_);
  }
  // Issues the group holding this transfer if it is not out yet; the stream,
  // not the host, waits for it.
  void wait() override {
    if (!transfer_->issued) transport_.issue_pending_group();
  }

 private:
  NcclTransport& transport_;
  std::shared_ptr<NcclTransport::Transfer> transfer_;
};

}  // namespace

std::unique_ptr<NcclTransport> NcclTransport::join(Transport& host, const StreamOrder& order) {
  // Every rank says whether it loaded NCCL (rank 0 also whether it made the
  // id) before anyone enters ncclCommInitRank, so a rank without NCCL makes
  // every rank raise instead of leaving the others waiting there.
  std::string problem;
  const NcclLibrary* nccl = nccl_library(&problem);
  ncclUniqueId id{};
  if (nccl != nullptr && host.rank() == 0) {
    const ncclResult_t rc = nccl->get_unique_id(&id);
    if (rc != kNcclSuccess) problem = std::string("ncclGetUniqueId failed: ") + nccl->get_error_string(rc);
  }
  const int failing = first_failing_rank(host, nccl != nullptr && problem.empty());
  if (failing >= 0) {
    throw TransportError("setting up NCCL failed on rank " + std::to_string(failing) +
                         (problem.empty() ? std::string() : " (here: " + problem + ")") +
                         "; install nvidia-nccl-cu12/cu13, set PYALLREDUCE_NCCL_LIBRARY, or use "
                         "PYALLREDUCE_CUDA_TRANSPORT=mpi");
  }
  broadcast_from_rank0(host, &id, sizeof id);
  return std::make_unique<NcclTransport>(*nccl, order, id, host.rank(), host.layout());
}

NcclTransport::NcclTransport(const NcclLibrary& nccl, const StreamOrder& order, const ncclUniqueId& id, int rank,
                             const HostLayout& layout)
    : Transport(layout), nccl_(nccl), order_(order), rank_(rank), size_(layout.size()) {
  check_cuda(cudaSetDevice(order_.device), "cudaSetDevice");
  check_nccl(nccl_, nccl_.comm_init_rank(&comm_, size_, id, rank_),
             "ncclCommInitRank (NCCL needs a GPU of its own for every rank: ranks sharing one GPU must use "
             "PYALLREDUCE_CUDA_TRANSPORT=mpi)");
}

NcclTransport::~NcclTransport() {
  if (comm_ != nullptr) nccl_.comm_destroy(comm_);
}

RequestPtr NcclTransport::post(std::shared_ptr<Transfer> transfer) {
  if (transfer->peer < 0 || transfer->peer >= size_) {
    throw TransportError("peer rank " + std::to_string(transfer->peer) + " is outside a world of size " +
                         std::to_string(size_));
  }
  pending_.push_back(transfer);
  return std::make_unique<NcclRequest>(*this, std::move(transfer));
}

RequestPtr NcclTransport::isend(int peer, const void* data, size_t bytes) {
  return post(std::make_shared<Transfer>(Transfer{true, peer, data, nullptr, bytes}));
}

RequestPtr NcclTransport::irecv(int peer, void* data, size_t bytes) {
  return post(std::make_shared<Transfer>(Transfer{false, peer, nullptr, data, bytes}));
}

void NcclTransport::issue_pending_group() {
  if (comm_ == nullptr) throw TransportError("the NCCL communicator was aborted after an earlier failure");
  std::vector<std::shared_ptr<Transfer>> group;
  group.swap(pending_);
  for (const auto& transfer : group) transfer->issued = true;
  check_nccl(nccl_, nccl_.group_start(), "ncclGroupStart");
  ncclResult_t rc = kNcclSuccess;
  for (const auto& t : group) {
    if (t->bytes == 0 || rc != kNcclSuccess) continue;  // both sides skip an empty transfer
    rc = t->is_send ? nccl_.send(t->send_data, t->bytes, kNcclInt8, t->peer, comm_, order_.stream)
                    : nccl_.recv(t->recv_data, t->bytes, kNcclInt8, t->peer, comm_, order_.stream);
  }
  const ncclResult_t end = nccl_.group_end();  // always closes the group, even after a failed post
  check_nccl(nccl_, rc, "ncclSend/ncclRecv");
  check_nccl(nccl_, end, "ncclGroupEnd");
  check_async_error();
}

void NcclTransport::check_async_error() const {
  if (comm_ == nullptr) throw TransportError("the NCCL communicator was aborted after an earlier failure");
  // ncclInProgress (7): a nonblocking communicator still initializing; not an error.
  constexpr ncclResult_t kNcclInProgress = 7;
  ncclResult_t state = kNcclSuccess;
  check_nccl(nccl_, nccl_.comm_get_async_error(comm_, &state), "ncclCommGetAsyncError");
  if (state != kNcclSuccess && state != kNcclInProgress) {
    throw TransportError(std::string("NCCL reported an asynchronous error: ") + nccl_.get_error_string(state));
  }
}

void NcclTransport::abort() {
  if (comm_ != nullptr) nccl_.comm_abort(comm_);
  comm_ = nullptr;
}

void NcclTransport::withdraw(const std::shared_ptr<Transfer>& transfer) {
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (*it == transfer) {
      pending_.erase(it);
      return;
    }
  }
}

}  // namespace pyallreduce::cuda
