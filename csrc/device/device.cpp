#include "device.h"

namespace pyallreduce {
namespace {
DeviceBackend* registered_backend = nullptr;  // set once, under the GIL, when _cuda is imported
}  // namespace

const char* device_transport_name(DeviceTransportKind kind) {
  switch (kind) {
    case DeviceTransportKind::kMpi: return "mpi";
    case DeviceTransportKind::kNccl: return "nccl";
  }
  return "unknown";
}

DeviceBackend* device_backend() { return registered_backend; }
void set_device_backend(DeviceBackend* backend) { registered_backend = backend; }

}  // namespace pyallreduce
