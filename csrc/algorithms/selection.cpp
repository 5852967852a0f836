#include "selection.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace pyallreduce {
namespace {

// The rows of the cost table in docs/design.md, with each message's latency taken from
// its size. A world size that is not a power of two adds the fold: one message
// each way with the whole vector, and one combine.
double fold_cost(const CostModel& m, double n, int p, int p2) {
  return p == p2 ? 0.0 : 2 * m.message_s(n) + 2 * n * m.beta_s_per_byte + n * m.gamma_s_per_byte;
}

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

double CostModel::message_s(double bytes) const {
  return alpha_s + (bytes >= static_cast<double>(rendezvous_bytes) ? rendezvous_s : 0.0);
}

double CostModel::predict(Algorithm algorithm, size_t bytes, int p, size_t ring_segment_bytes) const {
  if (p <= 1) return 0.0;
  int p2 = 1, lg = 0;
  while (p2 * 2 <= p) { p2 *= 2; ++lg; }
  const double n = static_cast<double>(bytes);
  const double b = beta_s_per_byte, g = gamma_s_per_byte;
  switch (algorithm) {
    case Algorithm::kRecursiveDoubling:
      return lg * message_s(n) + n * lg * (b + g) + fold_cost(*this, n, p, p2);
    case Algorithm::kHalvingDoubling: {
      // Step k of each half sends n / 2^k: for n = 64 KiB over 4 ranks,
      // 32 KiB then 16 KiB in the reduce-scatter and again in the allgather.
      double latency = 0;
      for (int k = 1; k <= lg; ++k) latency += 2 * message_s(n / (1 << k));
      const double share = static_cast<double>(p2 - 1) / p2;
      return latency + 2 * share * n * b + share * n * g + fold_cost(*this, n, p, p2);
    }
    case Algorithm::kRing: {
      // The plain ring row charges sending and combining one after the other.
      // The segmented ring combines segment k while segment k+1 arrives, so
      // once the first segment is in, its reduce-scatter costs the slower of
      // the two per byte, not the sum. Example at 2 ranks: 64 MiB is 32 one-MiB
      // segments, and all but the first overlap; 128 KiB is one 64 KiB
      // segment, and nothing does.
      const double share = static_cast<double>(p - 1) / p;
      const double first_segment = std::min(share * n, static_cast<double>(ring_segment_bytes));
      return 2 * (p - 1) * message_s(n / p) + share * n * b + share * n * std::max(b, g) +
             first_segment * std::min(b, g);
    }
    case Algorithm::kAuto: break;
  }
  throw InvalidArgument("the cost model predicts concrete algorithms only");
}

CostModel default_cost_model() {
  return CostModel{/*alpha_s=*/2.0e-6, /*beta_s_per_byte=*/1.0 / 16.0e9,
                   /*gamma_s_per_byte=*/1.0 / 21.0e9, /*rendezvous_bytes=*/8192,
                   /*rendezvous_s=*/2.7e-6};
}

std::vector<SizeRule> parse_size_rules(const std::string& text) {
  std::vector<SizeRule> rules;
  const std::string whole = trim(text);
  if (whole.empty()) return rules;
  if (whole.find(':') == std::string::npos && whole.find(';') == std::string::npos) {
    const Algorithm a = algorithm_from_name(whole);
    if (a == Algorithm::kAuto) return rules;
    rules.push_back({0, std::numeric_limits<size_t>::max(), a});
    return rules;
  }
  size_t start = 0;
  while (start <= whole.size()) {
    const size_t end = std::min(whole.find(';', start), whole.size());
    const std::string rule = trim(whole.substr(start, end - start));
    start = end + 1;
    if (rule.empty()) continue;
    const size_t colon = rule.find(':');
    const size_t dash = rule.find('-', colon == std::string::npos ? 0 : colon);
    if (colon == std::string::npos || dash == std::string::npos) {
      throw InvalidArgument("PYALLREDUCE_ALGO rule '" + rule +
                            "' is not of the form algorithm:min-max (e.g. ring:1048577-max)");
    }
    const Algorithm a = algorithm_from_name(trim(rule.substr(0, colon)));
    if (a == Algorithm::kAuto) {
      throw InvalidArgument("PYALLREDUCE_ALGO rule '" + rule + "' must name a concrete algorithm");
    }
    const size_t lo = parse_bytes(trim(rule.substr(colon + 1, dash - colon - 1)), rule);
    const size_t hi = parse_bytes(trim(rule.substr(dash + 1)), rule);
    if (lo > hi) throw InvalidArgument("PYALLREDUCE_ALGO rule '" + rule + "' has min > max");
    rules.push_back({lo, hi, a});
  }
  return rules;
}

Algorithm AlgorithmSelector::choose(Algorithm requested, size_t bytes, int world_size,
                                     size_t ring_segment_bytes, std::string* reason) const {
  if (requested != Algorithm::kAuto) {
    if (reason != nullptr) *reason = "requested by the caller";
    return requested;
  }
  for (const SizeRule& rule : rules_) {
    if (bytes >= rule.min_bytes && bytes <= rule.max_bytes) {
      if (reason != nullptr) {
        *reason = "PYALLREDUCE_ALGO rule " + std::to_string(rule.min_bytes) + "-" +
                  (rule.max_bytes == std::numeric_limits<size_t>::max() ? std::string("max")
                                                                        : std::to_string(rule.max_bytes));
      }
      return rule.algorithm;
    }
  }
  Algorithm best = Algorithm::kRing;
  double best_time = std::numeric_limits<double>::infinity();
  if (reason != nullptr) *reason = "cost model:";
  for (Algorithm a : {Algorithm::kRecursiveDoubling, Algorithm::kHalvingDoubling, Algorithm::kRing}) {
    const double t = model_.predict(a, bytes, world_size, ring_segment_bytes);
    if (reason != nullptr) {
      char item[96];
      std::snprintf(item, sizeof item, " %s %.1f us", algorithm_name(a), t * 1e6);
      *reason += item;
    }
    if (t < best_time) { best = a; best_time = t; }  // ties keep the earlier (fewer messages)
  }
  return best;
}

}  // namespace pyallreduce
