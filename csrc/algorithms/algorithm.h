// What every allreduce algorithm is given, and the algorithms themselves.
// Algorithms see only the Transport interface and a Combiner: they never know
// which transport carries their messages or what the elements are.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>

#include "../reduce/reduction.h"
#include "../transport/transport.h"

namespace pyallreduce {

// Where a call's vectors live (host memory, or a GPU's in stream order), and
// the scratch region an algorithm may use there. Algorithms reach memory only
// through this, so the same algorithm runs on host or device buffers. The
// region is owned by the communicator and reused across calls, so a call does
// not allocate (and fault in) fresh temporaries every time.
class MemorySpace {
 public:
  virtual ~MemorySpace() = default;
  // A 64-byte aligned region of at least `bytes`, valid until the next reserve.
  virtual void* reserve(size_t bytes) = 0;
  // Copies `bytes` from `source` to `target` (which do not overlap), ordered
  // after every operation issued on this memory before it.
  virtual void copy(void* target, const void* source, size_t bytes) = 0;
};

class HostMemory final : public MemorySpace {
 public:
  void* reserve(size_t bytes) override;
  void copy(void* target, const void* source, size_t bytes) override;

 private:
  struct FreeDeleter { void operator()(void* p) const { std::free(p); } };
  std::unique_ptr<void, FreeDeleter> region_;
  size_t capacity_ = 0;
};

// The vector being reduced: this rank's contribution is read from `input`
// and the result written to `data`, `count` elements of `element_size` bytes.
// In place, input == data; otherwise they do not overlap, and an algorithm
// reads each input element before writing that element of `data`, so no
// separate copy of the input is ever made.
struct Vector {
  const void* input;
  void* data;
  size_t count;
  size_t element_size;
  char* at(size_t element) const { return static_cast<char*>(data) + element * element_size; }
  const char* input_at(size_t element) const {
    return static_cast<const char*>(input) + element * element_size;
  }
  size_t bytes(size_t elements) const { return elements * element_size; }
  // The same vector once its input has been consumed: from then on the
  // algorithm works on `data` alone.
  Vector in_place() const { return Vector{data, data, count, element_size}; }
  // Copies the input into `data` where they differ (for steps that have
  // nothing to combine it with).
  void take_input(MemorySpace& memory) const;
};

// Where a call is, for its error messages and the flight recorder: the
// communicator names the stage (the argument check, or the algorithm) and
// the algorithm names each step before it waits in it. Another thread may
// read it while the call runs.
class StepTracker {
 public:
  void set_stage(const char* stage) {
    stage_.store(stage, std::memory_order_relaxed);
    phase_.store(nullptr, std::memory_order_relaxed);
  }
  // Step `step` (from 0) of `steps` in `phase`, e.g. ("reduce-scatter", 2, 6).
  void enter(const char* phase, size_t step, size_t steps) {
    phase_.store(phase, std::memory_order_relaxed);
    step_.store(step, std::memory_order_relaxed);
    steps_.store(steps, std::memory_order_relaxed);
  }
  // E.g. "ring reduce-scatter step 3 of 6" (steps counted from 1), or
  // "argument check" before its first step.
  std::string describe() const;

 private:
  std::atomic<const char*> stage_{nullptr};
  std::atomic<const char*> phase_{nullptr};
  std::atomic<size_t> step_{0};
  std::atomic<size_t> steps_{0};
};

// How a ring phase pipelines its chunks: cut into segments of `segment_bytes`,
// with up to `receive_window` receives posted at once (fewer where the
// transport allows fewer: Transport::max_receive_window).
struct RingPipeline {
  size_t segment_bytes;
  size_t receive_window;
};

struct CollectiveContext {
  Transport& transport;
  const Combiner& reduction;  // unused by collectives that do not reduce
  MemorySpace& memory;        // where the vector lives; scratch comes from here
  RingPipeline ring;
  StepTracker& steps;
  // hierarchical: the flat algorithm that runs between hosts.
  Algorithm between_hosts = Algorithm::kRing;
  // hierarchical: how many pieces its levels pipeline (piece k crosses the
  // network while piece k + 1 is reduced inside the host), where the
  // between-hosts algorithm is the ring and the transport's transfers can
  // be polled; 1 runs the levels one after the other. It shapes the call's
  // messages, so it is alike on every rank.
  size_t pieces = 1;
};

// Every allreduce leaves the finalized result in vec.data on every rank.
void ring_allreduce(const CollectiveContext& ctx, Vector vec);
void halving_doubling_allreduce(const CollectiveContext& ctx, Vector vec);
void recursive_doubling_allreduce(const CollectiveContext& ctx, Vector vec);
void hierarchical_allreduce(const CollectiveContext& ctx, Vector vec);

// The other collectives work on whole vectors of p equal blocks (vec.count a
// multiple of p; block i is ring_chunk(vec.count, p, i)), rank r's block
// being block r; the communicator copies blocks in and out of its callers'
// buffers.
//
// A reduce-scatter leaves block r of vec.data reduced over every rank and
// finalized; the other blocks of vec.data are scratch.
void ring_reduce_scatter_blocks(const CollectiveContext& ctx, Vector vec);
void halving_reduce_scatter_blocks(const CollectiveContext& ctx, Vector vec);
void hierarchical_reduce_scatter_blocks(const CollectiveContext& ctx, Vector vec);
// An allgather starts from block r of vec.data (in place) and leaves every
// block on every rank.
void ring_allgather_blocks(const CollectiveContext& ctx, Vector vec);
void recursive_doubling_allgather_blocks(const CollectiveContext& ctx, Vector vec);
void hierarchical_allgather_blocks(const CollectiveContext& ctx, Vector vec);
// A broadcast copies vec.data of rank `root` into vec.data of every rank
// (vec in place; any count).
void binomial_tree_broadcast(const CollectiveContext& ctx, Vector vec, int root);
void scatter_allgather_broadcast(const CollectiveContext& ctx, Vector vec, int root);

// Run the concrete algorithm `algorithm` of each collective.
void run_allreduce(Algorithm algorithm, const CollectiveContext& ctx, Vector vec);
void run_reduce_scatter(Algorithm algorithm, const CollectiveContext& ctx, Vector vec);
void run_allgather(Algorithm algorithm, const CollectiveContext& ctx, Vector vec);
void run_broadcast(Algorithm algorithm, const CollectiveContext& ctx, Vector vec, int root);

// The ring's halves, for algorithms built from them. The vector is cut into
// p chunks; chunk i covers ring_chunk(n, p, i), the first n % p chunks one
// element longer. Example n = 10, p = 4: sizes 3, 3, 2, 2, from 0, 3, 6, 8.
struct ElementRange {
  size_t begin, end;
};
ElementRange ring_chunk(size_t n, int p, int i);
// The chunk rank `rank` holds reduced after the reduce-scatter: its right
// neighbour's, (rank + 1) mod p (see ring.cpp's worked example).
int ring_owned_chunk(int rank, int p);
// Leaves chunk `owned` of vec.data reduced over every rank, not finalized;
// the other chunks of vec.data hold partial results. `owned` is rank + c
// (mod p) for one c on every rank, so that neighbours' streams pair up: the
// allreduce uses ring_owned_chunk(rank, p), the reduce-scatter rank itself.
void ring_reduce_scatter(const CollectiveContext& ctx, Vector vec, int owned);
// From chunk `owned` of vec.data on every rank (vec in place; `owned` as for
// ring_reduce_scatter), the whole vector everywhere.
void ring_allgather(const CollectiveContext& ctx, Vector vec, int owned);

// A ring phase run step by step, so that phases on different groups of
// ranks can be in flight at once (run_pipeline).
enum class PhaseState { kWaiting, kMoved, kFinished };
class RingPhase {
 public:
  virtual ~RingPhase() = default;
  // With `block`, runs the phase to its end and returns kFinished. Without,
  // lands at most one segment that has arrived and posts what that allows,
  // without waiting: kMoved if it landed one, kFinished once every segment
  // has landed and every send is complete, kWaiting otherwise.
  virtual PhaseState advance(bool block) = 0;
};
// ring_reduce_scatter and ring_allgather as phases, begun (their first
// transfers posted) on return; null where there is nothing to send (one
// rank). The reduce-scatter receives into `slots`, of
// ring_reduce_scatter_slot_bytes(ctx, vec), which nothing else may use
// until it has finished.
size_t ring_reduce_scatter_slot_bytes(const CollectiveContext& ctx, const Vector& vec);
std::unique_ptr<RingPhase> ring_reduce_scatter_phase(const CollectiveContext& ctx, Vector vec, int owned,
                                                     void* slots);
std::unique_ptr<RingPhase> ring_allgather_phase(const CollectiveContext& ctx, Vector vec, int owned);

// A pipeline of ring phases over two groups ("levels", e.g. inside a host
// and between hosts): each level runs its stages in their order in `stages`,
// one at a time, and a stage begins once the stage it follows (on the other
// level) has finished. Every rank of a group lists that group's stages in the
// same order, so their messages pair up. While both levels have a phase in
// flight it polls both; while one has, it waits in that one's transfers.
struct PipelineStage {
  int level;           // 0 or 1
  int follows;         // the index in `stages` of the stage it waits for, or -1
  const char* stage;   // for the StepTracker, e.g. "hierarchical, inside the host:"
  // Does the stage's own local work and begins its phase (null: none).
  std::function<std::unique_ptr<RingPhase>()> begin;
};
void run_pipeline(Transport& transport, StepTracker& steps, const std::vector<PipelineStage>& stages);

// A combiner that combines as `inner` does and leaves finalizing to the
// caller: for a reduction run in parts (hierarchical's levels), finalized
// once over the whole group at the end.
class PartialCombiner final : public Combiner {
 public:
  explicit PartialCombiner(const Combiner& inner) : inner_(inner) {}
  void combine(const void* left, const void* right, void* out, size_t count) const override {
    inner_.combine(left, right, out, count);
  }
  void finalize(void*, size_t, int) const override {}

 private:
  const Combiner& inner_;
};

}  // namespace pyallreduce
