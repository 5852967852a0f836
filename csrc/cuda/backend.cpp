#include "backend.h"

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "check.h"
#include "device_memory.h"
#include "nccl_library.h"
#include "nccl_transport.h"
#include "reduction_kernels.cuh"
#include "staged_transport.h"

namespace pyallreduce::cuda {
namespace {

class KernelReduction final : public Combiner {
 public:
  KernelReduction(DType dtype, ReduceOp op, const StreamOrder& order) : dtype_(dtype), op_(op), order_(order) {}
  void combine(const void* left, const void* right, void* out, size_t count) const override {
    launch_combine(dtype_, op_, left, right, out, count, order_.stream);
  }
  void finalize(void* data, size_t count, int world_size) const override {
    if (op_ == ReduceOp::kAvg && world_size > 1) launch_divide(dtype_, data, count, world_size, order_.stream);
  }

 private:
  DType dtype_;
  ReduceOp op_;
  const StreamOrder& order_;
};

class CudaDeviceContext final : public DeviceContext {
 public:
  CudaDeviceContext(Transport& host, int device, DeviceTransportKind kind)
      : kind_(kind), workspace_(order_), fusion_(order_) {
    order_.device = device;
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    check_cuda(cudaEventCreateWithFlags(&previous_call_done_, cudaEventDisableTiming), "cudaEventCreate");
    if (kind == DeviceTransportKind::kNccl) {
      auto nccl = NcclTransport::join(host, order_);
      nccl_ = nccl.get();
      transport_ = std::move(nccl);
    } else {
      auto staged = std::make_unique<StagedTransport>(host, order_);
      staged_ = staged.get();
      transport_ = std::move(staged);
    }
  }

  ~CudaDeviceContext() override {
    cudaSetDevice(order_.device);
    transport_.reset();
    cudaEventDestroy(previous_call_done_);
  }

  int device() const override { return order_.device; }
  DeviceTransportKind kind() const override { return kind_; }

  void begin_call(uintptr_t stream, Clock::time_point deadline) override {
    check_cuda(cudaSetDevice(order_.device), "cudaSetDevice");
    if (nccl_ != nullptr) check_previous_nccl_call();
    call_deadline_ = deadline;
    const auto next = reinterpret_cast<cudaStream_t>(stream);
    if (next != order_.stream) {
      // The scratch memory and pending copies belong to the previous call's
      // stream: the new stream starts after all of it.
      check_cuda(cudaStreamWaitEvent(next, previous_call_done_, 0), "cudaStreamWaitEvent");
      order_.stream = next;
    }
    if (staged_ != nullptr) staged_->begin_call();
  }

  void end_call() noexcept override {
    cudaEventRecord(previous_call_done_, order_.stream);
    previous_deadline_ = call_deadline_;
  }

  Transport& transport() override { return *transport_; }
  MemorySpace& workspace() override { return workspace_; }
  MemorySpace& fusion() override { return fusion_; }
  std::unique_ptr<Combiner> reduction(DType dtype, ReduceOp op) const override {
    return std::make_unique<KernelReduction>(dtype, op, order_);
  }

 private:
  StreamOrder order_;  // first: the members below keep a reference to it
  DeviceTransportKind kind_;
  DeviceMemory workspace_;
  DeviceMemory fusion_;
  // Over NCCL the host never waits for the GPU, so a transfer whose peer
  // never comes would hold the stream forever unseen: each call first looks
  // at the previous one's work (without waiting for it) and at NCCL's
  // asynchronous error state.
  void check_previous_nccl_call() {
    nccl_->check_async_error();
    const cudaError_t state = cudaEventQuery(previous_call_done_);
    if (state == cudaSuccess) return;
    if (state != cudaErrorNotReady) check_cuda(state, "cudaEventQuery");
    if (Clock::now() < previous_deadline_) return;
    nccl_->abort();
    throw TimeoutError("the previous call's NCCL transfers had not finished on the GPU by its deadline; the NCCL "
                       "communicator was aborted",
                       -1);
  }

  cudaEvent_t previous_call_done_ = nullptr;  // recorded at the end of every call
  Clock::time_point call_deadline_ = Clock::time_point::max();
  Clock::time_point previous_deadline_ = Clock::time_point::max();  // of the call previous_call_done_ ends
  std::unique_ptr<Transport> transport_;
  StagedTransport* staged_ = nullptr;  // transport_, when it stages through host memory
  NcclTransport* nccl_ = nullptr;      // transport_, when it is NCCL
};

class CudaBackend final : public DeviceBackend {
 public:
  bool available(DeviceTransportKind kind) const override {
    return kind == DeviceTransportKind::kMpi || nccl_library() != nullptr;
  }

  int device_of(const void* pointer) const override {
    cudaPointerAttributes attributes{};
    check_cuda(cudaPointerGetAttributes(&attributes, pointer), "cudaPointerGetAttributes");
    if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged) {
      throw InvalidArgument("the __cuda_array_interface__ pointer is not device memory");
    }
    return attributes.device;
  }

  std::unique_ptr<DeviceContext> create_context(Transport& host, int device, DeviceTransportKind kind) override {
    // Every rank checks its device first, so that one rank's bad device makes
    // all raise instead of leaving the others waiting in the first transfer.
    std::string problem;
    int devices = 0;
    if (const cudaError_t rc = cudaGetDeviceCount(&devices); rc != cudaSuccess) {
      problem = std::string("no usable CUDA driver or device: ") + cudaGetErrorString(rc);
    } else if (device >= devices) {
      problem = "device " + std::to_string(device) + " of " + std::to_string(devices);
    } else if (const cudaError_t set = cudaSetDevice(device); set != cudaSuccess) {
      problem = std::string("cudaSetDevice: ") + cudaGetErrorString(set);
    }
    const int failing = first_failing_rank(host, problem.empty());
    if (failing >= 0) {
      throw TransportError("setting up CUDA failed on rank " + std::to_string(failing) +
                           (problem.empty() ? std::string() : " (here: " + problem + ")"));
    }
    return std::make_unique<CudaDeviceContext>(host, device, kind);
  }
};

}  // namespace

DeviceBackend& cuda_backend() {
  static CudaBackend backend;
  return backend;
}

}  // namespace pyallreduce::cuda
