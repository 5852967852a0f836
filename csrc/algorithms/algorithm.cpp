#include "algorithm.h"

#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

namespace pyallreduce {

void* HostMemory::reserve(size_t bytes) {
  if (bytes > capacity_) {
    constexpr size_t kAlignment = 64;
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    region_.reset();  // release the old region first, so peak memory stays one region
    capacity_ = 0;
    void* region = std::aligned_alloc(kAlignment, rounded);
    if (region == nullptr) throw std::bad_alloc();
    region_.reset(region);
    capacity_ = rounded;
  }
  return region_.get();
}

void HostMemory::copy(void* target, const void* source, size_t bytes) {
  if (bytes > 0) std::memcpy(target, source, bytes);
}

std::string StepTracker::describe() const {
  const char* stage = stage_.load(std::memory_order_relaxed);
  const char* phase = phase_.load(std::memory_order_relaxed);
  std::string text = stage != nullptr ? stage : "setup";
  if (phase != nullptr) {
    text += std::string(" ") + phase + " step " + std::to_string(step_.load(std::memory_order_relaxed) + 1) +
            " of " + std::to_string(steps_.load(std::memory_order_relaxed));
  }
  return text;
}

void run_pipeline(Transport& transport, StepTracker& steps, const std::vector<PipelineStage>& stages) {
  std::vector<bool> finished(stages.size(), false);
  auto next_on = [&](int level, size_t from) {
    while (from < stages.size() && stages[from].level != level) ++from;
    return from;
  };
  size_t next[2] = {next_on(0, 0), next_on(1, 0)};  // each level's next stage to begin
  size_t running[2] = {0, 0};                       // each level's running stage, while active[level]
  std::unique_ptr<RingPhase> active[2];
  auto finish = [&](int level) {
    finished[running[level]] = true;
    active[level].reset();
  };
  auto advance = [&](int level, bool block) {
    steps.set_stage(stages[running[level]].stage);
    const PhaseState state = active[level]->advance(block);
    if (state == PhaseState::kFinished) finish(level);
    return state;
  };
  // Begins each idle level's next stage where it may, until none can (a
  // stage with nothing to send finishes at once, which may free the other
  // level's next).
  auto begin_ready = [&] {
    for (bool begun = true; begun;) {
      begun = false;
      for (int level = 0; level < 2; ++level) {
        if (active[level] || next[level] == stages.size()) continue;
        const PipelineStage& stage = stages[next[level]];
        if (stage.follows >= 0 && !finished[static_cast<size_t>(stage.follows)]) continue;
        running[level] = next[level];
        next[level] = next_on(level, next[level] + 1);
        steps.set_stage(stage.stage);
        active[level] = stage.begin();
        if (!active[level]) finish(level);
        begun = true;
      }
    }
  };
  // While polls of both levels move nothing, every wait of this rank counts
  // as begun when they stopped moving (Transport::set_idle_since), also one
  // that a poll enters to raise a peer's notice: a peer that gave up on this
  // rank then follows it on to the peer it waits for, instead of taking it
  // for one that was not waiting.
  struct IdleRun {
    Transport& transport;
    bool idle = false;
    void begin() {
      if (!idle) transport.set_idle_since(Clock::now());
      idle = true;
    }
    void end() {
      if (idle) transport.set_idle_since(Clock::time_point{});
      idle = false;
    }
    ~IdleRun() { end(); }
  } idle_run{transport};
  for (unsigned polls = 0;;) {
    begin_ready();
    if (!active[0] && !active[1]) {
      if (next[0] < stages.size() || next[1] < stages.size()) {
        throw std::logic_error("run_pipeline: a stage follows one that never finishes");
      }
      return;
    }
    if (!active[0] || !active[1]) {
      // The other level cannot begin before this phase has finished.
      idle_run.end();
      advance(active[0] ? 0 : 1, true);
      continue;
    }
    const PhaseState first = advance(0, false);
    const PhaseState second = active[1] ? advance(1, false) : PhaseState::kFinished;
    if (first != PhaseState::kWaiting || second != PhaseState::kWaiting) {
      idle_run.end();
      continue;
    }
    // Neither moved. Every so often the deadline and the peers' notices are
    // looked at; a wait in the first phase's transfers then raises them,
    // naming the peer it waits for, as any wait does.
    idle_run.begin();
    if (++polls % 64 == 0 && (Clock::now() >= transport.deadline() || !transport.collect_notices().empty())) {
      advance(0, true);
      idle_run.end();
      continue;
    }
    std::this_thread::yield();
  }
}

void run_allreduce(Algorithm algorithm, const CollectiveContext& ctx, Vector vec) {
  switch (algorithm) {
    case Algorithm::kRing: return ring_allreduce(ctx, vec);
    case Algorithm::kHalvingDoubling: return halving_doubling_allreduce(ctx, vec);
    case Algorithm::kRecursiveDoubling: return recursive_doubling_allreduce(ctx, vec);
    case Algorithm::kHierarchical: return hierarchical_allreduce(ctx, vec);
    default: break;
  }
  throw InvalidArgument("run_allreduce needs a concrete algorithm, not auto");
}

void run_reduce_scatter(Algorithm algorithm, const CollectiveContext& ctx, Vector vec) {
  switch (algorithm) {
    case Algorithm::kRing: return ring_reduce_scatter_blocks(ctx, vec);
    case Algorithm::kHalvingDoubling: return halving_reduce_scatter_blocks(ctx, vec);
    case Algorithm::kHierarchical: return hierarchical_reduce_scatter_blocks(ctx, vec);
    default: break;
  }
  throw InvalidArgument(std::string("run_reduce_scatter: ") + algorithm_name(algorithm) + " is not a reduce_scatter algorithm");
}

void run_allgather(Algorithm algorithm, const CollectiveContext& ctx, Vector vec) {
  switch (algorithm) {
    case Algorithm::kRing: return ring_allgather_blocks(ctx, vec);
    case Algorithm::kRecursiveDoubling: return recursive_doubling_allgather_blocks(ctx, vec);
    case Algorithm::kHierarchical: return hierarchical_allgather_blocks(ctx, vec);
    default: break;
  }
  throw InvalidArgument(std::string("run_allgather: ") + algorithm_name(algorithm) + " is not an allgather algorithm");
}

void run_broadcast(Algorithm algorithm, const CollectiveContext& ctx, Vector vec, int root) {
  switch (algorithm) {
    case Algorithm::kBinomialTree: return binomial_tree_broadcast(ctx, vec, root);
    case Algorithm::kScatterAllgather: return scatter_allgather_broadcast(ctx, vec, root);
    default: break;
  }
  throw InvalidArgument(std::string("run_broadcast: ") + algorithm_name(algorithm) + " is not a broadcast algorithm");
}

void Vector::take_input(MemorySpace& memory) const {
  if (input != data) memory.copy(data, input, bytes(count));
}

}  // namespace pyallreduce
