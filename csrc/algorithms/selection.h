// Choosing an algorithm for "auto": explicit size-range rules first (the
// PYALLREDUCE_ALGO syntax), then the alpha-beta-gamma cost model of DESIGN.md.
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
// model is off by a factor of two around it: at 2 ranks here an 8 KiB
// recursive-doubling exchange (one rendezvous message) takes longer than
// halving/doubling's two 4 KiB eager ones.
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

// Measured 2026-11-21 on the 2-core development machine, PyPI MPICH 5.0.2
// (ch4:ucx), 2 ranks, medians of three runs: alpha = half an 8-byte
// ping-pong through mpi4py (2.0 us); beta from a 64 MiB ping-pong (16 GB/s);
// gamma from numpy's float32 a += b over 64 MiB (21 GB/s of bytes reduced).
// One-way times step up between 7 KiB (1.7 us) and 8 KiB (4.4 us), hence the
// rendezvous at 8 KiB costing 2.7 us more. A cluster's numbers differ, which is
// what the PYALLREDUCE_ALGO size-range rules are for.
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
