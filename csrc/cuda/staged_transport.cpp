#include "staged_transport.h"

#include <algorithm>
#include <memory>

#include "check.h"

namespace pyallreduce::cuda {
namespace {

// A transfer's pieces (see piece_count in transport.h).
size_t pieces_of(size_t bytes) { return piece_count(bytes, StagedTransport::kPieceBytes); }
size_t length_of_piece(size_t bytes, size_t i) { return piece_length(bytes, StagedTransport::kPieceBytes, i); }

// A send's pieces, already handed to the host transport.
class StagedSend final : public Request {
 public:
  explicit StagedSend(std::vector<RequestPtr> pieces) : pieces_(std::move(pieces)) {}
  void wait() override { wait_all(pieces_); }

 private:
  std::vector<RequestPtr> pieces_;
};

class StagedReceive final : public Request {
 public:
  StagedReceive(std::vector<RequestPtr> pieces, const char* staging, char* target, size_t bytes,
                const StreamOrder& order, cudaEvent_t copied)
      : pieces_(std::move(pieces)), staging_(staging), target_(target), bytes_(bytes), order_(order),
        copied_(copied) {}

  void wait() override {
    for (size_t i = 0; i < pieces_.size(); ++i) {
      pieces_[i]->wait();
      const size_t length = length_of_piece(bytes_, i);
      if (length == 0) continue;
      const size_t offset = i * StagedTransport::kPieceBytes;
      check_cuda(cudaMemcpyAsync(target_ + offset, staging_ + offset, length, cudaMemcpyHostToDevice, order_.stream),
                 "cudaMemcpyAsync (host to device)");
    }
    pieces_.clear();
    check_cuda(cudaEventRecord(copied_, order_.stream), "cudaEventRecord");
  }

 private:
  std::vector<RequestPtr> pieces_;
  const char* staging_;
  char* target_;
  size_t bytes_;
  const StreamOrder& order_;
  cudaEvent_t copied_;
};

}  // namespace

StagedTransport::StagedTransport(Transport& host, const StreamOrder& order)
    : Transport(host.layout()), host_(host), order_(order) {
  check_cuda(cudaEventCreateWithFlags(&receives_copied_, cudaEventDisableTiming), "cudaEventCreate");
}

StagedTransport::~StagedTransport() {
  cudaEventSynchronize(receives_copied_);  // no copy may still read the staging memory
  cudaEventDestroy(receives_copied_);
  for (cudaEvent_t event : piece_copied_) cudaEventDestroy(event);
}

void StagedTransport::begin_call() {
  check_cuda(cudaEventSynchronize(receives_copied_), "cudaEventSynchronize");
  staging_.reset();
}

RequestPtr StagedTransport::isend(int peer, const void* data, size_t bytes) {
  const size_t pieces = pieces_of(bytes);
  while (piece_copied_.size() < pieces) {
    cudaEvent_t event = nullptr;
    check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
    piece_copied_.push_back(event);
  }
  char* staging = staging_.allocate(bytes);
  const char* source = static_cast<const char*>(data);
  for (size_t i = 0; i < pieces; ++i) {
    const size_t length = length_of_piece(bytes, i);
    if (length > 0) {
      check_cuda(cudaMemcpyAsync(staging + i * kPieceBytes, source + i * kPieceBytes, length,
                                 cudaMemcpyDeviceToHost, order_.stream),
                 "cudaMemcpyAsync (device to host)");
    }
    check_cuda(cudaEventRecord(piece_copied_[i], order_.stream), "cudaEventRecord");
  }
  std::vector<RequestPtr> sends;
  for (size_t i = 0; i < pieces; ++i) {
    check_cuda(cudaEventSynchronize(piece_copied_[i]), "cudaEventSynchronize");
    sends.push_back(host_.isend(peer, staging + i * kPieceBytes, length_of_piece(bytes, i)));
  }
  return std::make_unique<StagedSend>(std::move(sends));
}

RequestPtr StagedTransport::irecv(int peer, void* data, size_t bytes) {
  char* staging = staging_.allocate(bytes);
  std::vector<RequestPtr> receives;
  for (size_t i = 0; i < pieces_of(bytes); ++i) {
    receives.push_back(host_.irecv(peer, staging + i * kPieceBytes, length_of_piece(bytes, i)));
  }
  return std::make_unique<StagedReceive>(std::move(receives), staging, static_cast<char*>(data), bytes, order_,
                                         receives_copied_);
}

}  // namespace pyallreduce::cuda
