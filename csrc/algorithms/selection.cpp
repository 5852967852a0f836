#include "selection.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <utility>

#include "fold.h"

namespace pyallreduce {
namespace {

std::string trim(const std::string& s) {
  const size_t first = s.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t") - first + 1);
}

size_t parse_bytes(const std::string& text, const std::string& rule) {
  if (text == "max") return std::numeric_limits<size_t>::max();
  size_t used = 0;
  unsigned long long value = 0;
  try {
    value = std::stoull(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) {
    throw InvalidArgument("PYALLREDUCE_ALGO rule '" + rule + "': '" + text +
                          "' is not a byte count (use digits or 'max')");
  }
  return static_cast<size_t>(value);
}

}  // namespace

double LinkCost::message_s(double bytes) const {
  return alpha_s + (bytes >= static_cast<double>(rendezvous_bytes) ? rendezvous_s : 0.0);
}

namespace {

// The step in which every rank `from` of `pairs` sends to its `to`.
LayoutProfile::Step profile_step(const HostLayout& layout, const std::vector<std::pair<int, int>>& pairs) {
  LayoutProfile::Step step;
  std::vector<int> leaving(static_cast<size_t>(layout.hosts())), arriving(leaving.size());
  for (const auto& [from, to] : pairs) {
    const int a = layout.host_of(from), b = layout.host_of(to);
    if (a == b) {
      step.inside = true;
      continue;
    }
    step.most_through_a_link = std::max({step.most_through_a_link, ++leaving[static_cast<size_t>(a)],
                                         ++arriving[static_cast<size_t>(b)]});
  }
  return step;
}

}  // namespace

LayoutProfile::LayoutProfile(const HostLayout& layout)
    : size(layout.size()),
      hosts(layout.hosts()),
      fewest_per_host(layout.fewest_ranks_per_host()),
      most_per_host(layout.most_ranks_per_host()),
      p2(PowerOfTwoFold(std::max(1, layout.size())).p2) {
  const PowerOfTwoFold fold(std::max(1, size));
  std::vector<std::pair<int, int>> pairs;
  for (int i = 0; i < fold.extra; ++i) pairs.emplace_back(2 * i, 2 * i + 1);
  this->fold = profile_step(layout, pairs);
  for (int mask = 1; mask < p2; mask <<= 1) {
    pairs.clear();
    for (int v = 0; v < p2; ++v) pairs.emplace_back(fold.real_rank(v), fold.real_rank(v ^ mask));
    masks.push_back(profile_step(layout, pairs));
  }
  pairs.clear();
  for (int r = 0; r < size && size > 1; ++r) pairs.emplace_back(r, (r + 1) % size);
  ring = profile_step(layout, pairs);
  int span = 1;
  while (span * 2 < size) span *= 2;
  for (; span > 0 && size > 1; span /= 2) {
    pairs.clear();
    for (int q = 0; q + span < size; q += 2 * span) pairs.emplace_back(q, q + span);
    tree.push_back(profile_step(layout, pairs));
  }
  if (hosts > 1 && most_per_host > 1) {
    std::vector<int> one_each(static_cast<size_t>(hosts));
    for (int h = 0; h < hosts; ++h) one_each[static_cast<size_t>(h)] = h;
    one_per_host = std::make_shared<const LayoutProfile>(HostLayout(one_each));
  }
}

double CostModel::step_beta(const LayoutProfile::Step& step, int link_sharers) const {
  double beta = step.inside ? inside.beta_s_per_byte : 0.0;
  if (step.most_through_a_link > 0) {
    beta = std::max(beta, step.most_through_a_link * link_sharers * between.beta_s_per_byte);
  }
  return beta;
}

double CostModel::step_s(const LayoutProfile::Step& step, double bytes, int link_sharers) const {
  double latency = step.inside ? inside.message_s(bytes) : 0.0;
  if (step.most_through_a_link > 0) latency = std::max(latency, between.message_s(bytes));
  return latency + bytes * step_beta(step, link_sharers);
}

double CostModel::predict_flat(Algorithm algorithm, double n, const LayoutProfile& layout, size_t ring_segment_bytes,
                               int link_sharers) const {
  const int p = layout.size;
  if (p <= 1) return 0.0;
  const double g = gamma_s_per_byte;
  const size_t lg = layout.masks.size();
  // A world size that is not a power of two adds the fold: one message each
  // way with the whole vector, and one combine.
  const double fold = layout.p2 == p ? 0.0 : 2 * step_s(layout.fold, n, link_sharers) + n * g;
  switch (algorithm) {
    case Algorithm::kRecursiveDoubling: {
      double t = fold + n * static_cast<double>(lg) * g;
      for (const auto& step : layout.masks) t += step_s(step, n, link_sharers);
      return t;
    }
    case Algorithm::kHalvingDoubling: {
      // Step k (from 1) of each half sends n / 2^k to the partner across bit
      // lg - k: for n = 64 KiB over 4 ranks, 32 KiB across bit 1, then 16 KiB
      // across bit 0, in the reduce-scatter and again in the allgather.
      double t = fold + static_cast<double>(layout.p2 - 1) / layout.p2 * n * g;
      for (size_t k = 1; k <= lg; ++k) t += 2 * step_s(layout.masks[lg - k], n / static_cast<double>(1ull << k), link_sharers);
      return t;
    }
    case Algorithm::kRing: {
      // The plain ring row charges sending and combining one after the other.
      // The segmented ring combines segment k while segment k+1 arrives, so
      // once the first segment is in, its reduce-scatter costs the slower of
      // the two per byte, not the sum. Example at 2 ranks: 64 MiB is 32 one-MiB
      // segments, and all but the first overlap; 128 KiB is one 64 KiB
      // segment, and nothing does. Every step's time is its slowest message's.
      const double share = static_cast<double>(p - 1) / p;
      const double b = step_beta(layout.ring, link_sharers);
      const double first_segment = std::min(share * n, static_cast<double>(ring_segment_bytes));
      return 2 * (p - 1) * (step_s(layout.ring, n / p, link_sharers) - n / p * b) + share * n * b +
             share * n * std::max(b, g) + first_segment * std::min(b, g);
    }
    default: break;
  }
  throw InvalidArgument("predict_flat: not a flat allreduce algorithm");
}

Algorithm CostModel::between_hosts(size_t bytes, const LayoutProfile& layout, size_t ring_segment_bytes,
                                   double* seconds) const {
  // Each of a host's first fewest_per_host ranks allreduces its slice with
  // its peers on the other hosts, all at once through the host's link.
  const double slice = static_cast<double>(bytes) / std::max(1, layout.fewest_per_host);
  const LayoutProfile& hosts = layout.one_per_host != nullptr ? *layout.one_per_host : layout;
  Algorithm best = Algorithm::kRing;
  double best_s = std::numeric_limits<double>::infinity();
  for (Algorithm a : algorithms_of(Collective::kAllreduce)) {
    if (a == Algorithm::kHierarchical) continue;
    const double t = predict_flat(a, slice, hosts, ring_segment_bytes, layout.fewest_per_host);
    if (t < best_s) { best = a; best_s = t; }
  }
  if (seconds != nullptr) *seconds = best_s;
  return best;
}

double CostModel::predict_collective(Collective collective, Algorithm algorithm, double n,
                                     const LayoutProfile& layout, size_t ring_segment_bytes) const {
  const int p = layout.size;
  if (p <= 1) return 0.0;
  const double g = gamma_s_per_byte;
  const double block = n / p;
  const size_t lg = layout.masks.size();
  const bool folds = layout.p2 != p;
  // A ring step moves one block from every rank to the next.
  const double ring_steps = (p - 1) * step_s(layout.ring, block, 1);
  switch (collective) {
    case Collective::kReduceScatter:
      if (algorithm == Algorithm::kRing) return ring_steps + (p - 1) * block * g;
      if (algorithm == Algorithm::kHierarchical) {
        // The ring where hosts differ in size, else the pipelined levels.
        const int s = layout.fewest_per_host;
        if (layout.one_per_host == nullptr || s != layout.most_per_host) return ring_steps + (p - 1) * block * g;
        double t = 0;
        hierarchical_pieces(collective, static_cast<size_t>(n), layout, ring_segment_bytes, &t);
        return t;
      }
      if (algorithm == Algorithm::kHalvingDoubling) {
        // The fold hands over the whole vector and returns one block; step k
        // (from 1) exchanges about n / 2^k across bit lg - k.
        double t = folds ? step_s(layout.fold, n, 1) + n * g + step_s(layout.fold, block, 1) : 0.0;
        for (size_t k = 1; k <= lg; ++k) {
          const double half = n / static_cast<double>(1ull << k);
          t += step_s(layout.masks[lg - k], half, 1) + half * g;
        }
        return t;
      }
      break;
    case Collective::kAllgather:
      if (algorithm == Algorithm::kRing) return ring_steps;
      if (algorithm == Algorithm::kHierarchical) {
        // The ring where hosts differ in size, else the pipelined levels.
        const int s = layout.fewest_per_host;
        if (layout.one_per_host == nullptr || s != layout.most_per_host) return ring_steps;
        double t = 0;
        hierarchical_pieces(collective, static_cast<size_t>(n), layout, ring_segment_bytes, &t);
        return t;
      }
      if (algorithm == Algorithm::kRecursiveDoubling) {
        // The fold hands in one block and returns the whole vector; step k
        // (from 0) exchanges n 2^k / p2 across bit k.
        double t = folds ? step_s(layout.fold, block, 1) + step_s(layout.fold, n, 1) : 0.0;
        for (size_t k = 0; k < lg; ++k) {
          t += step_s(layout.masks[k], n * static_cast<double>(1ull << k) / layout.p2, 1);
        }
        return t;
      }
      break;
    case Collective::kBroadcast:
      if (algorithm == Algorithm::kBinomialTree) {
        // ceil(lg p) levels of the whole vector, one after another; a level's
        // messages between hosts share a link only where a host sends
        // several (at 2 hosts x 2 ranks, one crosses: 0 -> 2).
        double t = 0.0;
        for (const auto& step : layout.tree) t += step_s(step, n, 1);
        return t;
      }
      if (algorithm == Algorithm::kScatterAllgather) {
        // The root sends p - 1 blocks one after another through its link,
        // then the ring allgather.
        return 2 * ring_steps;
      }
      break;
    case Collective::kAllreduce:
    case Collective::kBarrier: break;
  }
  throw InvalidArgument(std::string("predict: ") + algorithm_name(algorithm) + " is not a " +
                        collective_name(collective) + " algorithm");
}

double CostModel::predict(Collective collective, Algorithm algorithm, size_t bytes, const LayoutProfile& layout,
                          size_t ring_segment_bytes) const {
  const double n = static_cast<double>(bytes);
  if (collective != Collective::kAllreduce) return predict_collective(collective, algorithm, n, layout, ring_segment_bytes);
  if (algorithm != Algorithm::kHierarchical) return predict_flat(algorithm, n, layout, ring_segment_bytes, 1);
  if (layout.hosts == 1) return predict_flat(Algorithm::kRing, n, layout, ring_segment_bytes, 1);
  // See hierarchical.cpp: the fold inside each host (a rank receives from up
  // to ceil((most - fewest) / fewest) others, one after another), a ring
  // reduce-scatter and allgather over each host's first `fewest` ranks, and
  // the slices' allreduce between hosts. Example 3 + 2 ranks: fewest 2, one
  // rank folds in and out; rings of 2 inside; 2 slices of n/2 between hosts.
  const int s = layout.fewest_per_host;
  const double g = gamma_s_per_byte;
  const int extra = layout.most_per_host - s;
  const int folds = (extra + s - 1) / s;  // ceil(extra / s)
  const double fold = folds * (2 * (inside.message_s(n) + n * inside.beta_s_per_byte) + n * g);
  double between_s = 0;
  if (between_hosts(bytes, layout, ring_segment_bytes, &between_s) == Algorithm::kRing) {
    double t = 0;
    hierarchical_pieces(collective, bytes, layout, ring_segment_bytes, &t);
    return fold + t;
  }
  const double chunk = n / s;
  const double inside_rings =
      s == 1 ? 0.0 : (s - 1) * (2 * (inside.message_s(chunk) + chunk * inside.beta_s_per_byte) + chunk * g);
  return fold + inside_rings + between_s;
}

double CostModel::hierarchical_s(Collective collective, double n, const LayoutProfile& layout,
                                 size_t ring_segment_bytes, size_t pieces) const {
  // One piece's time on each level: inside the host, S - 1 ring steps of a
  // super-block (its piece over S) each way the collective needs; between
  // hosts, H - 1 ring steps (each way) where the host's S ranks share its
  // link. The first piece passes through both levels, and each further one
  // costs the slower level's time. Example: 4 pieces that take 1 unit of
  // time inside and 4 between take 1 + 4 + 3 x 4 = 17 units, where one
  // piece of 4 inside and 16 between would take 20.
  const int s = layout.fewest_per_host;
  const int hosts = layout.hosts;
  const double g = gamma_s_per_byte;
  const double piece = n / static_cast<double>(pieces);
  const double super_block = piece / s;
  const double inside_step = inside.message_s(super_block) + super_block * inside.beta_s_per_byte;
  double inside_s = 0, between_s = 0, after_s = 0;
  switch (collective) {
    case Collective::kReduceScatter: {
      // Copied in piece order, then reduced; the result finalized and copied out.
      const double block = piece / layout.size;
      inside_s = (s - 1) * (inside_step + super_block * g);
      between_s = (hosts - 1) * (step_s(layout.one_per_host->ring, block, s) + block * g);
      after_s = n * g;
      break;
    }
    case Collective::kAllgather: {
      // Copied back into place at the end (about a combine's pass).
      inside_s = (s - 1) * inside_step;
      between_s = (hosts - 1) * step_s(layout.one_per_host->ring, piece / layout.size, s);
      after_s = n * g;
      break;
    }
    case Collective::kAllreduce:
      inside_s = (s - 1) * (2 * inside_step + super_block * g);
      between_s = predict_flat(Algorithm::kRing, super_block, *layout.one_per_host, ring_segment_bytes, s);
      break;
    default: throw InvalidArgument("hierarchical_s: not a hierarchical collective");
  }
  return inside_s + between_s + static_cast<double>(pieces - 1) * std::max(inside_s, between_s) + after_s;
}

size_t CostModel::hierarchical_pieces(Collective collective, size_t bytes, const LayoutProfile& layout,
                                      size_t ring_segment_bytes, double* seconds) const {
  size_t best = 1;
  double best_s = std::numeric_limits<double>::infinity();
  if (layout.one_per_host != nullptr) {
    for (size_t pieces = 1; pieces <= kMostPieces; ++pieces) {
      const double t = hierarchical_s(collective, static_cast<double>(bytes), layout, ring_segment_bytes, pieces);
      if (t < best_s) { best = pieces; best_s = t; }
    }
  }
  if (seconds != nullptr) *seconds = best_s;
  return best;
}

CostModel default_cost_model() {
  const LinkCost shared_memory{/*alpha_s=*/2.0e-6, /*beta_s_per_byte=*/1.0 / 16.0e9, /*rendezvous_bytes=*/8192,
                               /*rendezvous_s=*/2.7e-6};
  const LinkCost network{/*alpha_s=*/10.0e-6, /*beta_s_per_byte=*/1.0 / 1.25e9,
                         /*rendezvous_bytes=*/std::numeric_limits<size_t>::max(), /*rendezvous_s=*/0.0};
  return CostModel{shared_memory, network, /*gamma_s_per_byte=*/1.0 / 21.0e9};
}

namespace {

// A rule's collective, if its text starts with one's name and a colon; the
// text after it is left in `rest`.
Collective rule_collective(const std::string& rule, std::string& rest) {
  const size_t colon = rule.find(':');
  if (colon != std::string::npos) {
    const std::string head = trim(rule.substr(0, colon));
    for (Collective c : all_collectives()) {
      if (head == collective_name(c)) {
        rest = trim(rule.substr(colon + 1));
        return c;
      }
    }
  }
  rest = rule;
  return Collective::kAllreduce;
}

}  // namespace

std::vector<SizeRule> parse_size_rules(const std::string& text) {
  std::vector<SizeRule> rules;
  size_t start = 0;
  const std::string whole = trim(text);
  while (start <= whole.size() && !whole.empty()) {
    const size_t end = std::min(whole.find(';', start), whole.size());
    const std::string rule = trim(whole.substr(start, end - start));
    start = end + 1;
    if (rule.empty()) continue;
    std::string rest;
    const Collective collective = rule_collective(rule, rest);
    const size_t colon = rest.find(':');
    if (colon == std::string::npos && rest.find('-') == std::string::npos) {
      // A bare algorithm name: every size.
      const Algorithm a = algorithm_from_name(rest, collective);
      if (a != Algorithm::kAuto) rules.push_back({collective, 0, std::numeric_limits<size_t>::max(), a});
      continue;
    }
    const size_t dash = rest.find('-', colon == std::string::npos ? 0 : colon);
    if (colon == std::string::npos || dash == std::string::npos) {
      throw InvalidArgument("PYALLREDUCE_ALGO rule '" + rule +
                            "' is not of the form [collective:]algorithm:min-max (e.g. ring:1048577-max)");
    }
    const Algorithm a = algorithm_from_name(trim(rest.substr(0, colon)), collective);
    if (a == Algorithm::kAuto) {
      throw InvalidArgument("PYALLREDUCE_ALGO rule '" + rule + "' must name a concrete algorithm");
    }
    const size_t lo = parse_bytes(trim(rest.substr(colon + 1, dash - colon - 1)), rule);
    const size_t hi = parse_bytes(trim(rest.substr(dash + 1)), rule);
    if (lo > hi) throw InvalidArgument("PYALLREDUCE_ALGO rule '" + rule + "' has min > max");
    rules.push_back({collective, lo, hi, a});
  }
  return rules;
}

Algorithm AlgorithmSelector::between_hosts(size_t bytes, size_t ring_segment_bytes) const {
  for (const SizeRule& rule : between_hosts_rules_) {
    if (bytes >= rule.min_bytes && bytes <= rule.max_bytes) return rule.algorithm;
  }
  return model_.between_hosts(bytes, profile_, ring_segment_bytes);
}

size_t AlgorithmSelector::hierarchical_pieces(Collective collective, size_t bytes, size_t ring_segment_bytes) const {
  if (profile_.one_per_host == nullptr) return 1;
  if (collective == Collective::kAllreduce) {
    // The pipeline runs over each host's core, after the fold (see
    // hierarchical.cpp), so hosts may differ in size.
    if (between_hosts(bytes, ring_segment_bytes) != Algorithm::kRing) return 1;
  } else if (profile_.fewest_per_host != profile_.most_per_host) {
    return 1;
  }
  return model_.hierarchical_pieces(collective, bytes, profile_, ring_segment_bytes);
}

size_t AlgorithmSelector::packing_limit(Algorithm requested, size_t ring_segment_bytes) const {
  // Packing a span saves its call's fixed cost, the part of its time that
  // does not grow with its bytes: t(n) less n times the slope of t at n,
  // taken over n / 16 more bytes, 17 t(n) - 16 t(17n/16). (The slope over a
  // doubling would cross a rendezvous step, whose thresholds are powers of
  // two, and leave a negative intercept.) Packing costs two copies, four
  // bytes through memory per byte, where gamma's a += b moves three per byte
  // combined: 4/3 gamma per byte. Example: for t(n) = 2 alpha + n (beta +
  // gamma), the fixed cost is 2 alpha, and spans are packed below 2 alpha /
  // (4/3 gamma), 1.5 alpha / gamma.
  constexpr size_t kSmallest = 256, kLargest = size_t{1} << 40;
  const double copy_s_per_byte = 4.0 / 3.0 * model_.gamma_s_per_byte;
  for (size_t n = kSmallest; n < kLargest; n *= 2) {
    const Algorithm a = choose(Collective::kAllreduce, requested, n, ring_segment_bytes);
    const double fixed_s = 17 * model_.predict(Collective::kAllreduce, a, n, profile_, ring_segment_bytes) -
                           16 * model_.predict(Collective::kAllreduce, a, n + n / 16, profile_, ring_segment_bytes);
    if (fixed_s <= copy_s_per_byte * static_cast<double>(n)) return n;
  }
  return kLargest;
}

size_t AlgorithmSelector::carry_limit(Collective collective, size_t capacity, size_t header_bytes,
                                      size_t ring_segment_bytes) const {
  if (collective == Collective::kBarrier) return 0;
  auto frame_s = [&](size_t payload) {
    return model_.predict(Collective::kAllreduce, Algorithm::kRecursiveDoubling, payload + header_bytes, profile_,
                          ring_segment_bytes);
  };
  const double check_s = frame_s(0);
  size_t limit = 0;
  for (size_t n = 1; n <= capacity; n *= 2) {
    double best_s = std::numeric_limits<double>::infinity();
    for (Algorithm a : algorithms_of(collective)) {
      if (a == Algorithm::kHierarchical && profile_.one_per_host == nullptr) continue;
      best_s = std::min(best_s, model_.predict(collective, a, n, profile_, ring_segment_bytes));
    }
    if (frame_s(n) > check_s + best_s) break;
    limit = n;
  }
  return limit;
}

const SizeRule* AlgorithmSelector::rule_for(Collective collective, size_t bytes) const {
  for (const SizeRule& rule : rules_) {
    if (rule.collective == collective && bytes >= rule.min_bytes && bytes <= rule.max_bytes) return &rule;
  }
  return nullptr;
}

Algorithm AlgorithmSelector::choose(Collective collective, Algorithm requested, size_t bytes,
                                    size_t ring_segment_bytes, std::string* reason) const {
  if (requested != Algorithm::kAuto) {
    if (reason != nullptr) *reason = "requested by the caller";
    return requested;
  }
  if (const SizeRule* rule = rule_for(collective, bytes)) {
    if (reason != nullptr) {
      *reason = "PYALLREDUCE_ALGO rule " + std::to_string(rule->min_bytes) + "-" +
                (rule->max_bytes == std::numeric_limits<size_t>::max() ? std::string("max")
                                                                       : std::to_string(rule->max_bytes));
    }
    return rule->algorithm;
  }
  Algorithm best = Algorithm::kAuto;
  double best_time = std::numeric_limits<double>::infinity();
  if (reason != nullptr) *reason = "cost model for " + layout_text_ + ", constants " + model_source_ + ":";
  // In the table's order (fewer messages first), so that ties keep the earlier.
  for (Algorithm a : algorithms_of(collective)) {
    if (a == Algorithm::kHierarchical && profile_.one_per_host == nullptr) continue;  // the ring, or a flat one
    const double t = model_.predict(collective, a, bytes, profile_, ring_segment_bytes);
    if (reason != nullptr) {
      char item[96];
      std::snprintf(item, sizeof item, " %s %.1f us", algorithm_name(a), t * 1e6);
      *reason += item;
    }
    if (t < best_time) { best = a; best_time = t; }
  }
  return best;
}

}  // namespace pyallreduce
