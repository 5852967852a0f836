#include "communicator.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <sstream>
#include <thread>

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
    case ArgumentError::kBadRoot: return "its root is not a rank of the communicator";
  }
  return "unknown error";
}

const char* call_state_name(CallRecord::State state) {
  switch (state) {
    case CallRecord::State::kRunning: return "running";
    case CallRecord::State::kDone: return "done";
    case CallRecord::State::kFailed: return "failed";
  }
  return "unknown";
}

void check_options(const CommunicatorOptions& options) {
  parse_size_rules(options.algorithm_rules);
  for (const SizeRule& rule : parse_size_rules(options.between_hosts_rules)) {
    if (rule.collective != Collective::kAllreduce) {
      throw InvalidArgument("PYALLREDUCE_ALGO_BETWEEN_HOSTS names hierarchical allreduce's algorithm between hosts: "
                            "its rules are for allreduce, not " + std::string(collective_name(rule.collective)));
    }
    if (rule.algorithm == Algorithm::kHierarchical) {
      throw InvalidArgument("PYALLREDUCE_ALGO_BETWEEN_HOSTS names the algorithm between hosts: a flat one, not "
                            "hierarchical");
    }
  }
  if (options.ring_segment_bytes == 0) throw InvalidArgument("ring_segment_bytes must be positive");
  if (options.ring_receive_window == 0) throw InvalidArgument("ring_receive_window must be positive");
  if (!(options.timeout_s >= 0)) throw InvalidArgument("timeout must be a non-negative number of seconds");
}

Communicator::Communicator(std::unique_ptr<Transport> transport, const CommunicatorOptions& options)
    : transport_(std::move(transport)),
      options_(options),
      selector_(parse_size_rules(options.algorithm_rules), parse_size_rules(options.between_hosts_rules),
                default_cost_model(), transport_->layout()),
      records_(kRecordedCalls) {
  check_options(options);
  update_carry_limits();
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
  update_carry_limits();
}

void Communicator::set_cost_model(const CostModel& model, const std::string& source) {
  selector_.set_model(model, source);
  update_carry_limits();
}

void Communicator::set_ring_receive_window(size_t window) {
  if (window == 0) throw InvalidArgument("ring_receive_window must be positive");
  options_.ring_receive_window = window;
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
  check_transport_.reset();  // likewise
  transport_.reset();
}

std::unique_lock<std::mutex> Communicator::exclusive_use() {
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) {
    throw InvalidArgument(
        "another allreduce is already running on this communicator; calls on one communicator "
        "must not overlap (use one communicator per thread)");
  }
  transport();  // throws once freed
  if (!broken_.empty()) {
    throw TransportError("this communicator is broken, so its ranks can no longer pair their messages; create a "
                         "new one. It broke when " + broken_);
  }
  return lock;
}

namespace {

double wall_clock_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// How long a rank whose call timed out waits for its peers' notices to find
// who holds the call up: they time out at about the same moment, give or take
// how far apart the ranks began the call.
constexpr double kMaxCulpritSearchS = 5.0;

}  // namespace

void Communicator::arm_deadline() {
  // Anything beyond about 30 years is forever (and would overflow the clock).
  const bool forever = options_.timeout_s <= 0 || options_.timeout_s > 1e9;
  transport().set_deadline(forever ? Clock::time_point::max()
                                   : Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                        std::chrono::duration<double>(options_.timeout_s)));
}

template <class Body>
void Communicator::run_call(const CallInfo& info, Body body) {
  const std::unique_lock<std::mutex> lock = exclusive_use();
  arm_deadline();
  steps_.set_stage(nullptr);
  {
    const std::lock_guard<std::mutex> guard(records_mutex_);
    ++calls_;
    CallRecord& record = current_record();
    record.call = calls_;
    record.operation = info.operation;
    record.count = info.count;
    record.dtype = info.dtype;
    record.reduces = info.reduces;
    record.op = info.op;
    record.algorithm = info.algorithm;
    record.state = CallRecord::State::kRunning;
    record.where.clear();
    record.started_s = wall_clock_s();
    record.ended_s = 0;
    record.error.clear();
  }
  auto finish = [&](CallRecord::State state, const char* error) {
    const std::lock_guard<std::mutex> guard(records_mutex_);
    CallRecord& record = current_record();
    if (record.state == CallRecord::State::kFailed) return;  // break_with has recorded it
    record.state = state;
    record.ended_s = wall_clock_s();
    if (state == CallRecord::State::kFailed) {
      record.where = steps_.describe();
      record.error = error;
    }
  };
  try {
    body();
  } catch (const Disagreement& error) {
    finish(CallRecord::State::kFailed, error.what());
    throw;
  } catch (const TransportError& error) {
    fail(error);
  } catch (const std::exception& error) {
    // Thrown on this rank alone (out of memory, say), perhaps with messages
    // half exchanged: the peers cannot go on with it either.
    const std::string message = where_it_failed() + ": " + error.what();
    break_with(message, message);
    throw;
  }
  finish(CallRecord::State::kDone, "");
}

std::string Communicator::where_it_failed() const {
  const CallRecord& record = records_[(calls_ - 1) % kRecordedCalls];
  return "call " + std::to_string(calls_) + " (" + record.operation + " of " + std::to_string(record.count) + " x " +
         dtype_name(record.dtype) + ", " + (record.reduces ? std::string(op_name(record.op)) + ", " : "") +
         algorithm_name(record.algorithm) + ") failed on rank " + std::to_string(transport().rank()) + " at " + steps_.describe();
}

void Communicator::break_with(const std::string& message, const std::string& notice) {
  Transport& t = transport();
  if (!notice.empty()) {
    try {
      t.post_notice(Notice{t.rank(), calls_, -1, wall_clock_s(), 0, notice});
    } catch (const std::exception&) {
      // Best effort: a peer that cannot be told times out instead.
    }
  }
  {
    const std::lock_guard<std::mutex> guard(records_mutex_);
    broken_ = message;
    CallRecord& record = current_record();
    record.state = CallRecord::State::kFailed;
    record.ended_s = wall_clock_s();
    record.where = steps_.describe();
    record.error = message;
  }
  if (options_.on_break) {
    try {
      options_.on_break(this, message);
    } catch (const std::exception&) {
      // The report is secondary to the error it reports, which is thrown next.
    }
  }
}

void Communicator::fail(const TransportError& error) {
  Transport& t = transport();
  const auto* timeout = dynamic_cast<const TimeoutError*>(&error);
  const std::string here = where_it_failed();
  if (const auto* gave_up = dynamic_cast<const PeerGaveUp*>(&error)) {
    const Notice& theirs = gave_up->notice();
    if (theirs.waiting_on >= 0) {
      // A peer timed out: find, as it does, whom it was held up by.
      // This rank waits too: its own notice is a link of the chain the
      // others follow.
      const double now = wall_clock_s();
      const Notice mine{t.rank(), calls_, gave_up->waiting_for(), now, now - gave_up->waited_s(),
                        here + ": waiting on rank " + std::to_string(gave_up->waiting_for()) + " when rank " +
                            std::to_string(theirs.rank) + " timed out"};
      try {
        t.post_notice(mine);
      } catch (const std::exception&) {
      }
      const std::string message = here + " because rank " + std::to_string(theirs.rank) + " timed out. " +
                                  find_culprit(theirs, mine);
      break_with(message, "");
      throw TimeoutError(message, theirs.waiting_on);
    }
    // The notice passed on is the first rank's own, so that the story does
    // not nest one rank deeper at every hop.
    break_with(here + " because rank " + std::to_string(theirs.rank) + " gave up: " + theirs.text, theirs.text);
    throw TransportError(broken_reason());
  }
  std::string message = here + ": " + error.what();
  if (timeout == nullptr || timeout->peer() < 0) {  // no peer to follow: a device transport's timeout
    break_with(message, message);
    if (timeout != nullptr) throw TimeoutError(message, -1);
    throw TransportError(message);
  }
  std::ostringstream seconds;
  seconds << options_.timeout_s;
  message += " after " + seconds.str() + " s";
  const double now = wall_clock_s();
  const Notice mine{t.rank(), calls_, timeout->peer(), now, now - timeout->waited_s(), message};
  try {
    t.post_notice(mine);
  } catch (const std::exception&) {
  }
  message += ". " + find_culprit(mine, mine);
  break_with(message, "");
  throw TimeoutError(message, timeout->peer());
}

std::string Communicator::find_culprit(const Notice& start, const Notice& mine) {
  Transport& t = transport();
  const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                          std::min(options_.timeout_s, kMaxCulpritSearchS)));
  // Follows "rank a waits on rank b" through the notices, to a rank that was
  // not waiting when the rank before it gave up. Example, a ring of 4 where
  // rank 1 stopped: rank 3 waits on 2, whose notice says it waits on 1,
  // which has posted none (or, back later, posts one of a wait that began
  // after rank 2 gave up): rank 1 held the call up.
  while (true) {
    const std::map<int, Notice>& notices = t.collect_notices();
    std::string chain = "rank " + std::to_string(start.rank);
    std::vector<int> seen{start.rank};
    const Notice* waiter = &start;
    while (true) {
      const int next = waiter->waiting_on;
      chain += " waits on rank " + std::to_string(next);
      if (std::find(seen.begin(), seen.end(), next) != seen.end()) {
        return "The ranks wait on each other (" + chain + "): they are not running the same call" +
               (options_.check_arguments ? "" : " (with PYALLREDUCE_CHECK=0 nothing compares them)");
      }
      const auto it = notices.find(next);
      if (next != mine.rank && it == notices.end()) {
        if (Clock::now() < give_up) break;  // not heard from yet: look again
        return "Culprit: rank " + std::to_string(next) + ", which is not waiting in this call (" + chain +
               "; it has not reported a wait of its own): it is late, stopped outside pyallreduce, or dead";
      }
      const Notice& theirs = next == mine.rank ? mine : it->second;
      if (theirs.waiting_on < 0) {
        return "Rank " + std::to_string(next) + " failed first (" + chain + "): " + theirs.text;
      }
      if (theirs.waiting_since_s > waiter->posted_s) {
        std::ostringstream later;
        later.precision(3);
        later << theirs.waiting_since_s - waiter->posted_s;
        return "Culprit: rank " + std::to_string(next) + ", which was not waiting when rank " +
               std::to_string(waiter->rank) + " gave up on it (" + chain + "; it began to wait " + later.str() +
               " s later): it was late, slow or stopped";
      }
      seen.push_back(next);
      // A link may still be in an earlier call (or already in a later one).
      chain += ", rank " + std::to_string(next) +
               (theirs.call != start.call ? " (in call " + std::to_string(theirs.call) + ")" : "");
      waiter = &theirs;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

std::vector<CallRecord> Communicator::flight_record() const {
  const std::lock_guard<std::mutex> guard(records_mutex_);
  std::vector<CallRecord> calls;
  const uint64_t first = calls_ > kRecordedCalls ? calls_ - kRecordedCalls + 1 : 1;
  for (uint64_t call = first; call <= calls_; ++call) {
    calls.push_back(records_[(call - 1) % kRecordedCalls]);
    if (calls.back().state == CallRecord::State::kRunning) calls.back().where = steps_.describe();
  }
  return calls;
}

std::string Communicator::broken_reason() const {
  const std::lock_guard<std::mutex> guard(records_mutex_);
  return broken_;
}

Algorithm Communicator::choose_algorithm(Collective collective, Algorithm requested, size_t bytes,
                                         std::string* reason) const {
  transport();  // throws once freed
  return resolve(collective, requested, bytes, Placement{}, reason);
}

namespace {

// The argument check's message. Every rank contributes its signature and its
// error code as fields; a max-reduction of [fields, -fields] gives each
// field's maximum and (negated) minimum on every rank, so all ranks see the
// same disagreement and raise together. Besides the call's own signature the
// fields hold what else shapes its messages (the ring's segment size,
// hierarchical's piece count option) and
// the call's sequence number, which differs where a rank skipped a call, and
// the collective. The error field, last, is (rank + 1) * kErrorCodes + code,
// so the maximum names the highest failing rank and its reason.
//
// Calls up to their collective's carry limit that run its fewest-message
// algorithm carry their data in the same frame: the check and the call then
// share each step's message instead of taking two rounds, which is most of a
// small call's time. The limit is the cost model's (AlgorithmSelector::
// carry_limit), up to the frame's room, kCarriedPayloadBytes: the carried
// call is a recursive-doubling allreduce of its whole payload, which beyond
// some size costs more than the check alone and the best algorithm after
// it. An allreduce or a reduce-scatter reduces
// its whole vector there; an allgather's blocks, each rank's at its place,
// and a broadcast's data, the root's alone, are combined by byte-wise or,
// which leaves every rank's bytes where they were put.
//
// A frame travels as long as its call needs: its header (the length, the
// fields) and the payload it carries, which ranks that agree on the call
// size alike. Each receive takes up to a whole frame (a bounded receive), so
// ranks that disagree, whose frames differ in length, still exchange
// well-formed messages before they raise; and a frame is combined with one
// of another length by its fields alone. Example: an allreduce of 2 floats
// sends 8 + 176 + 8 = 192 bytes where the whole frame is 16568. The
// payload's length is a field too: ranks whose models differ on what to
// carry raise instead of returning what their own frames held.
constexpr int kFields = 12;
constexpr int kErrorField = kFields - 1;
constexpr int64_t kErrorCodes = 16;  // more than the highest ArgumentError
constexpr size_t kCarriedPayloadBytes = 16384;

struct CheckFrame {
  uint64_t length;  // of the frame as sent: header and payload
  int64_t fields[2 * kFields];
  alignas(16) unsigned char payload[kCarriedPayloadBytes];
};
constexpr size_t kFrameHeaderBytes = offsetof(CheckFrame, payload);

// Combines check frames: fields by maximum, and where the two carry payloads
// of the same length, the payload by a carried call's reduction over
// `payload_count` elements, or byte-wise or where it has none.
class CheckFrameCombiner final : public Combiner {
 public:
  CheckFrameCombiner(const Reduction* reduction, size_t payload_count)
      : reduction_(reduction), payload_count_(payload_count) {}

  void combine(const void* left, const void* right, void* out, size_t count) const override {
    const auto* l = static_cast<const CheckFrame*>(left);
    const auto* r = static_cast<const CheckFrame*>(right);
    auto* o = static_cast<CheckFrame*>(out);
    for (size_t i = 0; i < count; ++i) {
      for (int f = 0; f < 2 * kFields; ++f) o[i].fields[f] = std::max(l[i].fields[f], r[i].fields[f]);
      // Lengths that differ come from calls that differ, which the fields
      // show: the payload is not read, and the call raises.
      if (l[i].length != r[i].length) continue;
      if (reduction_ != nullptr) {
        reduction_->combine(l[i].payload, r[i].payload, o[i].payload, payload_count_);
        continue;
      }
      for (size_t b = 0; b < l[i].length - kFrameHeaderBytes; ++b) o[i].payload[b] = l[i].payload[b] | r[i].payload[b];
    }
  }

  void finalize(void* data, size_t count, int world_size) const override {
    if (reduction_ == nullptr) return;
    auto* frames = static_cast<CheckFrame*>(data);
    for (size_t i = 0; i < count; ++i) reduction_->finalize(frames[i].payload, payload_count_, world_size);
  }

 private:
  const Reduction* reduction_;
  size_t payload_count_;
};

// What the check's recursive doubling runs over: each frame it sends goes
// as a bounded message of its own length, and each frame that arrives must
// be as long as it says.
class CheckFrameTransport final : public Transport {
 public:
  explicit CheckFrameTransport(Transport& parent) : Transport(parent.layout()), parent_(parent) {}
  int rank() const override { return parent_.rank(); }
  int size() const override { return parent_.size(); }
  RequestPtr isend(int peer, const void* data, size_t bytes) override {
    return parent_.isend_bounded(peer, data, static_cast<const CheckFrame*>(data)->length, bytes);
  }
  RequestPtr irecv(int peer, void* data, size_t bytes) override {
    auto receive = std::make_unique<FrameReceive>(peer, static_cast<const CheckFrame*>(data));
    receive->transfer = parent_.irecv_bounded(peer, data, bytes, &receive->received);
    return receive;
  }
  size_t max_receive_window() const override { return parent_.max_receive_window(); }

 private:
  struct FrameReceive final : Request {
    FrameReceive(int peer, const CheckFrame* frame) : peer(peer), frame(frame) {}
    void wait() override {
      transfer->wait();
      if (received < kFrameHeaderBytes || received != frame->length) {
        throw TransportError("message size mismatch: rank " + std::to_string(peer) + " sent " +
                             std::to_string(received) + " bytes of an argument check's frame that says " +
                             (received < kFrameHeaderBytes ? std::string("nothing")
                                                           : std::to_string(frame->length)) +
                             "; the ranks are not running the same call");
      }
    }
    int peer;
    const CheckFrame* frame;
    size_t received = 0;
    RequestPtr transfer;
  };
  Transport& parent_;
};

}  // namespace

void Communicator::update_carry_limits() {
  carry_limits_.assign(all_collectives().size(), 0);
  for (Collective c : all_collectives()) {
    carry_limits_[static_cast<size_t>(c)] =
        selector_.carry_limit(c, kCarriedPayloadBytes, kFrameHeaderBytes, options_.ring_segment_bytes);
  }
}

size_t Communicator::carry_limit(Collective collective) const { return carry_limits_[static_cast<size_t>(collective)]; }

bool Communicator::carries_payload(Collective collective, Algorithm algorithm, size_t bytes,
                                   const Placement& placement) const {
  return options_.check_arguments && !placement.on_device() && bytes <= carry_limit(collective) &&
         algorithm == algorithms_of(collective).front();
}

Algorithm Communicator::resolve(Collective collective, Algorithm requested, size_t bytes, const Placement& placement,
                                std::string* reason) const {
  // A call the check can carry costs nothing beyond the check, which every
  // call pays: no other algorithm can be faster, whatever the model says
  // (PYALLREDUCE_ALGO's rules still come first).
  if (requested == Algorithm::kAuto && collective != Collective::kBarrier &&
      carries_payload(collective, algorithms_of(collective).front(), bytes, placement) &&
      selector_.rule_for(collective, bytes) == nullptr) {
    const Algorithm carried = algorithms_of(collective).front();
    if (reason != nullptr) {
      *reason = "at most " + std::to_string(carry_limit(collective)) + " bytes, the cost model's limit for the check";
    }
    return carried;
  }
  return selector_.choose(collective, requested, bytes, options_.ring_segment_bytes, reason);
}

std::string Communicator::agree(const Signature& mine, ArgumentError error, const CarriedCall* call) {
  Transport& t = transport();
  CheckFrame frame;
  // The payload's bytes that no rank's input fills (an allgather's other
  // blocks, a broadcast's on ranks but the root) are zeros for the byte-wise or.
  const size_t payload_bytes =
      call != nullptr ? std::max(call->input_at + call->input_bytes, call->output_at + call->output_bytes) : 0;
  const int64_t mine_fields[kFields] = {
      mine.count, mine.dtype, mine.op, mine.algorithm, mine.shape, mine.placement,
      static_cast<int64_t>(calls_), static_cast<int64_t>(options_.ring_segment_bytes),
      static_cast<int64_t>(mine.collective), static_cast<int64_t>(payload_bytes),
      static_cast<int64_t>(options_.hierarchical_pieces),
      error == ArgumentError::kNone ? 0 : (t.rank() + 1) * kErrorCodes + static_cast<int64_t>(error)};
  for (int i = 0; i < kFields; ++i) {
    frame.fields[i] = mine_fields[i];
    frame.fields[kFields + i] = -mine_fields[i];
  }
  frame.length = kFrameHeaderBytes + payload_bytes;
  std::memset(frame.payload, 0, payload_bytes);
  if (call != nullptr && call->input_bytes > 0) std::memcpy(frame.payload + call->input_at, call->input, call->input_bytes);
  const CheckFrameCombiner combiner(call != nullptr ? call->reduction : nullptr, call != nullptr ? call->count : 0);
  steps_.set_stage(call != nullptr ? "argument check (carrying the data)" : "argument check");
  if (check_transport_ == nullptr) check_transport_ = std::make_unique<CheckFrameTransport>(t);
  recursive_doubling_allreduce(CollectiveContext{*check_transport_, combiner, workspace_, ring_pipeline(), steps_},
                               Vector{&frame, &frame, 1, sizeof(CheckFrame)});
  auto max_of = [&](int i) { return frame.fields[i]; };
  auto min_of = [&](int i) { return -frame.fields[kFields + i]; };

  const std::string collective = collective_name(mine.collective);
  if (max_of(kErrorField) != 0) {
    const int64_t failing_rank = max_of(kErrorField) / kErrorCodes - 1;
    const auto reason = static_cast<ArgumentError>(max_of(kErrorField) % kErrorCodes);
    return collective + " rejected on rank " + std::to_string(failing_rank) + ": " + argument_error_text(reason) +
           " (see that rank's error for details)";
  }
  if (max_of(6) != min_of(6)) {
    return "ranks are at different calls on this communicator (call " + std::to_string(min_of(6)) + " and call " +
           std::to_string(max_of(6)) + "): a rank skipped a call, or made one the others did not";
  }
  if (max_of(8) != min_of(8)) {
    return std::string("ranks called different collectives at the same call (") +
           collective_name(static_cast<Collective>(min_of(8))) + " and " +
           collective_name(static_cast<Collective>(max_of(8))) + ")";
  }
  if (max_of(7) != min_of(7)) {
    return "ranks have different ring segment sizes (" + std::to_string(min_of(7)) + " and " +
           std::to_string(max_of(7)) + " bytes): set PYALLREDUCE_RING_SEGMENT_BYTES, or "
           "Communicator.ring_segment_bytes, alike on every rank";
  }
  if (max_of(10) != min_of(10)) {
    return "ranks have different hierarchical piece counts (" + std::to_string(min_of(10)) + " and " +
           std::to_string(max_of(10)) + ", 0 for the cost model's): set PYALLREDUCE_HIERARCHICAL_PIECES alike on "
           "every rank";
  }
  if (max_of(0) != min_of(0)) {
    return "ranks passed different element counts to the same " + collective + " (smallest " +
           std::to_string(min_of(0)) + ", largest " + std::to_string(max_of(0)) + ")";
  }
  if (max_of(1) != min_of(1)) {
    return "ranks passed different dtypes to the same " + collective + " (" +
           dtype_name(static_cast<DType>(min_of(1))) + " and " +
           dtype_name(static_cast<DType>(max_of(1))) + ")";
  }
  if (max_of(2) != min_of(2)) {
    return "ranks passed different ops to the same " + collective + " (" +
           op_name(static_cast<ReduceOp>(min_of(2))) + " and " +
           op_name(static_cast<ReduceOp>(max_of(2))) + ")";
  }
  if (max_of(3) != min_of(3)) {
    return "ranks chose different algorithms for the same " + collective + " (" +
           algorithm_name(static_cast<Algorithm>(min_of(3))) + " and " +
           algorithm_name(static_cast<Algorithm>(max_of(3))) +
           "): pass the same algorithm= and set PYALLREDUCE_ALGO alike on every rank";
  }
  if (max_of(4) != min_of(4)) {
    if (mine.collective == Collective::kBroadcast) {
      return "ranks named different roots for the same broadcast (" + std::to_string(min_of(4) - 1) + " and " +
             std::to_string(max_of(4) - 1) + ")";
    }
    return "ranks passed tensor lists of different sizes, or different bucket_bytes, to the same "
           "allreduce_coalesced";
  }
  if (max_of(5) != min_of(5)) {
    auto where = [](int64_t code) -> std::string {
      return code == 0 ? "host memory"
                       : std::string("CUDA over ") + device_transport_name(static_cast<DeviceTransportKind>(code));
    };
    return "ranks passed buffers in different places to the same " + collective + " (" + where(min_of(5)) + " and " +
           where(max_of(5)) + "): pass CUDA tensors on every rank or on none, and set "
           "PYALLREDUCE_CUDA_TRANSPORT alike";
  }
  if (max_of(9) != min_of(9)) {
    return "ranks disagree on carrying the same " + collective + " inside the argument check (payloads of " +
           std::to_string(min_of(9)) + " and " + std::to_string(max_of(9)) +
           " bytes): their cost models differ; give every rank the same constants (PYALLREDUCE_TUNE_FILE)";
  }
  if (call != nullptr && call->output_bytes > 0) {
    std::memcpy(call->output, frame.payload + call->output_at, call->output_bytes);
  }
  return "";
}

void Communicator::report_invalid_arguments(ArgumentError error) {
  // The rank's own error is what it raises, whatever happens here.
  try {
    run_call(CallInfo{"rejected call", 0, DType::kFloat32, false, ReduceOp::kSum, Algorithm::kAuto}, [&] {
      if (options_.check_arguments) {
        throw Disagreement(agree(Signature{Collective::kAllreduce, 0, 0, 0, 0, 0, 0}, error));
      }
      const std::string message = "call " + std::to_string(calls_) + " was rejected on rank " +
                                  std::to_string(rank()) + ": " + argument_error_text(error) +
                                  " (with PYALLREDUCE_CHECK=0 the ranks cannot agree to skip it)";
      break_with(message, message);
    });
  } catch (const std::exception&) {
  }
}

void Communicator::log_choice(const CallInfo& info, Algorithm requested) {
  std::string reason;
  const size_t bytes = info.count * element_size(info.dtype);
  const Collective collective = collective_from_name(info.operation);
  const Algorithm chosen = resolve(collective, requested, bytes, Placement{}, &reason);
  const auto key = std::make_tuple(static_cast<int>(collective), info.count, static_cast<int>(info.dtype),
                                   static_cast<int>(info.op), static_cast<int>(requested));
  if (!logged_.insert(key).second) return;
  std::string between;
  if (chosen == Algorithm::kHierarchical) {
    if (collective == Collective::kAllreduce) {
      between = std::string(", ") + algorithm_name(selector_.between_hosts(bytes, options_.ring_segment_bytes)) +
                " between hosts";
    }
    between += ", in " + std::to_string(hierarchical_pieces(collective, chosen, bytes, false)) + " piece(s)";
  }
  const bool carried = carries_payload(collective, chosen, bytes, Placement{});
  options_.log_selection("rank " + std::to_string(rank()) + "/" + std::to_string(size()) + ": " + info.operation +
                         " of " + std::to_string(info.count) + " x " + dtype_name(info.dtype) + " (" +
                         (info.reduces ? std::string(op_name(info.op)) + ", " : "") + algorithm_name(requested) +
                         ") -> " + algorithm_name(chosen) + between + (carried ? " inside the argument check" : "") +
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
  context_.begin_call(placement.stream, comm.transport().deadline());
}

void Communicator::run_algorithm(Transport& t, const Combiner& reduction, MemorySpace& memory, const void* input,
                                 void* output, size_t count, size_t element_bytes, Algorithm chosen, bool on_device) {
  const size_t bytes = count * element_bytes;
  const Algorithm between = chosen == Algorithm::kHierarchical
                                ? selector_.between_hosts(bytes, options_.ring_segment_bytes)
                                : Algorithm::kRing;
  run_allreduce(chosen,
                CollectiveContext{t, reduction, memory, ring_pipeline(), steps_, between,
                                  hierarchical_pieces(Collective::kAllreduce, chosen, bytes, on_device)},
                Vector{input, output, count, element_bytes});
}

size_t Communicator::hierarchical_pieces(Collective collective, Algorithm chosen, size_t bytes, bool on_device) const {
  if (chosen != Algorithm::kHierarchical || on_device) return 1;
  if (options_.hierarchical_pieces > 0) return options_.hierarchical_pieces;
  return selector_.hierarchical_pieces(collective, bytes, options_.ring_segment_bytes);
}

void Communicator::loopback(const void* input, void* output, size_t bytes, const Placement& placement) {
  const std::unique_lock<std::mutex> lock = exclusive_use();
  arm_deadline();
  steps_.set_stage("loopback");
  if (!placement.on_device()) {
    exchange(transport(), rank(), input, bytes, output, bytes);
    return;
  }
  const DeviceCall device(*this, placement);
  exchange(device->transport(), rank(), input, bytes, output, bytes);
}

std::vector<double> Communicator::ping_pong(int first, int second, size_t bytes, int repeats) {
  if (first == second || std::min(first, second) < 0 || std::max(first, second) >= size() || repeats < 1) {
    throw InvalidArgument("ping_pong needs two different ranks of the communicator and at least one repeat");
  }
  const std::unique_lock<std::mutex> lock = exclusive_use();
  std::vector<double> one_way;
  if (rank() != first && rank() != second) return one_way;
  arm_deadline();
  steps_.set_stage("ping-pong");
  Transport& t = transport();
  std::vector<unsigned char> message(bytes);
  const int peer = rank() == first ? second : first;
  for (int i = 0; i <= repeats; ++i) {
    const Clock::time_point start = Clock::now();
    if (rank() == first) t.isend(peer, message.data(), bytes)->wait();
    t.irecv(peer, message.data(), bytes)->wait();
    if (rank() == second) t.isend(peer, message.data(), bytes)->wait();
    if (i > 0) one_way.push_back(std::chrono::duration<double>(Clock::now() - start).count() / 2);
  }
  return one_way;
}

void Communicator::allreduce(const void* input, void* output, size_t count, DType dtype, ReduceOp op,
                             Algorithm algorithm, const Placement& placement) {
  const size_t bytes = count * element_size(dtype);
  const Algorithm chosen = resolve(Collective::kAllreduce, algorithm, bytes, placement);
  run_call(CallInfo{"allreduce", count, dtype, true, op, chosen}, [&] {
    Transport& t = transport();
    const Reduction reduction(dtype, op, bytes >= options_.streaming_store_bytes);
    if (options_.log_selection) log_choice(CallInfo{"allreduce", count, dtype, true, op, chosen}, algorithm);
    const ArgumentError objection = placement_error(placement);
    if (options_.check_arguments) {
      const bool carried = carries_payload(Collective::kAllreduce, chosen, bytes, placement);
      const CarriedCall call{input, bytes, 0, output, bytes, 0, &reduction, count};
      const std::string disagreement =
          agree(Signature{Collective::kAllreduce, static_cast<int64_t>(count), static_cast<int64_t>(dtype),
                          static_cast<int64_t>(op), static_cast<int64_t>(chosen), 0, placement_code(placement)},
                objection, carried ? &call : nullptr);
      if (!disagreement.empty()) throw Disagreement(disagreement);
      if (carried) return;
    } else if (objection != ArgumentError::kNone) {
      throw InvalidArgument(std::string("allreduce rejected: ") + argument_error_text(objection));
    }
    steps_.set_stage(algorithm_name(chosen));
    if (!placement.on_device()) {
      run_algorithm(t, reduction, workspace_, input, output, count, reduction.element_size(), chosen, false);
      return;
    }
    const DeviceCall device(*this, placement);
    const std::unique_ptr<Combiner> kernels = device->reduction(dtype, op);
    run_algorithm(device->transport(), *kernels, device->workspace(), input, output, count, reduction.element_size(),
                  chosen, true);
  });
}

namespace {

// One bucket of a coalesced call: spans [first, end), packed into the fusion
// buffer or (a single span) reduced where it lies, with `algorithm`.
struct Bucket {
  size_t first, end;
  bool packed;
  size_t bytes;
  Algorithm algorithm;
};

// What must match across ranks for a coalesced call to pair up: every span's
// count, the bucket size and the algorithm each bucket resolved to (auto
// resolves per bucket, on each rank), hashed (64-bit FNV-1a) into 62 bits so
// that the check can negate it.
int64_t layout_hash(const std::vector<Communicator::Span>& spans, size_t bucket_bytes,
                    const std::vector<Bucket>& buckets) {
  uint64_t hash = 1469598103934665603ull;
  auto mix = [&](uint64_t value) {
    for (int byte = 0; byte < 8; ++byte) {
      hash ^= (value >> (8 * byte)) & 0xFF;
      hash *= 1099511628211ull;
    }
  };
  mix(bucket_bytes);
  for (const auto& span : spans) mix(span.count);
  for (const Bucket& bucket : buckets) mix(static_cast<uint64_t>(bucket.algorithm));
  return static_cast<int64_t>(hash >> 2) + 1;  // never 0, the plain calls' value
}

}  // namespace

void Communicator::allreduce_coalesced(const std::vector<Span>& spans, DType dtype, ReduceOp op,
                                       Algorithm algorithm, size_t bucket_bytes, const Placement& placement) {
  if (bucket_bytes == 0) throw InvalidArgument("bucket_bytes must be positive");
  const size_t element_bytes = element_size(dtype);
  size_t total = 0;
  for (const Span& span : spans) total += span.count;
  // A span of at least direct_bytes is reduced where it lies: packing it would
  // move it through memory twice more (copy in, copy out), which costs more
  // than the per-call latency that fusing saves (the cost model's packing
  // limit). Buckets are runs of the consecutive smaller spans whose bytes add
  // up to at most bucket_bytes. Example, bucket_bytes = 100 and a packing
  // limit above it (so direct_bytes = 100), spans of 40, 50, 30, 120 and 10
  // bytes: [40, 50] packed; [30] alone, so in place; [120] in place; [10]
  // alone. Runs of empty spans only are skipped.
  const size_t direct_bytes = std::min(bucket_bytes, packing_limit(algorithm));
  auto span_bytes = [&](size_t i) { return spans[i].count * element_bytes; };
  std::vector<Bucket> buckets;
  for (size_t first = 0; first < spans.size();) {
    size_t end = first;
    size_t packed_bytes = 0;
    while (end < spans.size() && span_bytes(end) < direct_bytes && packed_bytes + span_bytes(end) <= bucket_bytes) {
      packed_bytes += span_bytes(end);
      ++end;
    }
    const bool packed = end - first > 1;
    if (!packed) {
      end = first + 1;
      packed_bytes = span_bytes(first);
    }
    if (!packed || packed_bytes > 0) {
      buckets.push_back(Bucket{first, end, packed, packed_bytes,
                               selector_.choose(Collective::kAllreduce, algorithm, packed_bytes,
                                                options_.ring_segment_bytes)});
    }
    first = end;
  }

  run_call(CallInfo{"allreduce_coalesced", total, dtype, true, op, algorithm}, [&] {
    const ArgumentError objection = placement_error(placement);
    if (options_.check_arguments) {
      const std::string disagreement =
          agree(Signature{Collective::kAllreduce, static_cast<int64_t>(total), static_cast<int64_t>(dtype),
                          static_cast<int64_t>(op), static_cast<int64_t>(algorithm),
                          layout_hash(spans, bucket_bytes, buckets), placement_code(placement)},
                objection);
      if (!disagreement.empty()) throw Disagreement(disagreement);
    } else if (objection != ArgumentError::kNone) {
      throw InvalidArgument(std::string("allreduce_coalesced rejected: ") + argument_error_text(objection));
    }
    std::optional<DeviceCall> device_call;
    if (placement.on_device()) device_call.emplace(*this, placement);
    DeviceContext* device = device_call ? device_call->operator->() : nullptr;
    Transport& t = device != nullptr ? device->transport() : transport();
    MemorySpace& workspace = device != nullptr ? device->workspace() : workspace_;
    MemorySpace& fusion = device != nullptr ? device->fusion() : fusion_;
    const std::unique_ptr<Combiner> kernels = device != nullptr ? device->reduction(dtype, op) : nullptr;
    for (const Bucket& bucket : buckets) {
      const Reduction host_reduction(dtype, op, bucket.bytes >= options_.streaming_store_bytes);
      const Combiner& reduction = kernels != nullptr ? *kernels : static_cast<const Combiner&>(host_reduction);
      steps_.set_stage(algorithm_name(bucket.algorithm));
      if (!bucket.packed) {
        const Span& span = spans[bucket.first];
        run_algorithm(t, reduction, workspace, span.data, span.data, span.count, element_bytes, bucket.algorithm,
                      device != nullptr);
        continue;
      }
      char* packed = static_cast<char*>(fusion.reserve(bucket.bytes));
      char* cursor = packed;
      for (size_t i = bucket.first; i < bucket.end; ++i) {
        fusion.copy(cursor, spans[i].data, span_bytes(i));
        cursor += span_bytes(i);
      }
      run_algorithm(t, reduction, workspace, packed, packed, bucket.bytes / element_bytes, element_bytes,
                    bucket.algorithm, device != nullptr);
      cursor = packed;
      for (size_t i = bucket.first; i < bucket.end; ++i) {
        fusion.copy(spans[i].data, cursor, span_bytes(i));
        cursor += span_bytes(i);
      }
    }
  });
}

template <class Run>
void Communicator::run_collective(const CallInfo& info, Algorithm requested, const Signature& signature,
                                  const Placement& placement, ArgumentError objection, const CarriedCall* carried,
                                  Run run) {
  run_call(info, [&] {
    if (options_.log_selection) log_choice(info, requested);
    if (objection == ArgumentError::kNone) objection = placement_error(placement);
    if (options_.check_arguments) {
      const std::string disagreement = agree(signature, objection, carried);
      if (!disagreement.empty()) throw Disagreement(disagreement);
      if (carried != nullptr) return;
    } else if (objection != ArgumentError::kNone) {
      throw InvalidArgument(std::string(info.operation) + " rejected: " + argument_error_text(objection));
    }
    steps_.set_stage(algorithm_name(info.algorithm));
    if (!placement.on_device()) {
      const Reduction reduction(info.dtype, info.op,
                                info.count * element_size(info.dtype) >= options_.streaming_store_bytes);
      run(transport(), workspace_, fusion_, static_cast<const Combiner&>(reduction));
      return;
    }
    const DeviceCall device(*this, placement);
    const std::unique_ptr<Combiner> kernels = device->reduction(info.dtype, info.op);
    run(device->transport(), device->workspace(), device->fusion(), *kernels);
  });
}

void Communicator::reduce_scatter(const void* input, void* output, size_t count, DType dtype, ReduceOp op,
                                  Algorithm algorithm, const Placement& placement) {
  const size_t p = static_cast<size_t>(size());
  const size_t element_bytes = element_size(dtype);
  const size_t whole_bytes = p * count * element_bytes;
  const Algorithm chosen = resolve(Collective::kReduceScatter, algorithm, whole_bytes, placement);
  const Signature signature{Collective::kReduceScatter, static_cast<int64_t>(count), static_cast<int64_t>(dtype),
                            static_cast<int64_t>(op), static_cast<int64_t>(chosen), 0, placement_code(placement)};
  const Reduction carried_reduction(dtype, op, whole_bytes >= options_.streaming_store_bytes);
  const CarriedCall carried{input, whole_bytes, 0, output, count * element_bytes,
                            static_cast<size_t>(rank()) * count * element_bytes, &carried_reduction, p * count};
  const bool carry = carries_payload(Collective::kReduceScatter, chosen, whole_bytes, placement);
  run_collective(CallInfo{"reduce_scatter", p * count, dtype, true, op, chosen}, algorithm, signature, placement,
                 ArgumentError::kNone, carry ? &carried : nullptr,
                 [&](Transport& t, MemorySpace& workspace, MemorySpace& staging, const Combiner& reduction) {
                   // The algorithms reduce a whole vector; this rank's block of it is the result.
                   char* whole = static_cast<char*>(staging.reserve(whole_bytes));
                   const size_t pieces =
                       hierarchical_pieces(Collective::kReduceScatter, chosen, whole_bytes, placement.on_device());
                   run_reduce_scatter(chosen,
                                      CollectiveContext{t, reduction, workspace, ring_pipeline(), steps_,
                                                        Algorithm::kRing, pieces},
                                      Vector{input, whole, p * count, element_bytes});
                   workspace.copy(output, whole + static_cast<size_t>(rank()) * count * element_bytes,
                                  count * element_bytes);
                 });
}

void Communicator::allgather(const void* input, void* output, size_t count, DType dtype, Algorithm algorithm,
                             const Placement& placement) {
  const size_t p = static_cast<size_t>(size());
  const size_t element_bytes = element_size(dtype);
  const size_t block_bytes = count * element_bytes;
  const Algorithm chosen = resolve(Collective::kAllgather, algorithm, p * block_bytes, placement);
  const Signature signature{Collective::kAllgather, static_cast<int64_t>(count), static_cast<int64_t>(dtype), 0,
                            static_cast<int64_t>(chosen), 0, placement_code(placement)};
  const CarriedCall carried{input, block_bytes, static_cast<size_t>(rank()) * block_bytes, output, p * block_bytes, 0,
                            nullptr, 0};
  const bool carry = carries_payload(Collective::kAllgather, chosen, p * block_bytes, placement);
  run_collective(CallInfo{"allgather", p * count, dtype, false, ReduceOp::kSum, chosen}, algorithm, signature,
                 placement, ArgumentError::kNone, carry ? &carried : nullptr,
                 [&](Transport& t, MemorySpace& workspace, MemorySpace&, const Combiner& reduction) {
                   char* mine = static_cast<char*>(output) + static_cast<size_t>(rank()) * block_bytes;
                   if (mine != input) workspace.copy(mine, input, block_bytes);
                   const size_t pieces =
                       hierarchical_pieces(Collective::kAllgather, chosen, p * block_bytes, placement.on_device());
                   run_allgather(chosen,
                                 CollectiveContext{t, reduction, workspace, ring_pipeline(), steps_,
                                                   Algorithm::kRing, pieces},
                                 Vector{output, output, p * count, element_bytes});
                 });
}

void Communicator::broadcast(void* data, size_t count, DType dtype, int root, Algorithm algorithm,
                             const Placement& placement) {
  const size_t element_bytes = element_size(dtype);
  const size_t bytes = count * element_bytes;
  const Algorithm chosen = resolve(Collective::kBroadcast, algorithm, bytes, placement);
  const bool root_ok = root >= 0 && root < size();
  // The root travels as root + 1, so that 0 stays "nothing to compare".
  const Signature signature{Collective::kBroadcast, static_cast<int64_t>(count), static_cast<int64_t>(dtype), 0,
                            static_cast<int64_t>(chosen), root_ok ? root + 1 : 0, placement_code(placement)};
  const CarriedCall carried{data, rank() == root ? bytes : 0, 0, data, bytes, 0, nullptr, 0};
  const bool carry = carries_payload(Collective::kBroadcast, chosen, bytes, placement);
  run_collective(CallInfo{"broadcast", count, dtype, false, ReduceOp::kSum, chosen}, algorithm, signature,
                 placement, root_ok ? ArgumentError::kNone : ArgumentError::kBadRoot, carry ? &carried : nullptr,
                 [&](Transport& t, MemorySpace& workspace, MemorySpace&, const Combiner& reduction) {
                   run_broadcast(chosen,
                                 CollectiveContext{t, reduction, workspace, ring_pipeline(), steps_},
                                 Vector{data, data, count, element_bytes}, root);
                 });
}

void Communicator::barrier() {
  run_call(CallInfo{"barrier", 0, DType::kFloat32, false, ReduceOp::kSum, Algorithm::kAuto}, [&] {
    const std::string disagreement =
        agree(Signature{Collective::kBarrier, 0, 0, 0, 0, 0, 0}, ArgumentError::kNone);
    if (!disagreement.empty()) throw Disagreement(disagreement);
  });
}

}  // namespace pyallreduce
