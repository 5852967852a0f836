// A communicator: one transport, the algorithms, and the checks that make a
// bad call fail on every rank instead of hanging some of them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "algorithms/algorithm.h"
#include "algorithms/selection.h"
#include "device/device.h"
#include "transport/transport.h"
#include "types.h"

namespace pyallreduce {

struct CommunicatorOptions {
  bool check_arguments = true;          // PYALLREDUCE_CHECK
  // The ring's pipeline (RingPipeline): PYALLREDUCE_RING_SEGMENT_BYTES and
  // PYALLREDUCE_RING_RECEIVE_WINDOW, else what pyallreduce.tune measured for
  // the layout, else these. A segment of 1 MiB costs a message's latency per
  // MiB, a small share wherever a byte takes well under a microsecond to
  // move, and with four receives posted the next segments arrive while one
  // is combined, even when a peer falls a step behind. The segment shapes a
  // call's messages and must be alike on every rank; the window need not.
  size_t ring_segment_bytes = 1 << 20;
  size_t ring_receive_window = 4;
  // How many pieces hierarchical pipelines between its levels
  // (PYALLREDUCE_HIERARCHICAL_PIECES; CollectiveContext::pieces), or 0 for
  // the cost model's count for each call. It shapes a call's messages and
  // must be alike on every rank.
  size_t hierarchical_pieces = 0;
  // Out-of-place calls of at least this many bytes write their combined
  // outputs with streaming stores: PYALLREDUCE_STREAMING_STORE_BYTES, else
  // what pyallreduce.tune measured for the layout, else derived from the
  // last-level cache. Only the speed of a rank's stores depends on it, so
  // ranks may differ.
  size_t streaming_store_bytes = streaming_vector_bytes();
  std::string algorithm_rules;          // PYALLREDUCE_ALGO
  // hierarchical's flat algorithm between hosts, in the same syntax (by the
  // call's bytes): PYALLREDUCE_ALGO_BETWEEN_HOSTS; the cost model otherwise.
  std::string between_hosts_rules;
  // Called once per distinct call with the algorithm that ran and why (the
  // `pyallreduce` Python logger at INFO, e.g. PYALLREDUCE_DEBUG=INFO); empty
  // for no log.
  std::function<void(const std::string&)> log_selection;
  // How CUDA buffers travel (PYALLREDUCE_CUDA_TRANSPORT): NCCL or MPI, or
  // unset for NCCL where libnccl.so.2 loads, else MPI.
  std::optional<DeviceTransportKind> device_transport;
  // Seconds a call may wait before the waiting rank gives up with a
  // TimeoutError (PYALLREDUCE_TIMEOUT); 0 waits forever.
  double timeout_s = 300;
  // Called once, on the failing thread, when the communicator breaks (a
  // timeout, a transport error, a peer that gave up), with the error's
  // message; empty for nothing.
  std::function<void(const class Communicator*, const std::string&)> on_break;
};

// One call as the flight recorder keeps it.
struct CallRecord {
  enum class State { kRunning, kDone, kFailed };
  uint64_t call = 0;            // sequence number on the communicator, from 1
  const char* operation = "";   // "allreduce", "allreduce_coalesced", "allgather", ...
  size_t count = 0;             // elements (coalesced: of all tensors)
  DType dtype = DType::kFloat32;
  bool reduces = true;          // whether `op` means anything (not for allgather, broadcast, barrier)
  ReduceOp op = ReduceOp::kSum;
  Algorithm algorithm = Algorithm::kAuto;  // as chosen (coalesced: as requested)
  State state = State::kRunning;
  std::string where;            // the step it was in when it ended (see StepTracker)
  double started_s = 0;         // system clock, seconds since the epoch
  double ended_s = 0;           // 0 while running
  std::string error;            // why it failed
};
const char* call_state_name(CallRecord::State state);

// What the argument check found when the ranks disagree: thrown on every rank
// alike, so it leaves the communicator usable.
class Disagreement : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

// Throws InvalidArgument if a communicator could not be built with `options`
// (a malformed algorithm rule, a zero ring segment). Creating one checks the
// same; pyallreduce checks first on every rank, so that all of them hear of
// one rank's bad options before they communicate.
void check_options(const CommunicatorOptions& options);

// Why a rank rejected its own arguments; sent to the other ranks so that they
// can say what went wrong where. Values are part of the wire format.
enum class ArgumentError : int {
  kNone = 0,
  kBadBuffer = 1,        // not a supported, contiguous, writable buffer
  kBadDtype = 2,         // unsupported element type
  kBadOp = 3,            // unknown reduction op
  kBadAlgorithm = 4,     // unknown algorithm
  kBadOutput = 5,        // out of the wrong size, dtype or overlap
  kBadDevice = 6,        // on another GPU than this communicator's CUDA calls so far
  kBadBucketBytes = 7,   // allreduce_coalesced's bucket_bytes not a positive integer
  kBadRoot = 8,          // a broadcast's root not a rank of the communicator
};
const char* argument_error_text(ArgumentError error);

class Communicator {
 public:
  Communicator(std::unique_ptr<Transport> transport, const CommunicatorOptions& options);

  int rank() const;
  int size() const;
  // Which ranks share a host.
  const HostLayout& layout() const { return transport().layout(); }
  // The transport of host calls, for the settings of its own kind (the MPI
  // transport's shared-memory pipes); throws once freed.
  Transport& host_transport() const { return transport(); }

  // Reduces `count` elements at `input` across all ranks into `output`
  // (which may equal `input`). Collective: every rank calls it with the same
  // count, dtype, op, resolved algorithm and kind of placement (host, or
  // device with the same transport), which is checked first unless
  // check_arguments is off. Device buffers are reduced in the order of
  // `placement.stream`; the first device call sets up the communicator's
  // device context (collective), and later ones must use the same GPU.
  void allreduce(const void* input, void* output, size_t count, DType dtype, ReduceOp op, Algorithm algorithm,
                 const Placement& placement = {});

  // One tensor of a coalesced call, reduced in place.
  struct Span {
    void* data;
    size_t count;
  };
  // Reduces every span in place, all of one dtype, like one allreduce each,
  // but fused: consecutive spans smaller than packing_limit(algorithm) (and
  // than bucket_bytes) are packed into a buffer of at most `bucket_bytes` and
  // reduced together; a larger span, or one alone in its bucket, is reduced
  // where it lies. One argument check covers the call, including the spans'
  // sizes. `algorithm` is resolved per bucket.
  void allreduce_coalesced(const std::vector<Span>& spans, DType dtype, ReduceOp op, Algorithm algorithm,
                           size_t bucket_bytes, const Placement& placement = {});

  // The other collectives, checked and placed as allreduce() is, `algorithm`
  // being one of the collective's (types.cpp) or auto:
  //
  // Reduces size() blocks of `count` elements at `input` across all ranks and
  // leaves block rank() of the result in `output` (count elements; it may be
  // that block of `input`, or not overlap it). MPI_Reduce_scatter_block.
  void reduce_scatter(const void* input, void* output, size_t count, DType dtype, ReduceOp op, Algorithm algorithm,
                      const Placement& placement = {});
  // Gathers every rank's `count` elements at `input` into `output`, rank r's
  // as block r of size() blocks; `input` may be this rank's block of
  // `output`, or not overlap it. MPI_Allgather.
  void allgather(const void* input, void* output, size_t count, DType dtype, Algorithm algorithm,
                 const Placement& placement = {});
  // Copies `count` elements at `data` on rank `root` into `data` on every
  // rank. MPI_Bcast.
  void broadcast(void* data, size_t count, DType dtype, int root, Algorithm algorithm,
                 const Placement& placement = {});
  // Returns once every rank has called it. It is the argument check's
  // exchange, which no rank can finish before all have begun it, and it runs
  // even where checks are off.
  void barrier();

  // Sends `bytes` from `input` to this rank itself and receives them into
  // `output`, as one exchange over the transport that buffers at `placement`
  // travel on: a check that the transport runs (e.g. NCCL at world size 1,
  // where no allreduce sends anything). Not collective, except that the
  // first device call sets up the device context on every rank.
  void loopback(const void* input, void* output, size_t bytes, const Placement& placement);

  // The one-way times, in seconds, of `repeats` ping-pongs of `bytes` between
  // ranks `first` and `second` over the host transport, after one untimed
  // (it touches the pages): what pyallreduce.tune calibrates the cost model
  // with, over the path the algorithms' messages take. Only those two ranks
  // take part; the others return no times at once.
  std::vector<double> ping_pong(int first, int second, size_t bytes, int repeats);

  // Collective counterpart of allreduce() for a rank whose arguments were
  // rejected before reaching C++: the other ranks' allreduce() then fails with
  // a message naming this rank and `error`. With checks off the other ranks
  // cannot be told within the call: the communicator breaks instead, and its
  // notice ends their call. Never throws.
  void report_invalid_arguments(ArgumentError error);

  // The last calls, oldest first (at most kRecordedCalls), the running one
  // with the step it is in.
  static constexpr size_t kRecordedCalls = 64;
  std::vector<CallRecord> flight_record() const;
  // Why the communicator is broken, or empty while it works.
  std::string broken_reason() const;

  // The algorithm a call of `collective` on `bytes` would run, and why in
  // `reason` if given (bytes as CostModel::predict counts them).
  Algorithm choose_algorithm(Collective collective, Algorithm requested, size_t bytes,
                             std::string* reason = nullptr) const;
  // The least span that allreduce_coalesced by `requested` reduces where it
  // lies rather than packing it (AlgorithmSelector::packing_limit).
  size_t packing_limit(Algorithm requested) const {
    return selector_.packing_limit(requested, options_.ring_segment_bytes);
  }

  const CommunicatorOptions& options() const { return options_; }
  // The transport device calls would use now, or nullopt if none can (no
  // CUDA backend registered).
  std::optional<DeviceTransportKind> device_transport() const;
  void set_ring_segment_bytes(size_t bytes);
  void set_ring_receive_window(size_t window);
  void set_streaming_store_bytes(size_t bytes) { options_.streaming_store_bytes = bytes; }
  // The constants algorithm="auto" uses from now on (see
  // AlgorithmSelector::set_model); the same on every rank, or the ranks may
  // choose differently (which the argument check then reports).
  void set_cost_model(const CostModel& model, const std::string& source);
  // The largest call of `collective` (its whole vector's bytes) the argument
  // check carries when it is on (see agree).
  size_t carry_limit(Collective collective) const;

  // Releases the transport (for MPI, the duplicated communicator). Every later
  // call raises. Safe to call twice; raises InvalidArgument while another
  // thread's call is running on it.
  void free();
  bool freed() const { return transport_ == nullptr; }

 private:
  struct Signature {
    Collective collective;
    int64_t count, dtype, op, algorithm;
    // What else must match: a coalesced call's spans and buckets (see
    // layout_hash), a broadcast's root; 0 otherwise.
    int64_t shape;
    int64_t placement;  // 0 for host buffers, else the DeviceTransportKind
  };
  // What a call is, for its record and its errors.
  struct CallInfo {
    const char* operation;
    size_t count;
    DType dtype;
    bool reduces;
    ReduceOp op;
    Algorithm algorithm;
  };
  // Runs `body` as call number ++calls_: holds busy_, sets the transport's
  // deadline, records the call, and on a failure other than a Disagreement
  // breaks the communicator (see fail()).
  template <class Body>
  void run_call(const CallInfo& info, Body body);
  // Sets the transport's deadline to options_.timeout_s from now.
  void arm_deadline();
  // Breaks the communicator over `error`, raised in the running call: posts
  // a notice to the peers, for a timeout waits a little for theirs to name
  // the rank that holds everyone up, records and reports the failure, and
  // throws `error`'s kind with the whole story.
  [[noreturn]] void fail(const TransportError& error);
  // The rank whose absence holds up a call in which `start.rank` timed out
  // waiting on `start.waiting_on`, found by following the peers' notices
  // and `mine`, this rank's own wait.
  std::string find_culprit(const Notice& start, const Notice& mine);
  // Marks the communicator broken by `message`, records it and calls
  // on_break; posts `notice` to the peers unless it is empty (a timeout
  // posts its own first).
  void break_with(const std::string& message, const std::string& notice);
  // "call 3 (allreduce of 4 x float32, sum, ring) failed on rank 1 at ring
  // allgather step 2 of 3": the running call, for its errors.
  std::string where_it_failed() const;
  CallRecord& current_record() { return records_[(calls_ - 1) % kRecordedCalls]; }
  // A small call whose data travels inside the argument check: `input_bytes`
  // of `input` go into the check's payload at byte `input_at` (which is zero
  // elsewhere); the payloads are combined by `reduction` over its first
  // `count` elements, or where it is null by byte-wise or (each rank having
  // filled bytes of its own, as an allgather's blocks, or only one rank any,
  // as a broadcast's root); `output_bytes` of the result from byte
  // `output_at` land in `output`.
  struct CarriedCall {
    const void* input;
    size_t input_bytes, input_at;
    void* output;
    size_t output_bytes, output_at;
    const Reduction* reduction;
    size_t count;
  };
  // Compares every rank's signature and local error; returns a description of
  // the first disagreement, or an empty string when all ranks agree. With
  // `call`, its data is combined in the same messages and, when all agree,
  // the result is in call->output.
  std::string agree(const Signature& mine, ArgumentError error, const CarriedCall* call = nullptr);
  // Whether a call of `collective` whose payload is `bytes` (the whole
  // vector) running `algorithm` is carried by the check: calls up to the
  // collective's carry limit by its fewest-message algorithm, on host
  // buffers, with the check on.
  bool carries_payload(Collective collective, Algorithm algorithm, size_t bytes, const Placement& placement) const;
  // Recomputes carry_limits_ from the selector's model (after it or the ring
  // segment changed).
  void update_carry_limits();
  // What `requested` runs for a call of `collective` on `bytes` at
  // `placement`, and why in `reason`: auto carries what the check can carry,
  // and asks the selector (rules, then the cost model) otherwise.
  Algorithm resolve(Collective collective, Algorithm requested, size_t bytes, const Placement& placement,
                    std::string* reason = nullptr) const;
  // The shared body of reduce_scatter, allgather and broadcast: the call
  // (run_call), its log line, its argument check (which, given `carried`,
  // is the whole call), then `run(transport, workspace, staging, reduction)`
  // on host memory or on the device context for `placement`; staging is a
  // second region for the collective's own use.
  template <class Run>
  void run_collective(const CallInfo& info, Algorithm requested, const Signature& signature,
                      const Placement& placement, ArgumentError objection, const CarriedCall* carried, Run run);
  Transport& transport() const;
  // Holds busy_ for one collective, or throws if another call holds it or
  // the communicator is broken.
  std::unique_lock<std::mutex> exclusive_use();
  // This rank's objection to `placement`, before anything is sent.
  ArgumentError placement_error(const Placement& placement) const;
  int64_t placement_code(const Placement& placement) const;
  // One call on the device context for `placement`, which is set up
  // (collectively) on first use; the call is begun on the placement's stream
  // and ended when this goes out of scope.
  class DeviceCall {
   public:
    DeviceCall(Communicator& comm, const Placement& placement);
    ~DeviceCall() { context_.end_call(); }
    DeviceCall(const DeviceCall&) = delete;
    DeviceCall& operator=(const DeviceCall&) = delete;
    DeviceContext* operator->() const { return &context_; }

   private:
    static DeviceContext& set_up(Communicator& comm, const Placement& placement);
    DeviceContext& context_;
  };
  // Logs (once per distinct call) what `info`'s call, asked for `requested`,
  // runs and why.
  void log_choice(const CallInfo& info, Algorithm requested);
  // Runs the concrete allreduce algorithm `chosen` on one vector, unchecked (for
  // hierarchical, with the algorithm between hosts the model picks).
  void run_algorithm(Transport& t, const Combiner& reduction, MemorySpace& memory, const void* input, void* output,
                     size_t count, size_t element_bytes, Algorithm chosen, bool on_device);
  // The pieces a call of `collective` by `chosen` on `bytes` pipelines
  // (CollectiveContext::pieces): the option's, else the cost model's, for
  // hierarchical on host buffers (device transfers are not polled); 1
  // elsewhere.
  size_t hierarchical_pieces(Collective collective, Algorithm chosen, size_t bytes, bool on_device) const;
  RingPipeline ring_pipeline() const { return {options_.ring_segment_bytes, options_.ring_receive_window}; }

  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Transport> check_transport_;  // the argument check's frames, over transport_ (made at first use)
  CommunicatorOptions options_;
  AlgorithmSelector selector_;
  std::vector<size_t> carry_limits_;  // by collective
  HostMemory workspace_;  // the algorithms'
  HostMemory fusion_;     // allreduce_coalesced's packed buckets; the other collectives' staging
  std::unique_ptr<DeviceContext> device_;  // after the first device call
  std::mutex busy_;  // one collective at a time per communicator
  std::set<std::tuple<int, size_t, int, int, int>> logged_;  // collective, count, dtype, op, requested
  uint64_t calls_ = 0;  // calls begun, each one's sequence number
  StepTracker steps_;   // of the running call
  std::string broken_;
  std::vector<CallRecord> records_;  // call k in slot (k - 1) % kRecordedCalls
  mutable std::mutex records_mutex_;  // guards records_ and broken_ against flight_record()
};

}  // namespace pyallreduce
