// The vocabulary shared by every part of the core: element types, reduction
// operators, algorithm names, and the exceptions the bindings turn into Python
// errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyallreduce {

enum class DType : int { kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64 };
enum class ReduceOp : int { kSum, kAvg, kMin, kMax, kProd };
enum class Collective : int { kAllreduce, kReduceScatter, kAllgather, kBroadcast, kBarrier };
enum class Algorithm : int {
  kAuto,
  kRing,
  kHalvingDoubling,
  kRecursiveDoubling,
  kHierarchical,
  kBinomialTree,
  kScatterAllgather,
};

size_t element_size(DType dtype);
const char* dtype_name(DType dtype);
const char* op_name(ReduceOp op);
const char* collective_name(Collective collective);
Collective collective_from_name(const std::string& name);  // throws InvalidArgument
const std::vector<Collective>& all_collectives();
const char* algorithm_name(Algorithm algorithm);
// Throws InvalidArgument naming the algorithms of `collective` where `name`
// is none of them.
Algorithm algorithm_from_name(const std::string& name, Collective collective = Collective::kAllreduce);
// Every algorithm, auto first: the one list the names, the bindings, the
// argument parser and the selection read (types.cpp, with which collectives
// each one implements).
const std::vector<Algorithm>& all_algorithms();
// Whether `algorithm` implements `collective` (auto implements every one).
bool implements(Algorithm algorithm, Collective collective);
// The concrete algorithms of `collective`, in the table's order.
const std::vector<Algorithm>& algorithms_of(Collective collective);

// Bad input from the caller: surfaces in Python as ValueError.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A failure of the transport or of a peer: surfaces in Python as RuntimeError.
class TransportError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A wait that was still blocked at its call's deadline, for `peer`: surfaces
// in Python as pyallreduce.TimeoutError, a RuntimeError.
class TimeoutError : public TransportError {
 public:
  TimeoutError(const std::string& what, int peer, double waited_s = 0)
      : TransportError(what), peer_(peer), waited_s_(waited_s) {}
  int peer() const { return peer_; }       // -1 where no peer is known
  double waited_s() const { return waited_s_; }  // how long the wait had lasted

 private:
  int peer_;
  double waited_s_;
};

}  // namespace pyallreduce
