#include "buffers.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace pyallreduce {
namespace {

const char* const kSupported = "float32, float64, float16, bfloat16, int32, int64";

[[noreturn]] void reject(PyObject* type, ArgumentError code, std::string message) {
  throw Rejection{type, code, std::move(message)};
}

std::string type_name(py::handle obj) { return Py_TYPE(obj.ptr())->tp_name; }

// What pyallreduce needs from torch, looked up once torch has been imported
// (by the caller: pyallreduce never imports it). Never freed: it must outlive
// every call, and Python objects must not be released after the interpreter.
struct TorchApi {
  py::object tensor_type;
  py::object strided;
  std::vector<std::pair<py::object, DType>> dtypes;
  // torch._C._increment_version, which takes a list of tensors (a list costs
  // a few hundred nanoseconds; a single tensor, microseconds).
  py::object increment_version;
  // The names read from a tensor on every call, interned: a lookup by a C
  // string makes and hashes a new Python string each time.
  py::object layout = interned("layout"), is_cuda = interned("is_cuda"), is_cpu = interned("is_cpu"),
             is_contiguous = interned("is_contiguous"), dtype = interned("dtype"), is_neg = interned("is_neg"),
             data_ptr = interned("data_ptr"), numel = interned("numel");

  static py::object interned(const char* name) {
    return py::reinterpret_steal<py::object>(PyUnicode_InternFromString(name));
  }
};

const TorchApi* torch_api() {
  static TorchApi* api = nullptr;  // guarded by the GIL
  if (api != nullptr) return api;
  PyObject* torch = PyDict_GetItemString(PyImport_GetModuleDict(), "torch");  // borrowed
  if (torch == nullptr) return nullptr;
  py::handle module(torch);
  api = new TorchApi{module.attr("Tensor"), module.attr("strided"), {}, module.attr("_C").attr("_increment_version")};
  for (DType d : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16, DType::kInt32,
                  DType::kInt64}) {
    api->dtypes.emplace_back(module.attr(dtype_name(d)), d);
  }
  return api;
}

// tensor.<name> and tensor.<name>() by CPython's own calls: a small call
// reads eight of them, and pybind11's attr() and call cost several times more.
py::object attribute(py::handle tensor, const py::object& name) {
  PyObject* value = PyObject_GetAttr(tensor.ptr(), name.ptr());
  if (value == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(value);
}

py::object method_result(py::handle tensor, const py::object& name) {
  PyObject* value = PyObject_CallMethodNoArgs(tensor.ptr(), name.ptr());
  if (value == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(value);
}

bool little_endian() {
  const uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// The dtype of a buffer-protocol format string (struct module syntax) with
// `itemsize`, or false. Integers go by size, since 'l' is 4 or 8 bytes
// depending on the platform. A byte-order prefix other than native ('@', '=',
// or the machine's own '<'/'>') is refused.
bool dtype_from_format(const char* format, size_t itemsize, DType* dtype, bool* native) {
  *native = true;
  if (format == nullptr) format = "B";  // the buffer protocol's default: unsigned bytes
  if (*format == '@' || *format == '=') {
    ++format;
  } else if (*format == '<' || *format == '>' || *format == '!') {
    *native = (*format == '<') == little_endian();
    ++format;
  }
  if (format[0] == '\0' || format[1] != '\0') return false;  // not a single element type
  switch (format[0]) {
    case 'e': *dtype = DType::kFloat16; return itemsize == 2;
    case 'f': *dtype = DType::kFloat32; return itemsize == 4;
    case 'd': *dtype = DType::kFloat64; return itemsize == 8;
    case 'b': case 'h': case 'i': case 'l': case 'q': case 'n':
      if (itemsize == 4) { *dtype = DType::kInt32; return true; }
      if (itemsize == 8) { *dtype = DType::kInt64; return true; }
      return false;
    default: return false;
  }
}

// How an unsupported buffer's elements are described in an error: numpy's
// dtype where the object has one, else the buffer format.
std::string element_description(py::handle obj, const Py_buffer& view) {
  if (py::hasattr(obj, "dtype")) return "dtype " + py::str(obj.attr("dtype")).cast<std::string>();
  return std::string("buffer format '") + (view.format != nullptr ? view.format : "B") + "'";
}

// The registered CUDA backend, importing pyallreduce._cuda (which registers
// it) on first use. Throws Rejection where this build has none.
DeviceBackend& cuda_backend(const std::string& who) {
  if (device_backend() == nullptr) {
    try {
      py::module_::import("pyallreduce._cuda");
    } catch (py::error_already_set& e) {
      reject(PyExc_ValueError, ArgumentError::kBadBuffer,
             who + " is on a GPU, but this pyallreduce has no CUDA module (" + e.what() +
                 "); reinstall it where nvcc is found to reduce CUDA buffers");
    }
  }
  if (device_backend() == nullptr) {
    reject(PyExc_ValueError, ArgumentError::kBadBuffer, who + " is on a GPU, but no CUDA backend registered");
  }
  return *device_backend();
}

// A numpy array-interface type string ("<f4", "|i8", ...) as a dtype.
bool dtype_from_typestr(const std::string& typestr, DType* dtype) {
  if (typestr.size() < 3) return false;
  const char order = typestr[0];
  if (order != '|' && order != '=' && order != (little_endian() ? '<' : '>')) return false;
  const std::string kind = typestr.substr(1);
  if (kind == "f4") *dtype = DType::kFloat32;
  else if (kind == "f8") *dtype = DType::kFloat64;
  else if (kind == "f2") *dtype = DType::kFloat16;
  else if (kind == "i4") *dtype = DType::kInt32;
  else if (kind == "i8") *dtype = DType::kInt64;
  else return false;
  return true;
}

}  // namespace

PythonBuffer::PythonBuffer(py::handle obj, const char* role) {
  const TorchApi* torch = torch_api();
  if (torch != nullptr && PyObject_IsInstance(obj.ptr(), torch->tensor_type.ptr()) == 1) {
    read_torch(obj, role);
    return;
  }
  if (PyObject_CheckBuffer(obj.ptr())) {
    read_buffer_protocol(obj, role);
    return;
  }
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    read_cuda_array_interface(obj, role);
    return;
  }
  if (py::hasattr(obj, "__dlpack__")) {
    try {
      keep_alive_ = py::module_::import("numpy").attr("from_dlpack")(obj);
    } catch (py::error_already_set& e) {
      reject(PyExc_TypeError, ArgumentError::kBadBuffer,
             std::string(role) + " could not be read through DLPack: " + e.what());
    }
    read_buffer_protocol(keep_alive_, role);
    return;
  }
  reject(PyExc_TypeError, ArgumentError::kBadBuffer,
         std::string(role) + " must be a torch tensor, a numpy array or a buffer-protocol object, not " +
             type_name(obj));
}

PythonBuffer::~PythonBuffer() {
  if (holds_view_) PyBuffer_Release(&view_);
}

void mark_modified(const std::vector<const PythonBuffer*>& buffers) {
  py::list tensors;
  for (const PythonBuffer* buffer : buffers) {
    if (buffer->torch_tensor()) tensors.append(buffer->torch_tensor());
  }
  if (!tensors.empty()) torch_api()->increment_version(tensors);
}

void PythonBuffer::read_torch(py::handle tensor, const char* role) {
  const TorchApi& torch = *torch_api();
  torch_tensor_ = tensor;
  const std::string who(role);
  py::object layout = attribute(tensor, torch.layout);
  if (!layout.is(torch.strided)) {
    reject(PyExc_TypeError, ArgumentError::kBadBuffer,
           who + " is a " + py::str(layout).cast<std::string>() +
               " tensor; only dense (strided) tensors can be reduced");
  }
  if (attribute(tensor, torch.is_cuda).is(py::handle(Py_True))) {
    cuda_backend(who);
    device_ = tensor.attr("get_device")().cast<int>();
    stream_ = py::module_::import("torch.cuda").attr("current_stream")(device_).attr("cuda_stream").cast<uintptr_t>();
  } else if (!attribute(tensor, torch.is_cpu).is(py::handle(Py_True))) {
    reject(PyExc_ValueError, ArgumentError::kBadBuffer,
           who + " is on " + py::str(tensor.attr("device")).cast<std::string>() +
               "; pyallreduce reduces CPU and CUDA tensors");
  }
  if (!method_result(tensor, torch.is_contiguous).is(py::handle(Py_True))) {
    reject(PyExc_ValueError, ArgumentError::kBadBuffer, who + " is not contiguous; pass tensor.contiguous()");
  }
  py::object dtype = attribute(tensor, torch.dtype);
  bool known = false;
  for (const auto& [torch_dtype, ours] : torch.dtypes) {
    if (dtype.is(torch_dtype)) {
      dtype_ = ours;
      known = true;
      break;
    }
  }
  if (!known) {
    reject(PyExc_TypeError, ArgumentError::kBadDtype,
           who + " has dtype " + py::str(dtype).cast<std::string>() + "; supported: " + kSupported);
  }
  // A lazy negation (e.g. the imaginary part of a conjugated view) is stored
  // un-negated: the bytes are not the values.
  if (method_result(tensor, torch.is_neg).is(py::handle(Py_True))) {
    reject(PyExc_ValueError, ArgumentError::kBadBuffer,
           who + " has a lazy negative bit; call resolve_neg() first");
  }
  data_ = reinterpret_cast<void*>(method_result(tensor, torch.data_ptr).cast<uintptr_t>());
  count_ = method_result(tensor, torch.numel).cast<size_t>();
  writable_ = true;
}

void PythonBuffer::read_buffer_protocol(py::handle obj, const char* role) {
  const std::string who(role);
  if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_RECORDS_RO) != 0) {
    py::error_already_set error;
    reject(PyExc_TypeError, ArgumentError::kBadBuffer,
           who + " (" + type_name(obj) + ") does not export a readable buffer: " + error.what());
  }
  holds_view_ = true;
  bool native = true;
  if (!dtype_from_format(view_.format, static_cast<size_t>(view_.itemsize), &dtype_, &native)) {
    reject(PyExc_TypeError, ArgumentError::kBadDtype,
           who + " has " + element_description(obj, view_) + "; supported: " + kSupported);
  }
  if (!native) reject(PyExc_TypeError, ArgumentError::kBadDtype, who + " is not in native byte order");
  if (!PyBuffer_IsContiguous(&view_, 'C')) {
    reject(PyExc_ValueError, ArgumentError::kBadBuffer,
           who + " is not C-contiguous; pass np.ascontiguousarray(...)");
  }
  data_ = view_.buf;
  count_ = static_cast<size_t>(view_.len / view_.itemsize);
  writable_ = !view_.readonly;
}

void PythonBuffer::read_cuda_array_interface(py::handle obj, const char* role) {
  const std::string who(role);
  DeviceBackend& backend = cuda_backend(who);
  const py::dict interface = obj.attr("__cuda_array_interface__");
  const std::string typestr = py::str(interface["typestr"]);
  if (!dtype_from_typestr(typestr, &dtype_)) {
    reject(PyExc_TypeError, ArgumentError::kBadDtype,
           who + " has type string '" + typestr + "'; supported: " + kSupported);
  }
  const py::tuple shape = interface["shape"];
  count_ = 1;
  for (py::handle extent : shape) count_ *= extent.cast<size_t>();
  // Strides, when given, must be those of a C-contiguous array. Example:
  // shape (2, 3) of 4-byte elements has strides (12, 4).
  if (interface.contains("strides") && !interface["strides"].is_none()) {
    const py::tuple strides = interface["strides"];
    size_t expected = element_size(dtype_);
    for (size_t i = shape.size(); i-- > 0;) {
      if (shape[i].cast<size_t>() > 1 && strides[i].cast<size_t>() != expected) {
        reject(PyExc_ValueError, ArgumentError::kBadBuffer, who + " is not C-contiguous");
      }
      expected *= shape[i].cast<size_t>();
    }
  }
  const py::tuple data = interface["data"];
  data_ = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  writable_ = !data[1].cast<bool>();
  if (interface.contains("stream") && !interface["stream"].is_none()) {
    stream_ = interface["stream"].cast<uintptr_t>();
  }
  if (py::hasattr(obj, "device") && py::hasattr(obj.attr("device"), "id")) {
    device_ = obj.attr("device").attr("id").cast<int>();  // cupy names it, even for empty arrays
    return;
  }
  try {
    device_ = backend.device_of(data_);
  } catch (const std::exception& e) {
    reject(PyExc_ValueError, ArgumentError::kBadBuffer, who + " has a __cuda_array_interface__ whose pointer " +
                                                            "is not usable device memory: " + e.what());
  }
}

Placement placement_of(const PythonBuffer& buffer, py::handle stream) {
  if (buffer.device() < 0) {
    if (!stream.is_none()) {
      reject(PyExc_ValueError, ArgumentError::kBadBuffer, "a CUDA stream was given for buffers in host memory");
    }
    return Placement{};
  }
  return Placement{buffer.device(), stream.is_none() ? buffer.stream() : stream.cast<uintptr_t>()};
}

namespace {

// What every out= must be: writable, on the input's device, of its dtype.
void check_output_kind(const PythonBuffer& source, const PythonBuffer& out) {
  if (!out.writable()) reject(PyExc_ValueError, ArgumentError::kBadOutput, "out is read-only");
  if (out.device() != source.device()) {
    reject(PyExc_ValueError, ArgumentError::kBadOutput, "out is on another device than the input");
  }
  if (out.dtype() != source.dtype()) {
    reject(PyExc_ValueError, ArgumentError::kBadOutput,
           std::string("out has dtype ") + dtype_name(out.dtype()) + " but the input has " +
               dtype_name(source.dtype()));
  }
}

bool overlap(const PythonBuffer& a, const PythonBuffer& b) {
  const auto* a_begin = static_cast<const char*>(a.data());
  const auto* b_begin = static_cast<const char*>(b.data());
  return a_begin < b_begin + b.bytes() && b_begin < a_begin + a.bytes();
}

}  // namespace

void check_output(const PythonBuffer& source, const PythonBuffer& out) {
  check_output_kind(source, out);
  if (out.count() != source.count()) {
    reject(PyExc_ValueError, ArgumentError::kBadOutput,
           "out has " + std::to_string(out.count()) + " elements but the input has " +
               std::to_string(source.count()));
  }
  if (overlap(source, out) && out.data() != source.data()) {
    reject(PyExc_ValueError, ArgumentError::kBadOutput, "out partially overlaps the input");
  }
}

void check_block_output(const PythonBuffer& source, const PythonBuffer& out, bool out_is_block, int rank, int size) {
  check_output_kind(source, out);
  const PythonBuffer& whole = out_is_block ? source : out;
  const PythonBuffer& block = out_is_block ? out : source;
  const char* whole_role = out_is_block ? "x" : "out";
  const char* block_role = out_is_block ? "out" : "x";
  if (whole.count() != block.count() * static_cast<size_t>(size)) {
    reject(PyExc_ValueError, ArgumentError::kBadOutput,
           std::string(whole_role) + " has " + std::to_string(whole.count()) + " elements but must have " +
               std::to_string(size) + " (the world size) times " + block_role + "'s " +
               std::to_string(block.count()));
  }
  const char* own_block = static_cast<const char*>(whole.data()) + static_cast<size_t>(rank) * block.bytes();
  if (overlap(whole, block) && block.data() != own_block) {
    reject(PyExc_ValueError, ArgumentError::kBadOutput,
           std::string(block_role) + " overlaps " + whole_role + " other than as this rank's block " +
               std::to_string(rank) + " of it");
  }
}

namespace {

std::optional<std::string> string_attribute(py::handle obj, const char* attribute) {
  if (!PyObject_HasAttrString(obj.ptr(), attribute)) return std::nullopt;
  py::object value = obj.attr(attribute);
  if (!PyUnicode_Check(value.ptr())) return std::nullopt;
  return value.cast<std::string>();
}

// The text a name argument spells: a str as it is; otherwise an enum's
// `name` (torch.distributed.ReduceOp.SUM is RedOpType.SUM, whose name is
// "SUM") or, for a torch.distributed.ReduceOp object, its `op`'s name.
// nullopt when it spells none.
std::optional<std::string> spelled_name(py::handle name) {
  if (PyUnicode_Check(name.ptr())) return name.cast<std::string>();
  if (auto spelled = string_attribute(name, "name")) return spelled;
  if (PyObject_HasAttrString(name.ptr(), "op")) return string_attribute(name.attr("op"), "name");
  return std::nullopt;
}

// Matches `name` against the values' names (and the aliases) in any case.
// The common call, a lowercase str, is matched without building a string.
template <class Enum, class Values = std::initializer_list<Enum>>
Enum parse_name(py::handle name, const char* what, ArgumentError code, const Values& values,
                const char* (*name_of)(Enum), std::initializer_list<std::pair<const char*, Enum>> aliases = {}) {
  if (PyUnicode_Check(name.ptr())) {
    for (Enum v : values) {
      if (PyUnicode_CompareWithASCIIString(name.ptr(), name_of(v)) == 0) return v;
    }
  }
  std::string expected;
  for (Enum v : values) expected += std::string(expected.empty() ? "" : ", ") + name_of(v);
  const std::optional<std::string> spelled = spelled_name(name);
  if (!spelled) {
    reject(PyExc_TypeError, code,
           std::string(what) + " must be a string (one of " + expected + ", in any case), not " + type_name(name));
  }
  std::string lower = *spelled;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (Enum v : values) {
    if (lower == name_of(v)) return v;
  }
  for (const auto& [alias, v] : aliases) {
    if (lower == alias) return v;
  }
  reject(PyExc_ValueError, code,
         "unknown " + std::string(what) + " '" + *spelled + "'; expected one of " + expected + " (in any case)");
}

}  // namespace

ReduceOp parse_op(py::handle op) {
  // "product": torch.distributed's name (ReduceOp.PRODUCT).
  return parse_name(op, "op", ArgumentError::kBadOp,
                    {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax, ReduceOp::kProd}, op_name,
                    {{"product", ReduceOp::kProd}});
}

Algorithm parse_algorithm(py::handle algorithm, Collective collective) {
  // auto, then the collective's own: what the name may be.
  static const std::vector<std::vector<Algorithm>> choices = [] {
    std::vector<std::vector<Algorithm>> lists;
    for (Collective c : all_collectives()) {
      lists.push_back({Algorithm::kAuto});
      for (Algorithm a : algorithms_of(c)) lists.back().push_back(a);
    }
    return lists;
  }();
  static const std::vector<std::string> what = [] {
    std::vector<std::string> names;
    for (Collective c : all_collectives()) names.push_back(std::string(collective_name(c)) + " algorithm");
    return names;
  }();
  return parse_name(algorithm, what.at(static_cast<size_t>(collective)).c_str(), ArgumentError::kBadAlgorithm,
                    choices.at(static_cast<size_t>(collective)), algorithm_name);
}

}  // namespace pyallreduce
