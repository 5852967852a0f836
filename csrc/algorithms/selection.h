// Choosing an algorithm for "auto": explicit size-range rules first (the
// PYALLREDUCE_ALGO syntax), then the alpha-beta-gamma cost model of
// docs/design.md.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "../types.h"

namespace pyallreduce {

// Time for one allreduce of `bytes` over `world_size` ranks, in seconds:
// alpha per message, beta per byte sent, gamma per byte combined. MPI
// libraries send small messages eagerly and large ones by rendezvous (a
// handshake before the data moves), so a message of at least
// `rendezvous_bytes` pays `rendezvous_s` on top of alpha. Without that step the
// model can prefer one rendezvous message of 2m bytes (recursive doubling at
// 2 ranks) to two eager ones of m (halving/doubling) when the eager pair is
// faster.
struct CostModel {
  double alpha_s;
  double beta_s_per_byte;
  double gamma_s_per_byte;
  size_t rendezvous_bytes;
  double rendezvous_s;
  // The ring overlaps combining with receiving only across its segments of
  // `ring_segment_bytes`, so it needs to know them.
  double predict(Algorithm algorithm, size_t bytes, int world_size, size_t ring_segment_bytes) const;
  // The latency of one message of `bytes`.
  double message_s(double bytes) const;
};

// The constants auto uses: alpha as half an 8-byte ping-pong, beta from a
// 64 MiB ping-pong, gamma from a float32 a += b over 64 MiB, and the
// rendezvous step where one-way times jump, measured over shared memory on
// one host with the PyPI MPICH (the measurement and its machine are in
// bench/RESULTS.md; `pyallreduce-bench` measures them again at the start of
// each run). A cluster's numbers differ, which is what the PYALLREDUCE_ALGO
// size-range rules are for.
CostModel default_cost_model();

struct SizeRule {
  size_t min_bytes;
  size_t max_bytes;  // inclusive
  Algorithm algorithm;
};

// Parses "recursive_doubling:0-4096;halving_doubling:4097-1048576;ring:1048577-max"
// (ranges in bytes, inclusive, "max" = unbounded) or a bare algorithm name,
// which applies to every size. Empty text gives no rules. Throws InvalidArgument.
std::vector<SizeRule> parse_size_rules(const std::string& text);

class AlgorithmSelector {
 public:
  AlgorithmSelector(std::vector<SizeRule> rules, CostModel model)
      : rules_(std::move(rules)), model_(model) {}
  // Resolves `requested` (kAuto or a concrete algorithm) for one call, and
  // says why in `reason` when given one (the per-call path passes none).
  Algorithm choose(Algorithm requested, size_t bytes, int world_size, size_t ring_segment_bytes,
                   std::string* reason = nullptr) const;

 private:
  std::vector<SizeRule> rules_;
  CostModel model_;
};

}  // namespace pyallreduce
