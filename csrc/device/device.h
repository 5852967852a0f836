// What a communicator needs to reduce buffers that live on a GPU. The
// pyallreduce._cuda module implements it and hands it to _C when imported;
// the core never includes a CUDA header, so a CPU-only build is the same core.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "../algorithms/algorithm.h"
#include "../reduce/reduction.h"
#include "../transport/transport.h"
#include "../types.h"

namespace pyallreduce {

// How device buffers travel between ranks. Values are part of the argument
// check's wire format (0 stands for host buffers).
enum class DeviceTransportKind : int {
  kMpi = 1,   // MPI point-to-point, staged through pinned host memory
  kNccl = 2,  // ncclSend/ncclRecv in groups, on the caller's stream
};
const char* device_transport_name(DeviceTransportKind kind);
DeviceTransportKind device_transport_from_name(const std::string& name);  // throws InvalidArgument

// Where a call's buffers live.
struct Placement {
  int device = -1;        // CUDA device ordinal; -1 for host memory
  uintptr_t stream = 0;   // the cudaStream_t the call is ordered on
  bool on_device() const { return device >= 0; }
};

// One communicator's resources on one GPU: a transport that moves device
// memory in stream order, scratch memory there, and reductions by kernels.
// Every operation is enqueued on the current stream; the host waits only
// where a transport must (staging through host memory).
class DeviceContext {
 public:
  virtual ~DeviceContext() = default;
  virtual int device() const = 0;
  virtual DeviceTransportKind kind() const = 0;
  // Starts a call ordered on `stream`: after everything the previous call
  // enqueued, on whatever stream that was. The call's host waits end by
  // `deadline`; work it leaves running on the GPU is checked at the next
  // call, which throws TimeoutError (tearing the transport down) if that work
  // is still not done after its deadline, and TransportError if the
  // transport has reported an asynchronous error.
  virtual void begin_call(uintptr_t stream, Clock::time_point deadline) = 0;
  // Ends the call begun last (also when it failed): marks where its work ends
  // on its stream, which may be destroyed before the next call.
  virtual void end_call() noexcept = 0;
  virtual Transport& transport() = 0;
  virtual MemorySpace& workspace() = 0;  // the algorithms' scratch
  virtual MemorySpace& fusion() = 0;     // allreduce_coalesced's packed buckets
  virtual std::unique_ptr<Combiner> reduction(DType dtype, ReduceOp op) const = 0;
};

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  // Whether `kind` can be used in this process (NCCL: libnccl.so.2 loads).
  virtual bool available(DeviceTransportKind kind) const = 0;
  // The device whose memory holds `pointer`. Throws InvalidArgument for host memory.
  virtual int device_of(const void* pointer) const = 0;
  // Collective over `host`'s ranks, which all call it with the same kind: a
  // context on `device`. NCCL's unique id is broadcast over `host`. Throws
  // TransportError on every rank if any rank fails to set up.
  virtual std::unique_ptr<DeviceContext> create_context(Transport& host, int device, DeviceTransportKind kind) = 0;
};

// The backend registered by pyallreduce._cuda, or null before it is imported
// (or in a build without CUDA).
DeviceBackend* device_backend();
void set_device_backend(DeviceBackend* backend);

}  // namespace pyallreduce
