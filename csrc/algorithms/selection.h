// Choosing an algorithm for "auto": explicit size-range rules first (the
// PYALLREDUCE_ALGO syntax), then the alpha-beta-gamma cost model of
// docs/design.md.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "../transport/transport.h"
#include "../types.h"

namespace pyallreduce {

// What one message costs on one level of the machine (between ranks of a
// host, or between hosts): alpha per message, beta per byte. MPI libraries
// send small messages eagerly and large ones by rendezvous (a handshake
// before the data moves), so a message of at least `rendezvous_bytes` pays
// `rendezvous_s` on top of alpha. Without that step the model can prefer one
// rendezvous message of 2m bytes (recursive doubling at 2 ranks) to two eager
// ones of m (halving/doubling) when the eager pair is faster.
struct LinkCost {
  double alpha_s;
  double beta_s_per_byte;
  size_t rendezvous_bytes;
  double rendezvous_s;
  // The latency of one message of `bytes`.
  double message_s(double bytes) const;
};

// Where the messages of each step of each algorithm go on one layout, which
// is all the cost model needs of it: computed once per communicator, so that
// a prediction costs a few operations per step.
struct LayoutProfile {
  // One step's messages: whether any stays inside a host, and how many leave
  // (or arrive at) the busiest host, sharing its link.
  struct Step {
    bool inside = false;
    int most_through_a_link = 0;
  };
  explicit LayoutProfile(const HostLayout& layout);
  int size, hosts, fewest_per_host, most_per_host;
  int p2;                   // the power-of-two algorithms' participants (fold.h)
  Step fold;                // the fold's messages, paired rank 2i with 2i + 1
  std::vector<Step> masks;  // the exchange between virtual ranks v and v ^ (1 << j), by j
  Step ring;                // every rank to the next
  // The binomial tree broadcast's levels from root 0, largest span first:
  // rank q sends to q + m at the level of span m where q is a multiple of 2m.
  // Example p = 6: (0 -> 4); (0 -> 2); (0 -> 1, 2 -> 3, 4 -> 5).
  std::vector<Step> tree;
  // hierarchical's level between hosts (one rank per host), where hosts > 1
  // and some host has several ranks (else that level is this layout).
  std::shared_ptr<const LayoutProfile> one_per_host;
};

// Time for one allreduce of `bytes` over the ranks of a layout, in seconds
// (docs/design.md): each step of an algorithm costs what its slowest message
// does, where a message between hosts shares its host's link with every
// other message through that link in the same step; gamma per byte combined.
struct CostModel {
  LinkCost inside;   // between ranks of one host
  LinkCost between;  // between hosts, through one host's link
  double gamma_s_per_byte;
  // One call of `collective` by `algorithm` on `bytes` (the whole vector: a
  // reduce-scatter's input, an allgather's output). The ring overlaps
  // combining with receiving only across its segments of
  // `ring_segment_bytes`, so it needs to know them.
  double predict(Collective collective, Algorithm algorithm, size_t bytes, const LayoutProfile& layout,
                 size_t ring_segment_bytes) const;
  // hierarchical's algorithm between hosts for a call of `bytes`: the flat
  // one predicted fastest for its slice, and that time in `seconds` if given.
  Algorithm between_hosts(size_t bytes, const LayoutProfile& layout, size_t ring_segment_bytes,
                          double* seconds = nullptr) const;
  // How many pieces hierarchical's levels pipeline for a call of
  // `collective` on `bytes` (CollectiveContext::pieces, with the ring
  // between hosts): the count the model predicts fastest, at most
  // kMostPieces, and that time in `seconds` if given. A piece costs its
  // messages' latencies again, and a level waits for the other only while
  // the first piece fills the pipeline and the last drains it.
  static constexpr size_t kMostPieces = 64;
  size_t hierarchical_pieces(Collective collective, size_t bytes, const LayoutProfile& layout,
                             size_t ring_segment_bytes, double* seconds = nullptr) const;

 private:
  // hierarchical's levels with the ring between hosts on hosts of equal
  // size, in `pieces` pieces.
  double hierarchical_s(Collective collective, double bytes, const LayoutProfile& layout, size_t ring_segment_bytes,
                        size_t pieces) const;
  // A flat algorithm whose messages between hosts each share the link with
  // `link_sharers` - 1 others beyond what `layout` shows (hierarchical's
  // concurrent slices).
  double predict_flat(Algorithm algorithm, double bytes, const LayoutProfile& layout, size_t ring_segment_bytes,
                      int link_sharers) const;
  // The other collectives, flat.
  double predict_collective(Collective collective, Algorithm algorithm, double bytes,
                            const LayoutProfile& layout, size_t ring_segment_bytes) const;
  // One step of `step`'s messages of `bytes` each: its slowest message's time.
  double step_s(const LayoutProfile::Step& step, double bytes, int link_sharers) const;
  // The per-byte time of the step's slowest message.
  double step_beta(const LayoutProfile::Step& step, int link_sharers) const;
};

// The constants auto uses. Inside a host: alpha as half an 8-byte
// ping-pong, beta from a 64 MiB ping-pong, gamma from a float32 a += b over
// 64 MiB, and the rendezvous step where one-way times jump, measured over
// shared memory on one host with the PyPI MPICH (the measurement and its
// machine are in bench/RESULTS.md; `pyallreduce-bench` measures them again
// at the start of each run). Between hosts: a conservative guess at TCP over
// 10 Gbit Ethernet (10 us, 1.25 GB/s, eager at every size), to be replaced
// by a measurement of the real network. PYALLREDUCE_ALGO's size-range rules
// override the model where it is wrong.
CostModel default_cost_model();

struct SizeRule {
  Collective collective;
  size_t min_bytes;
  size_t max_bytes;  // inclusive
  Algorithm algorithm;
};

// Parses "recursive_doubling:0-4096;halving_doubling:4097-1048576;ring:1048577-max"
// (ranges in bytes, inclusive, "max" = unbounded) or a bare algorithm name,
// which applies to every size, for allreduce; a rule that starts with a
// collective's name is for that collective ("allgather:ring:0-max",
// "broadcast:binomial_tree" for every size). Empty text gives no rules.
// Throws InvalidArgument.
std::vector<SizeRule> parse_size_rules(const std::string& text);

class AlgorithmSelector {
 public:
  // `between_hosts_rules` choose hierarchical's algorithm between hosts.
  AlgorithmSelector(std::vector<SizeRule> rules, std::vector<SizeRule> between_hosts_rules, CostModel model,
                    const HostLayout& layout)
      : rules_(std::move(rules)),
        between_hosts_rules_(std::move(between_hosts_rules)),
        model_(model),
        profile_(layout),
        layout_text_(layout.describe()) {}
  // Resolves `requested` (kAuto or a concrete algorithm of `collective`) for
  // one call of `bytes` (as CostModel::predict counts them), and
  // says why in `reason` when given one (the per-call path passes none).
  // Hierarchical is a candidate only where hosts have several ranks and there
  // are several hosts (elsewhere it is the ring, or a flat algorithm).
  Algorithm choose(Collective collective, Algorithm requested, size_t bytes, size_t ring_segment_bytes,
                   std::string* reason = nullptr) const;
  // hierarchical's algorithm between hosts for a call of `bytes`: the
  // rules', else the cost model's.
  Algorithm between_hosts(size_t bytes, size_t ring_segment_bytes) const;
  // hierarchical's pieces for a call of `collective` on `bytes`: the cost
  // model's where its levels pipeline (the ring between hosts), else 1.
  size_t hierarchical_pieces(Collective collective, size_t bytes, size_t ring_segment_bytes) const;
  // The least size (a power of two) from which an allreduce by `requested`
  // of one span alone is predicted cheaper than copying the span into a
  // fused buffer and back out: allreduce_coalesced packs only smaller spans.
  size_t packing_limit(Algorithm requested, size_t ring_segment_bytes) const;
  // The largest call of `collective` (bytes as CostModel::predict counts
  // them: a power of two, at most `capacity`) up to which the argument
  // check's frame is predicted to carry it no slower than the check alone
  // followed by the best algorithm, and so do all smaller powers of two; 0
  // where none is. A carried call is one recursive-doubling allreduce of its
  // payload and the frame's `header_bytes`, the check alone one of the header.
  size_t carry_limit(Collective collective, size_t capacity, size_t header_bytes, size_t ring_segment_bytes) const;
  // The PYALLREDUCE_ALGO rule that covers a call of `collective` on `bytes`,
  // or null.
  const SizeRule* rule_for(Collective collective, size_t bytes) const;
  // The model's constants from now on, and where they came from ("built-in",
  // "measured ... on ..."), for the reasons.
  void set_model(const CostModel& model, const std::string& source) {
    model_ = model;
    model_source_ = source;
  }

 private:
  std::vector<SizeRule> rules_;
  std::vector<SizeRule> between_hosts_rules_;
  CostModel model_;
  LayoutProfile profile_;
  std::string layout_text_;  // for the reasons
  std::string model_source_ = "built-in";
};

}  // namespace pyallreduce
