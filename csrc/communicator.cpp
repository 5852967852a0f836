#include "communicator.h"

#include <algorithm>
#include <cstring>

#include "reduce/reduction.h"

namespace pyallreduce {

const char* argument_error_text(ArgumentError error) {
  switch (error) {
    case ArgumentError::kNone: return "no error";
    case ArgumentError::kBadBuffer: return "its buffer is not a contiguous, writable array it can reduce";
    case ArgumentError::kBadDtype: return "its buffer has an unsupported dtype";
    case ArgumentError::kBadOp: return "it named an unknown reduction op";
    case ArgumentError::kBadAlgorithm: return "it named an unknown algorithm";
    case ArgumentError::kBadOutput: return "its out= buffer does not match the input";
    case ArgumentError::kBadDevice:
      return "its buffers are on another GPU than the communicator's earlier CUDA calls";
    case ArgumentError::kBadBucketBytes: return "its bucket_bytes is not a positive integer";
  }
  return "unknown error";
}

void check_options(const CommunicatorOptions& options) {
  parse_size_rules(options.algorithm_rules);
  if (options.ring_segment_bytes == 0) throw InvalidArgument("ring_segment_bytes must be positive");
}

Communicator::Communicator(std::unique_ptr<Transport> transport, const CommunicatorOptions& options)
    : transport_(std::move(transport)),
      options_(options),
      selector_(parse_size_rules(options.algorithm_rules), default_cost_model()) {
  set_ring_segment_bytes(options.ring_segment_bytes);
}

Transport& Communicator::transport() const {
  if (transport_ == nullptr) throw InvalidArgument("this communicator has been freed");
  return *transport_;
}

int Communicator::rank() const { return transport().rank(); }
int Communicator::size() const { return transport().size(); }

void Communicator::set_ring_segment_bytes(size_t bytes) {
  if (bytes == 0) throw InvalidArgument("ring_segment_bytes must be positive");
  options_.ring_segment_bytes = bytes;
}

void Communicator::free() {
  // Under the lock a call holds, so that no call is left running on a freed
  // transport (a use after free).
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) {
    throw InvalidArgument("free() while another thread's call is running on this communicator; "
                          "free it once that call has returned");
  }
  device_.reset();  // first: a device transport may run over the host one
  transport_.reset();
}

std::unique_lock<std::mutex> Communicator::exclusive_use() {
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) {
    throw InvalidArgument(
        "another allreduce is already running on this communicator; calls on one communicator "
        "must not overlap (use one communicator per thread)");
  }
  return lock;
}

Algorithm Communicator::choose_algorithm(Algorithm requested, size_t bytes, std::string* reason) const {
  return selector_.choose(requested, bytes, size(), options_.ring_segment_bytes, reason);
}

namespace {

// The argument check's message. Every rank contributes its signature and its
// error code as fields; a max-reduction of [fields, -fields] gives each
// field's maximum and (negated) minimum on every rank, so all ranks see the
// same disagreement and raise together. The error field is
// (rank + 1) * 8 + code, so the maximum names the highest failing rank and
// its reason.
//
// Calls of at most kCarriedPayloadBytes that run recursive doubling carry their
// data in the same frame: the check and the reduction then share each step's
// message instead of taking two rounds, which is most of a small call's time.
// The frame has the same size on every rank whatever it carries, so ranks that
// disagree still exchange well-formed messages before they raise.
constexpr int kFields = 7;
constexpr size_t kCarriedPayloadBytes = 1024;

// allreduce_coalesced reduces spans of at least this size in place rather than
// packing them. Packing a tensor costs two copies (in and out), four times its
// bytes through memory, while fusing saves only per-message latency, which a
// 1 MiB message has already amortized; on ResNet-50's gradients, packing every
// tensor was no faster than one MPI_Allreduce per tensor (bench/RESULTS.md).
constexpr size_t kDirectReduceBytes = 1 << 20;

struct CheckFrame {
  int64_t fields[2 * kFields];
  alignas(16) unsigned char payload[kCarriedPayloadBytes];
};

// Combines check frames: fields by maximum, and the payload by `payload`'s
// reduction over `payload_count` elements when the call is carried.
class CheckFrameCombiner final : public Combiner {
 public:
  CheckFrameCombiner(const Reduction* payload, size_t payload_count)
      : payload_(payload), payload_count_(payload_count) {}

  void combine(const void* left, const void* right, void* out, size_t count) const override {
    const auto* l = static_cast<const CheckFrame*>(left);
    const auto* r = static_cast<const CheckFrame*>(right);
    auto* o = static_cast<CheckFrame*>(out);
    for (size_t i = 0; i < count; ++i) {
      for (int f = 0; f < 2 * kFields; ++f) o[i].fields[f] = std::max(l[i].fields[f], r[i].fields[f]);
      if (payload_ != nullptr) payload_->combine(l[i].payload, r[i].payload, o[i].payload, payload_count_);
    }
  }

  void finalize(void* data, size_t count, int world_size) const override {
    if (payload_ == nullptr) return;
    auto* frames = static_cast<CheckFrame*>(data);
    for (size_t i = 0; i < count; ++i) payload_->finalize(frames[i].payload, payload_count_, world_size);
  }

 private:
  const Reduction* payload_;
  size_t payload_count_;
};

}  // namespace

bool Communicator::carries_payload(Algorithm algorithm, size_t bytes) const {
  return options_.check_arguments && algorithm == Algorithm::kRecursiveDoubling &&
         bytes <= kCarriedPayloadBytes;
}

std::string Communicator::agree(const Signature& mine, ArgumentError error, const CarriedCall* call) {
  Transport& t = transport();
  CheckFrame frame{};
  const int64_t mine_fields[kFields] = {
      mine.count, mine.dtype, mine.op, mine.algorithm, mine.layout, mine.placement,
      error == ArgumentError::kNone ? 0 : (t.rank() + 1) * 8 + static_cast<int64_t>(error)};
  for (int i = 0; i < kFields; ++i) {
    frame.fields[i] = mine_fields[i];
    frame.fields[kFields + i] = -mine_fields[i];
  }
  const size_t payload_bytes = call != nullptr ? call->count * call->reduction.element_size() : 0;
  if (payload_bytes > 0) std::memcpy(frame.payload, call->input, payload_bytes);
  const CheckFrameCombiner combiner(call != nullptr ? &call->reduction : nullptr,
                                    call != nullptr ? call->count : 0);
  recursive_doubling_allreduce(AllreduceContext{t, combiner, workspace_, options_.ring_segment_bytes},
                               Vector{&frame, &frame, 1, sizeof(CheckFrame)});
  auto max_of = [&](int i) { return frame.fields[i]; };
  auto min_of = [&](int i) { return -frame.fields[kFields + i]; };

  if (max_of(6) != 0) {
    const int64_t failing_rank = max_of(6) / 8 - 1;
    const auto reason = static_cast<ArgumentError>(max_of(6) % 8);
    return "allreduce rejected on rank " + std::to_string(failing_rank) + ": " +
           argument_error_text(reason) + " (see that rank's error for details)";
  }
  if (max_of(0) != min_of(0)) {
    return "ranks passed different element counts to the same allreduce (smallest " +
           std::to_string(min_of(0)) + ", largest " + std::to_string(max_of(0)) + ")";
  }
  if (max_of(1) != min_of(1)) {
    return std::string("ranks passed different dtypes to the same allreduce (") +
           dtype_name(static_cast<DType>(min_of(1))) + " and " +
           dtype_name(static_cast<DType>(max_of(1))) + ")";
  }
  if (max_of(2) != min_of(2)) {
    return std::string("ranks passed different ops to the same allreduce (") +
           op_name(static_cast<ReduceOp>(min_of(2))) + " and " +
           op_name(static_cast<ReduceOp>(max_of(2))) + ")";
  }
  if (max_of(3) != min_of(3)) {
    return std::string("ranks chose different algorithms for the same allreduce (") +
           algorithm_name(static_cast<Algorithm>(min_of(3))) + " and " +
           algorithm_name(static_cast<Algorithm>(max_of(3))) +
           "): pass the same algorithm= and set PYALLREDUCE_ALGO alike on every rank";
  }
  if (max_of(4) != min_of(4)) {
    return "ranks passed tensor lists of different sizes, or different bucket_bytes, to the same "
           "allreduce_coalesced";
  }
  if (max_of(5) != min_of(5)) {
    auto where = [](int64_t code) -> std::string {
      return code == 0 ? "host memory"
                       : std::string("CUDA over ") + device_transport_name(static_cast<DeviceTransportKind>(code));
    };
    return "ranks passed buffers in different places to the same allreduce (" + where(min_of(5)) + " and " +
           where(max_of(5)) + "): pass CUDA tensors on every rank or on none, and set "
           "PYALLREDUCE_CUDA_TRANSPORT alike";
  }
  if (payload_bytes > 0) std::memcpy(call->output, frame.payload, payload_bytes);
  return "";
}

void Communicator::report_invalid_arguments(ArgumentError error) {
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) return;  // the rank's own error is what it raises anyway
  if (options_.check_arguments) agree(Signature{0, 0, 0, 0, 0, 0}, error);
}

void Communicator::log_choice(size_t count, DType dtype, ReduceOp op, Algorithm requested) {
  std::string reason;
  const Algorithm chosen = selector_.choose(requested, count * element_size(dtype), size(), options_.ring_segment_bytes, &reason);
  const auto key = std::make_tuple(count, static_cast<int>(dtype), static_cast<int>(op), static_cast<int>(chosen));
  if (!logged_.insert(key).second) return;
  options_.log_selection("rank " + std::to_string(rank()) + "/" + std::to_string(size()) + ": allreduce of " +
                         std::to_string(count) + " x " + dtype_name(dtype) + " (" + op_name(op) + ") -> " +
                         algorithm_name(chosen) +
                         (carries_payload(chosen, count * element_size(dtype)) ? " inside the argument check" : "") +
                         " [" + reason + "]");
}

std::optional<DeviceTransportKind> Communicator::device_transport() const {
  if (device_ != nullptr) return device_->kind();
  const DeviceBackend* backend = device_backend();
  if (backend == nullptr) return std::nullopt;
  if (options_.device_transport) return options_.device_transport;
  return backend->available(DeviceTransportKind::kNccl) ? DeviceTransportKind::kNccl : DeviceTransportKind::kMpi;
}

ArgumentError Communicator::placement_error(const Placement& placement) const {
  if (!placement.on_device()) return ArgumentError::kNone;
  if (!device_transport()) return ArgumentError::kBadBuffer;
  if (device_ != nullptr && device_->device() != placement.device) return ArgumentError::kBadDevice;
  return ArgumentError::kNone;
}

int64_t Communicator::placement_code(const Placement& placement) const {
  const auto kind = device_transport();
  return placement.on_device() && kind ? static_cast<int64_t>(*kind) : 0;
}

DeviceContext& Communicator::DeviceCall::set_up(Communicator& comm, const Placement& placement) {
  if (comm.device_ == nullptr) {
    comm.device_ = device_backend()->create_context(comm.transport(), placement.device, *comm.device_transport());
  }
  return *comm.device_;
}

Communicator::DeviceCall::DeviceCall(Communicator& comm, const Placement& placement)
    : context_(set_up(comm, placement)) {
  context_.begin_call(placement.stream);
}

namespace {

// Runs the algorithm `chosen` on one vector, unchecked.
void run_algorithm(const AllreduceContext& ctx, const void* input, void* output, size_t count,
                   size_t element_bytes, Algorithm chosen) {
  const Vector vec{input, output, count, element_bytes};
  switch (chosen) {
    case Algorithm::kRing: ring_allreduce(ctx, vec); break;
    case Algorithm::kHalvingDoubling: halving_doubling_allreduce(ctx, vec); break;
    case Algorithm::kRecursiveDoubling: recursive_doubling_allreduce(ctx, vec); break;
    case Algorithm::kAuto: throw InvalidArgument("algorithm selection returned auto");
  }
}

}  // namespace

void Communicator::loopback(const void* input, void* output, size_t bytes, const Placement& placement) {
  const std::unique_lock<std::mutex> lock = exclusive_use();
  if (!placement.on_device()) {
    exchange(transport(), rank(), input, bytes, output, bytes);
    return;
  }
  const DeviceCall device(*this, placement);
  exchange(device->transport(), rank(), input, bytes, output, bytes);
}

void Communicator::allreduce(const void* input, void* output, size_t count, DType dtype, ReduceOp op,
                             Algorithm algorithm, const Placement& placement) {
  const std::unique_lock<std::mutex> lock = exclusive_use();
  Transport& t = transport();
  const size_t bytes = count * element_size(dtype);
  const Reduction reduction(dtype, op, bytes);
  const Algorithm chosen = selector_.choose(algorithm, bytes, t.size(), options_.ring_segment_bytes);
  if (options_.log_selection) log_choice(count, dtype, op, algorithm);
  const ArgumentError objection = placement_error(placement);
  if (options_.check_arguments) {
    const bool carried = !placement.on_device() && carries_payload(chosen, bytes);
    const CarriedCall call{input, output, count, reduction};
    const std::string disagreement =
        agree(Signature{static_cast<int64_t>(count), static_cast<int64_t>(dtype), static_cast<int64_t>(op),
                        static_cast<int64_t>(chosen), 0, placement_code(placement)},
              objection, carried ? &call : nullptr);
    if (!disagreement.empty()) throw InvalidArgument(disagreement);
    if (carried) return;
  } else if (objection != ArgumentError::kNone) {
    throw InvalidArgument(std::string("allreduce rejected: ") + argument_error_text(objection));
  }

  if (!placement.on_device()) {
    run_algorithm(AllreduceContext{t, reduction, workspace_, options_.ring_segment_bytes}, input, output, count,
                  reduction.element_size(), chosen);
    return;
  }
  const DeviceCall device(*this, placement);
  const std::unique_ptr<Combiner> kernels = device->reduction(dtype, op);
  run_algorithm(AllreduceContext{device->transport(), *kernels, device->workspace(), options_.ring_segment_bytes},
                input, output, count, reduction.element_size(), chosen);
}

namespace {

// What must match across ranks for a coalesced call to pair up: every span's
// count and the bucket size, hashed (64-bit FNV-1a) into 62 bits so that the
// check can negate it.
int64_t layout_hash(const std::vector<Communicator::Span>& spans, size_t bucket_bytes) {
  uint64_t hash = 1469598103934665603ull;
  auto mix = [&](uint64_t value) {
    for (int byte = 0; byte < 8; ++byte) {
      hash ^= (value >> (8 * byte)) & 0xFF;
      hash *= 1099511628211ull;
    }
  };
  mix(bucket_bytes);
  for (const auto& span : spans) mix(span.count);
  return static_cast<int64_t>(hash >> 2) + 1;  // never 0, the plain calls' value
}

}  // namespace

void Communicator::allreduce_coalesced(const std::vector<Span>& spans, DType dtype, ReduceOp op,
                                       Algorithm algorithm, size_t bucket_bytes, const Placement& placement) {
  const std::unique_lock<std::mutex> lock = exclusive_use();
  if (bucket_bytes == 0) throw InvalidArgument("bucket_bytes must be positive");
  const size_t element_bytes = element_size(dtype);
  size_t total = 0;
  for (const Span& span : spans) total += span.count;
  const ArgumentError objection = placement_error(placement);
  if (options_.check_arguments) {
    const std::string disagreement =
        agree(Signature{static_cast<int64_t>(total), static_cast<int64_t>(dtype), static_cast<int64_t>(op),
                        static_cast<int64_t>(algorithm), layout_hash(spans, bucket_bytes), placement_code(placement)},
              objection);
    if (!disagreement.empty()) throw InvalidArgument(disagreement);
  } else if (objection != ArgumentError::kNone) {
    throw InvalidArgument(std::string("allreduce_coalesced rejected: ") + argument_error_text(objection));
  }
  const int p = size();
  std::optional<DeviceCall> device_call;
  if (placement.on_device()) device_call.emplace(*this, placement);
  DeviceContext* device = device_call ? device_call->operator->() : nullptr;
  Transport& t = device != nullptr ? device->transport() : transport();
  MemorySpace& workspace = device != nullptr ? device->workspace() : workspace_;
  MemorySpace& fusion = device != nullptr ? device->fusion() : fusion_;
  const std::unique_ptr<Combiner> kernels = device != nullptr ? device->reduction(dtype, op) : nullptr;
  auto reduce = [&](void* data, size_t count) {
    const size_t bytes = count * element_bytes;
    const Reduction host_reduction(dtype, op, bytes);
    const Combiner& reduction = kernels != nullptr ? *kernels : static_cast<const Combiner&>(host_reduction);
    run_algorithm(AllreduceContext{t, reduction, workspace, options_.ring_segment_bytes}, data, data, count,
                  element_bytes, selector_.choose(algorithm, bytes, p, options_.ring_segment_bytes));
  };
  // A span of at least direct_bytes is reduced where it lies: packing it would
  // move it through memory twice more (copy in, copy out), which costs more
  // than the per-call latency that fusing saves. Buckets are runs of the
  // consecutive smaller spans whose bytes add up to at most bucket_bytes.
  // Example, bucket_bytes = 100 (so direct_bytes = 100) and spans of 40, 50,
  // 30, 120 and 10 bytes: [40, 50] packed; [30] alone, so in place; [120] in
  // place; [10] alone.
  const size_t direct_bytes = std::min(bucket_bytes, kDirectReduceBytes);
  auto span_bytes = [&](size_t i) { return spans[i].count * element_bytes; };
  for (size_t first = 0; first < spans.size();) {
    size_t end = first;
    size_t packed_bytes = 0;
    while (end < spans.size() && span_bytes(end) < direct_bytes && packed_bytes + span_bytes(end) <= bucket_bytes) {
      packed_bytes += span_bytes(end);
      ++end;
    }
    if (end - first <= 1) {
      end = first + 1;  // alone or large: reduced where it lies
      reduce(spans[first].data, spans[first].count);
      first = end;
      continue;
    }
    if (packed_bytes == 0) {  // only empty spans: nothing to reduce
      first = end;
      continue;
    }
    char* bucket = static_cast<char*>(fusion.reserve(packed_bytes));
    char* cursor = bucket;
    for (size_t i = first; i < end; ++i) {
      fusion.copy(cursor, spans[i].data, spans[i].count * element_bytes);
      cursor += spans[i].count * element_bytes;
    }
    reduce(bucket, packed_bytes / element_bytes);
    cursor = bucket;
    for (size_t i = first; i < end; ++i) {
      fusion.copy(spans[i].data, cursor, spans[i].count * element_bytes);
      cursor += spans[i].count * element_bytes;
    }
    first = end;
  }
}

}  // namespace pyallreduce
