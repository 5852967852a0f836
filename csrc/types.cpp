#include "types.h"

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

const std::vector<Algorithm>& all_algorithms() {
  static const std::vector<Algorithm> algorithms = {Algorithm::kAuto, Algorithm::kRing, Algorithm::kHalvingDoubling,
                                                    Algorithm::kRecursiveDoubling, Algorithm::kHierarchical};
  return algorithms;
}

const char* algorithm_name(Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::kAuto: return "auto";
    case Algorithm::kRing: return "ring";
    case Algorithm::kHalvingDoubling: return "halving_doubling";
    case Algorithm::kRecursiveDoubling: return "recursive_doubling";
    case Algorithm::kHierarchical: return "hierarchical";
  }
  return "unknown";
}

Algorithm algorithm_from_name(const std::string& name) {
  std::string expected;
  for (Algorithm a : all_algorithms()) {
    if (name == algorithm_name(a)) return a;
    expected += (expected.empty() ? "" : ", ") + std::string(algorithm_name(a));
  }
  throw InvalidArgument("unknown allreduce algorithm '" + name + "' (expected one of " + expected + ")");
}

}  // namespace pyallreduce
