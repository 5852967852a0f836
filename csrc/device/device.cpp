#include "device.h"

#include <atomic>

namespace pyallreduce {
namespace {
// Set once, when _cuda is imported, while other threads' calls (with the GIL
// released) may read it: atomic, so that they see null or the whole backend.
std::atomic<DeviceBackend*> registered_backend{nullptr};
}  // namespace

const char* device_transport_name(DeviceTransportKind kind) {
  switch (kind) {
    case DeviceTransportKind::kMpi: return "mpi";
    case DeviceTransportKind::kNccl: return "nccl";
  }
  return "unknown";
}

DeviceTransportKind device_transport_from_name(const std::string& name) {
  for (DeviceTransportKind kind : {DeviceTransportKind::kMpi, DeviceTransportKind::kNccl}) {
    if (name == device_transport_name(kind)) return kind;
  }
  throw InvalidArgument("device transport must be 'nccl', 'mpi' or None, not '" + name + "'");
}

DeviceBackend* device_backend() { return registered_backend.load(std::memory_order_acquire); }
void set_device_backend(DeviceBackend* backend) { registered_backend.store(backend, std::memory_order_release); }

}  // namespace pyallreduce
