// Reading the caller's Python arguments into what the core takes: addresses,
// element counts, dtypes, ops and algorithm names. With bindings.cpp, the
// only code that knows Python. It runs on every call, so it reads objects
// through the C API (the buffer protocol, a few torch attributes) instead of
// through Python code; a small call costs about as much as MPI's own.
#pragma once

#include <pybind11/pybind11.h>

#include <optional>
#include <string>

#include "../communicator.h"
#include "../types.h"

namespace pyallreduce {

// A bad argument: the Python exception this rank raises, and the code the
// other ranks are told (so that they raise too instead of waiting).
struct Rejection {
  PyObject* exception_type;  // PyExc_TypeError or PyExc_ValueError
  ArgumentError code;
  std::string message;
};

// The memory behind one tensor or array argument, held for the length of a
// call: a buffer-protocol export stays open (so the exporter cannot resize or
// free it) until this is destroyed. Throws Rejection.
//
// Accepted: contiguous torch tensors, on the CPU or a GPU (read through
// their attributes, no libtorch), objects with the buffer protocol (numpy
// arrays, array.array, bytearray, memoryview), DLPack objects (through
// numpy.from_dlpack), and GPU arrays with __cuda_array_interface__ (cupy,
// numba). GPU buffers need pyallreduce._cuda, which is imported on first use.
class PythonBuffer {
 public:
  PythonBuffer(pybind11::handle obj, const char* role);
  ~PythonBuffer();
  PythonBuffer(const PythonBuffer&) = delete;
  PythonBuffer& operator=(const PythonBuffer&) = delete;

  void* data() const { return data_; }
  size_t count() const { return count_; }
  DType dtype() const { return dtype_; }
  bool writable() const { return writable_; }
  size_t bytes() const { return count_ * element_size(dtype_); }
  int device() const { return device_; }  // CUDA device ordinal, or -1 for host memory
  // For a device buffer, the CUDA stream current for it on the reading
  // thread: torch's current stream on its device, or the stream its
  // __cuda_array_interface__ names (none: the legacy default stream, 0).
  uintptr_t stream() const { return stream_; }
  // The torch tensor read, or a null handle for other objects.
  pybind11::handle torch_tensor() const { return torch_tensor_; }

 private:
  void read_torch(pybind11::handle tensor, const char* role);
  void read_buffer_protocol(pybind11::handle obj, const char* role);
  void read_cuda_array_interface(pybind11::handle obj, const char* role);

  void* data_ = nullptr;
  size_t count_ = 0;
  DType dtype_ = DType::kFloat32;
  bool writable_ = false;
  int device_ = -1;
  uintptr_t stream_ = 0;
  Py_buffer view_{};
  bool holds_view_ = false;
  pybind11::handle torch_tensor_;  // borrowed: the caller holds it for the call
  pybind11::object keep_alive_;  // the numpy array made from a DLPack object
};

// Bumps the autograd version counter of every torch tensor among `buffers`
// (which the call is about to write through raw pointers), as torch's own
// in-place operations do: a tensor saved for backward then makes backward()
// raise instead of computing with overwritten values.
void mark_modified(const std::vector<const PythonBuffer*>& buffers);

// out= must be writable, hold as many elements of the same dtype on the same
// device, and either be the input itself or not overlap it. Throws Rejection.
void check_output(const PythonBuffer& source, const PythonBuffer& out);

// out= of a reduce-scatter (`out_is_block`: out is block `rank` of the
// input's `size` blocks) or of an allgather (the input is block `rank` of
// out's): of the input's kind, of the right size, and either exactly that
// block of the whole or not overlapping it. Throws Rejection.
void check_block_output(const PythonBuffer& source, const PythonBuffer& out, bool out_is_block, int rank, int size);

// Where a call on `buffer` runs: its device, and for a device buffer the
// CUDA stream `stream` (a cudaStream_t as an integer; None: buffer.stream()).
// Throws Rejection for a stream given with host buffers.
Placement placement_of(const PythonBuffer& buffer, pybind11::handle stream);

// "sum", "avg", ... and "auto", "ring", ... (auto or an algorithm of
// `collective`); anything else throws Rejection.
ReduceOp parse_op(pybind11::handle op);
Algorithm parse_algorithm(pybind11::handle algorithm, Collective collective = Collective::kAllreduce);

}  // namespace pyallreduce
