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

DeviceTransportKind device_transport_from_name(const std::string& name) {
  for (DeviceTransportKind kind : {DeviceTransportKind::kMpi, DeviceTransportKind::kNccl}) {
    if (name == device_transport_name(kind)) return kind;
  }
  throw InvalidArgument("device transport must be 'nccl', 'mpi' or None, not '" + name + "'");
}

DeviceBackend* device_backend() { return registered_backend; }
void set_device_backend(DeviceBackend* backend) { registered_backend = backend; }

}  // namespace pyallreduce
