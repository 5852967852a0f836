#include "types.h"

#include <iterator>
#include <utility>

namespace pyallreduce {

size_t element_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
  }
  throw InvalidArgument("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
  }
  return "unknown";
}

const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kProd: return "prod";
  }
  return "unknown";
}

namespace {

// The one table of collectives.
constexpr std::pair<Collective, const char*> kCollectives[] = {
    {Collective::kAllreduce, "allreduce"},     {Collective::kReduceScatter, "reduce_scatter"},
    {Collective::kAllgather, "allgather"},     {Collective::kBroadcast, "broadcast"},
    {Collective::kBarrier, "barrier"},
};

constexpr unsigned bit(Collective c) { return 1u << static_cast<int>(c); }

// The one table of algorithms: each one's name and the collectives it
// implements, in order of messages per call, fewest first: auto's cost model
// tries them in this order and keeps the earlier on a tie. A barrier has no
// algorithm of its own: it is the argument check's exchange (see
// Communicator::barrier).
struct AlgorithmEntry {
  Algorithm algorithm;
  const char* name;
  unsigned collectives;
};
constexpr unsigned kEvery = ~0u;
constexpr AlgorithmEntry kAlgorithms[] = {
    {Algorithm::kAuto, "auto", kEvery},
    {Algorithm::kRecursiveDoubling, "recursive_doubling", bit(Collective::kAllreduce) | bit(Collective::kAllgather)},
    {Algorithm::kHalvingDoubling, "halving_doubling", bit(Collective::kAllreduce) | bit(Collective::kReduceScatter)},
    {Algorithm::kRing, "ring", bit(Collective::kAllreduce) | bit(Collective::kReduceScatter) | bit(Collective::kAllgather)},
    {Algorithm::kHierarchical, "hierarchical",
     bit(Collective::kAllreduce) | bit(Collective::kReduceScatter) | bit(Collective::kAllgather)},
    {Algorithm::kBinomialTree, "binomial_tree", bit(Collective::kBroadcast)},
    {Algorithm::kScatterAllgather, "scatter_allgather", bit(Collective::kBroadcast)},
};

const AlgorithmEntry* entry_of(Algorithm algorithm) {
  for (const AlgorithmEntry& e : kAlgorithms) {
    if (e.algorithm == algorithm) return &e;
  }
  return nullptr;
}

}  // namespace

const char* collective_name(Collective collective) {
  for (const auto& [c, name] : kCollectives) {
    if (c == collective) return name;
  }
  return "unknown";
}

const std::vector<Collective>& all_collectives() {
  static const std::vector<Collective> collectives = [] {
    std::vector<Collective> all;
    for (const auto& entry : kCollectives) all.push_back(entry.first);
    return all;
  }();
  return collectives;
}

Collective collective_from_name(const std::string& name) {
  std::string expected;
  for (const auto& [c, text] : kCollectives) {
    if (name == text) return c;
    expected += (expected.empty() ? "" : ", ") + std::string(text);
  }
  throw InvalidArgument("unknown collective '" + name + "' (expected one of " + expected + ")");
}

const std::vector<Algorithm>& all_algorithms() {
  static const std::vector<Algorithm> algorithms = [] {
    std::vector<Algorithm> all;
    for (const AlgorithmEntry& e : kAlgorithms) all.push_back(e.algorithm);
    return all;
  }();
  return algorithms;
}

const char* algorithm_name(Algorithm algorithm) {
  const AlgorithmEntry* e = entry_of(algorithm);
  return e != nullptr ? e->name : "unknown";
}

bool implements(Algorithm algorithm, Collective collective) {
  const AlgorithmEntry* e = entry_of(algorithm);
  return e != nullptr && (e->collectives & bit(collective)) != 0;
}

const std::vector<Algorithm>& algorithms_of(Collective collective) {
  static const std::vector<std::vector<Algorithm>> by_collective = [] {
    std::vector<std::vector<Algorithm>> lists(std::size(kCollectives));
    for (const auto& [c, name] : kCollectives) {
      for (const AlgorithmEntry& e : kAlgorithms) {
        if (e.algorithm != Algorithm::kAuto && (e.collectives & bit(c)) != 0) {
          lists[static_cast<size_t>(c)].push_back(e.algorithm);
        }
      }
    }
    return lists;
  }();
  return by_collective.at(static_cast<size_t>(collective));
}

Algorithm algorithm_from_name(const std::string& name, Collective collective) {
  std::string expected;
  for (const AlgorithmEntry& e : kAlgorithms) {
    if ((e.collectives & bit(collective)) == 0) continue;
    if (name == e.name) return e.algorithm;
    expected += (expected.empty() ? "" : ", ") + std::string(e.name);
  }
  throw InvalidArgument("unknown " + std::string(collective_name(collective)) + " algorithm '" + name +
                        "' (expected one of " + expected + ")");
}

}  // namespace pyallreduce
