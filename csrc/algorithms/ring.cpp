// Ring allreduce: a reduce-scatter then an allgather around the ring
// 0 -> 1 -> ... -> p-1 -> 0, each p-1 steps long. The vector is cut into p
// chunks; at every step each rank sends one chunk to its right neighbour and
// receives one from its left. Every rank sends and receives 2n(p-1)/p bytes,
// the bandwidth floor, in 2(p-1) steps.
//
// Worked example, p = 3, rank r = 1, xk = rank k's input (indices mod 3):
//   reduce-scatter step s sends chunk r-s and receives chunk r-s-1:
//     s=0: send chunk 1 (x1), receive chunk 0 (x0) and combine: x0+x1
//     s=1: send chunk 0 (x0+x1), receive chunk 2 (x2+x0 from rank 0) and
//          combine: x2+x0+x1
//   after p-1 steps rank r owns chunk r+1 = 2, reduced over all ranks.
//   allgather step s sends chunk r+1-s and receives chunk r-s:
//     s=0: send chunk 2, receive chunk 1;  s=1: send chunk 1, receive chunk 0.
// The chunk sent at step s+1 is the one received at step s, so the phases are
// streams: what arrives from the left is landed (combined or stored) and, until
// the last step, forwarded to the right.
//
// Out of place, the input is read where it lies: chunk r is sent from it at
// step 0, and every other chunk is combined from it into the output when its
// partial sum arrives. Every chunk of the output is written once, by a combine
// or by the allgather, so there is no copy of the input.
//
// Pipelining: chunks are cut into segments of ctx.ring.segment_bytes, and a
// phase runs as steps: at step k a rank sends the k-th segment of its
// outgoing stream to the right and receives the k-th of its incoming stream
// from the left. The right neighbour's incoming stream lists the same chunks
// in the same order as this rank's outgoing one, so step k of every rank
// pairs with step k of its neighbours. Up to ctx.ring.receive_window steps
// are posted ahead, so while one segment is being combined the next ones are
// already arriving; on a grouped transport (NCCL) the window is 1 and each
// step is one exchange.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "algorithm.h"

namespace pyallreduce {
namespace {

size_t chunk_begin(size_t n, int p, int i) {
  const size_t index = static_cast<size_t>(i);
  return index * (n / p) + std::min(index, n % p);
}

int mod(int a, int p) { return ((a % p) + p) % p; }

// A segment is at most the largest chunk (chunk 0; see chunk_begin), so a
// segment size beyond the vector's means one segment per chunk, and the
// scratch is at most `window` chunks whatever the segment size is.
// Example n = 10, p = 4 with 1 MiB segments of float32: 3 elements each.
size_t segment_elements(const CollectiveContext& ctx, const Vector& vec) {
  const size_t largest_chunk = std::max<size_t>(1, chunk_begin(vec.count, ctx.transport.size(), 1));
  return std::clamp<size_t>(ctx.ring.segment_bytes / vec.element_size, 1, largest_chunk);
}

size_t receive_window(const CollectiveContext& ctx) {
  return std::clamp<size_t>(ctx.ring.receive_window, 1, ctx.transport.max_receive_window());
}

struct Segment {
  size_t offset;  // in elements
  size_t count;
  bool forward;   // send on to the right neighbour once landed
};

// Appends chunk `chunk`'s segments (of at most `segment_elems` elements) to
// `plan`. An empty chunk (n < p) still gets one empty segment, so that every
// chunk is at least one step and a rank's first outgoing segment never waits
// for an incoming one (which would break the lockstep on a grouped transport).
void append_chunk(std::vector<Segment>& plan, size_t n, int p, int chunk, size_t segment_elems,
                  bool forward) {
  const size_t begin = chunk_begin(n, p, chunk);
  const size_t end = chunk_begin(n, p, chunk + 1);
  if (begin == end) plan.push_back({begin, 0, forward});
  for (size_t offset = begin; offset < end; offset += segment_elems) {
    plan.push_back({offset, std::min(segment_elems, end - offset), forward});
  }
}

// One phase. The outgoing stream is `first` (read from `first_source`), then
// every incoming segment marked forward, in order, sent from vec.data once it
// has been landed; the forwarded segments are a prefix of `incoming`. Segment
// j is received into receive_buffer(j) and handed to land(j). A receive buffer
// is reused once its segment has been landed: receive_buffer(j + window) may
// equal receive_buffer(j).
//
// Before waiting for receive k, receives and sends through step
// k + window - 1 are posted, a send only once its data is there. Outgoing
// segment i >= first.size() is incoming segment i - first.size(), landed at
// step i - first.size() < i, so with window 1 step k's send is always there
// before step k's wait. Example, window 1, first = {a} and incoming = {b, c}
// with b forwarded: step 0 posts send a and receive b; step 1 send b (landed
// at step 0) and receive c.
class RingPhaseSteps final : public RingPhase {
 public:
  RingPhaseSteps(const CollectiveContext& ctx, const char* phase, const Vector& vec, const void* first_source,
                 std::vector<Segment> first, std::vector<Segment> incoming,
                 std::function<void*(size_t)> receive_buffer, std::function<void(size_t)> land)
      : t_(ctx.transport),
        steps_(ctx.steps),
        phase_(phase),
        vec_(vec),
        first_source_(static_cast<const char*>(first_source)),
        first_(std::move(first)),
        incoming_(std::move(incoming)),
        receive_buffer_(std::move(receive_buffer)),
        land_(std::move(land)),
        right_(mod(t_.rank() + 1, t_.size())),
        left_(mod(t_.rank() - 1, t_.size())),
        window_(receive_window(ctx)),
        outgoing_(first_.size() + static_cast<size_t>(std::count_if(incoming_.begin(), incoming_.end(),
                                                                    [](const Segment& s) { return s.forward; }))),
        receives_(incoming_.size()) {
    post_through(window_ - 1);
  }

  PhaseState advance(bool block) override {
    bool moved = false;
    while (landed_ < incoming_.size()) {
      steps_.enter(phase_, landed_, incoming_.size());
      RequestPtr& next = receives_[landed_];
      if (block) {
        next->wait();
      } else if (!next->test()) {
        return moved ? PhaseState::kMoved : PhaseState::kWaiting;
      }
      next.reset();
      land_(landed_);
      ++landed_;
      moved = true;
      post_through(landed_ + window_ - 1);
      if (!block) return PhaseState::kMoved;  // one segment per poll: the other phases get theirs
    }
    post_through(SIZE_MAX);
    if (block) {
      wait_all(sends_);
    } else {
      sends_.erase(std::remove_if(sends_.begin(), sends_.end(), [](const RequestPtr& r) { return r->test(); }),
                   sends_.end());
      if (!sends_.empty()) return moved ? PhaseState::kMoved : PhaseState::kWaiting;
    }
    return PhaseState::kFinished;
  }

 private:
  void post_through(size_t last_step) {
    for (; next_receive_ < incoming_.size() && next_receive_ <= last_step; ++next_receive_) {
      receives_[next_receive_] =
          t_.irecv(left_, receive_buffer_(next_receive_), vec_.bytes(incoming_[next_receive_].count));
    }
    for (; next_send_ < outgoing_ && next_send_ <= last_step; ++next_send_) {
      if (next_send_ < first_.size()) {
        const Segment& s = first_[next_send_];
        sends_.push_back(t_.isend(right_, first_source_ + vec_.bytes(s.offset), vec_.bytes(s.count)));
      } else if (next_send_ - first_.size() < landed_) {
        const Segment& s = incoming_[next_send_ - first_.size()];
        sends_.push_back(t_.isend(right_, vec_.at(s.offset), vec_.bytes(s.count)));
      } else {
        break;  // its data has not arrived yet
      }
    }
  }

  Transport& t_;
  StepTracker& steps_;
  const char* phase_;
  Vector vec_;
  const char* first_source_;
  std::vector<Segment> first_, incoming_;
  std::function<void*(size_t)> receive_buffer_;
  std::function<void(size_t)> land_;
  int right_, left_;
  size_t window_, outgoing_;
  std::vector<RequestPtr> receives_;
  std::vector<RequestPtr> sends_;
  size_t next_receive_ = 0, next_send_ = 0, landed_ = 0;
};

}  // namespace

ElementRange ring_chunk(size_t n, int p, int i) { return {chunk_begin(n, p, i), chunk_begin(n, p, i + 1)}; }

int ring_owned_chunk(int rank, int p) { return mod(rank + 1, p); }

size_t ring_reduce_scatter_slot_bytes(const CollectiveContext& ctx, const Vector& vec) {
  return vec.bytes(segment_elements(ctx, vec)) * receive_window(ctx);
}

std::unique_ptr<RingPhase> ring_reduce_scatter_phase(const CollectiveContext& ctx, Vector vec, int owned,
                                                     void* slots) {
  const int p = ctx.transport.size();
  const size_t n = vec.count;
  if (p == 1) {
    vec.take_input(ctx.memory);
    return nullptr;
  }
  const size_t segment_elems = segment_elements(ctx, vec);
  // Combine what arrives with this rank's input into the output (the partial
  // sum from the left on the left), then forward it. The stream starts one
  // chunk before the owned one, so that the owned chunk arrives last: with
  // owned = r + 1 (the allreduce), rank r starts with chunk r, as in the
  // worked example.
  const int start = owned - 1;
  std::vector<Segment> first, incoming;
  append_chunk(first, n, p, mod(start, p), segment_elems, false);
  for (int s = 0; s < p - 1; ++s) append_chunk(incoming, n, p, mod(start - s - 1, p), segment_elems, s < p - 2);
  const size_t window = receive_window(ctx);
  const size_t slot_bytes = vec.bytes(segment_elems);
  auto slot = [slots = static_cast<char*>(slots), window, slot_bytes](size_t j) {
    return slots + (j % window) * slot_bytes;
  };
  std::vector<size_t> offsets, counts;
  for (const Segment& s : incoming) {
    offsets.push_back(s.offset);
    counts.push_back(s.count);
  }
  const Combiner& reduction = ctx.reduction;
  return std::make_unique<RingPhaseSteps>(
      ctx, "reduce-scatter", vec, vec.input, std::move(first), std::move(incoming), slot,
      [slot, vec, &reduction, offsets = std::move(offsets), counts = std::move(counts)](size_t j) {
        reduction.combine(slot(j), vec.input_at(offsets[j]), vec.at(offsets[j]), counts[j]);
      });
}

std::unique_ptr<RingPhase> ring_allgather_phase(const CollectiveContext& ctx, Vector vec, int owned) {
  const int p = ctx.transport.size();
  const size_t n = vec.count;
  if (p == 1) return nullptr;
  const size_t segment_elems = segment_elements(ctx, vec);
  // What arrives is already final: receive it in place and forward it.
  std::vector<Segment> first, incoming;
  append_chunk(first, n, p, mod(owned, p), segment_elems, false);
  for (int s = 0; s < p - 1; ++s) append_chunk(incoming, n, p, mod(owned - s - 1, p), segment_elems, s < p - 2);
  std::vector<size_t> offsets;
  for (const Segment& s : incoming) offsets.push_back(s.offset);
  return std::make_unique<RingPhaseSteps>(
      ctx, "allgather", vec, vec.data, std::move(first), std::move(incoming),
      [vec, offsets = std::move(offsets)](size_t j) -> void* { return vec.at(offsets[j]); }, [](size_t) {});
}

void ring_reduce_scatter(const CollectiveContext& ctx, Vector vec, int owned) {
  void* slots = ctx.memory.reserve(ring_reduce_scatter_slot_bytes(ctx, vec));
  if (auto phase = ring_reduce_scatter_phase(ctx, vec, owned, slots)) phase->advance(true);
}

void ring_allgather(const CollectiveContext& ctx, Vector vec, int owned) {
  if (auto phase = ring_allgather_phase(ctx, vec, owned)) phase->advance(true);
}

void ring_allreduce(const CollectiveContext& ctx, Vector vec) {
  const int p = ctx.transport.size();
  const int owned = ring_owned_chunk(ctx.transport.rank(), p);
  ring_reduce_scatter(ctx, vec, owned);
  const ElementRange chunk = ring_chunk(vec.count, p, owned);
  ctx.reduction.finalize(vec.at(chunk.begin), chunk.end - chunk.begin, p);
  ring_allgather(ctx, vec.in_place(), owned);
}

// The reduce-scatter collective: chunk r to rank r, so the ring's stream
// starts at chunk r - 1. Example p = 3, rank 1: send chunk 0, then combine
// chunk 2 and forward it, then combine chunk 1, which stays.
void ring_reduce_scatter_blocks(const CollectiveContext& ctx, Vector vec) {
  const int p = ctx.transport.size();
  const int r = ctx.transport.rank();
  ring_reduce_scatter(ctx, vec, r);
  const ElementRange block = ring_chunk(vec.count, p, r);
  ctx.reduction.finalize(vec.at(block.begin), block.end - block.begin, p);
}

void ring_allgather_blocks(const CollectiveContext& ctx, Vector vec) {
  ring_allgather(ctx, vec, ctx.transport.rank());
}

}  // namespace pyallreduce
