// The module pyallreduce._cuda, built only where nvcc is found: the CUDA
// backend of pyallreduce._C's communicators (registered with _C on import:
// NCCL and staged-MPI transports, reduction kernels), and the fused CUDA LARS
// step on torch CUDA tensors (read through their Python attributes, so the
// module does not link libtorch), enqueued on the stream the caller names.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.h"
#include "lars.cuh"
#include "nccl_library.h"
#include "reduction_kernels.cuh"

namespace py = pybind11;
using namespace pyallreduce::cuda;

namespace {

struct DeviceTensor {
  void* data;
  size_t count;
  std::string dtype;  // "torch.float32", ...
};

DeviceTensor read_cuda_tensor(py::handle tensor, const std::string& role) {
  if (!py::hasattr(tensor, "is_cuda") || !tensor.attr("is_cuda").cast<bool>()) {
    throw py::value_error(role + " is not a CUDA tensor");
  }
  if (!tensor.attr("is_contiguous")().cast<bool>()) throw py::value_error(role + " is not contiguous");
  return {reinterpret_cast<void*>(tensor.attr("data_ptr")().cast<uintptr_t>()),
          tensor.attr("numel")().cast<size_t>(), py::str(tensor.attr("dtype")).cast<std::string>()};
}

pyallreduce::DType reduction_dtype_of(const std::string& dtype) {
  using pyallreduce::DType;
  for (DType d : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16, DType::kInt32, DType::kInt64}) {
    if (dtype == std::string("torch.") + pyallreduce::dtype_name(d)) return d;
  }
  throw py::value_error("dtype " + dtype + " has no reduction kernel");
}

GradType grad_type_of(const std::string& dtype, const std::string& role) {
  if (dtype == "torch.float32") return GradType::kFloat32;
  if (dtype == "torch.float16") return GradType::kFloat16;
  if (dtype == "torch.bfloat16") return GradType::kBFloat16;
  throw py::value_error(role + " is " + dtype + "; the CUDA LARS step takes float32, float16 or bfloat16 gradients");
}

std::vector<LarsTensor> read_tensors(const py::list& params, const py::list& grads, const py::object& buffers,
                                     const std::vector<bool>& adapt, const std::vector<double>& corrections,
                                     GradType* grad_type) {
  const size_t n = params.size();
  if (grads.size() != n || adapt.size() != n || corrections.size() != n ||
      (!buffers.is_none() && buffers.cast<py::list>().size() != n)) {
    throw py::value_error("params, grads, momentum_buffers, adapt and momentum_corrections differ in length");
  }
  std::vector<LarsTensor> tensors;
  for (size_t i = 0; i < n; ++i) {
    const std::string index = "[" + std::to_string(i) + "]";
    const DeviceTensor param = read_cuda_tensor(params[i], "params" + index);
    if (param.dtype != "torch.float32") throw py::value_error("params" + index + " is " + param.dtype + ", not float32");
    const DeviceTensor grad = read_cuda_tensor(grads[i], "grads" + index);
    const GradType type = grad_type_of(grad.dtype, "grads" + index);
    if (i == 0) *grad_type = type;
    if (type != *grad_type || grad.count != param.count) {
      throw py::value_error("grads" + index + " differs from params" + index + " in size, or from grads[0] in dtype");
    }
    float* momentum_buffer = nullptr;
    if (!buffers.is_none()) {
      const DeviceTensor v = read_cuda_tensor(buffers.cast<py::list>()[i], "momentum_buffers" + index);
      if (v.dtype != "torch.float32" || v.count != param.count) {
        throw py::value_error("momentum_buffers" + index + " must be float32 and the size of params" + index);
      }
      momentum_buffer = static_cast<float*>(v.data);
    }
    tensors.push_back({static_cast<float*>(param.data), grad.data, momentum_buffer, param.count, adapt[i],
                       corrections[i]});
  }
  return tensors;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pyallreduce's CUDA backend (NCCL and staged-MPI transports, reduction kernels) and fused LARS step.";
  set_nccl_candidates(
      py::module_::import("pyallreduce._build_info").attr("nccl_library_candidates")().cast<std::vector<std::string>>());
  py::module_::import("pyallreduce._C")
      .attr("_register_device_backend")(py::capsule(&cuda_backend(), "pyallreduce.DeviceBackend"));
  m.def(
      "nccl_library",
      []() -> py::object {
        std::string why;
        const NcclLibrary* nccl = nccl_library(&why);
        if (nccl == nullptr) return py::none();
        return py::make_tuple(nccl->path, nccl->version);
      },
      "(path, version code) of the libnccl.so.2 this process loaded for pyallreduce, or None.");
  m.def(
      "combine",
      [](py::handle left, py::handle right, py::handle out, const std::string& op, uintptr_t stream) {
        const DeviceTensor l = read_cuda_tensor(left, "left"), r = read_cuda_tensor(right, "right");
        const DeviceTensor o = read_cuda_tensor(out, "out");
        if (l.dtype != o.dtype || r.dtype != o.dtype || l.count != o.count || r.count != o.count) {
          throw py::value_error("left, right and out must have one dtype and one size");
        }
        pyallreduce::ReduceOp code = pyallreduce::ReduceOp::kSum;
        bool known = false;
        for (auto candidate : {pyallreduce::ReduceOp::kSum, pyallreduce::ReduceOp::kAvg, pyallreduce::ReduceOp::kMin,
                               pyallreduce::ReduceOp::kMax, pyallreduce::ReduceOp::kProd}) {
          if (op == pyallreduce::op_name(candidate)) {
            code = candidate;
            known = true;
          }
        }
        if (!known) throw py::value_error("unknown op '" + op + "'");
        launch_combine(reduction_dtype_of(o.dtype), code, l.data, r.data, o.data, o.count,
                       reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("left"), py::arg("right"), py::arg("out"), py::arg("op"), py::arg("stream"),
      "Enqueue out = left (op) right on `stream` with the kernel the algorithms' reduce steps use\n"
      "(for benchmarks; avg combines as sum). Contiguous CUDA tensors of one dtype and size.");
  m.def(
      "lars_workspace_elements",
      [](const std::vector<size_t>& counts) {
        std::vector<LarsTensor> tensors;
        for (size_t count : counts) tensors.push_back({nullptr, nullptr, nullptr, count, true, 1.0});
        return lars_workspace_elements(tensors);
      },
      py::arg("counts"), "How many float64 elements of device workspace lars_step needs for tensors of these sizes.");
  m.def(
      "lars_step",
      [](const py::list& params, const py::list& grads, const py::object& momentum_buffers,
         const std::vector<bool>& adapt, const std::vector<double>& momentum_corrections, double lr,
         double momentum, double weight_decay, double trust_coefficient, double eps, bool nesterov,
         bool trust_clip, py::handle workspace, uintptr_t stream) {
        GradType grad_type = GradType::kFloat32;
        const std::vector<LarsTensor> tensors =
            read_tensors(params, grads, momentum_buffers, adapt, momentum_corrections, &grad_type);
        const DeviceTensor scratch = read_cuda_tensor(workspace, "workspace");
        if (scratch.dtype != "torch.float64" || scratch.count < lars_workspace_elements(tensors)) {
          throw py::value_error("workspace must be float64 with lars_workspace_elements(...) elements");
        }
        const LarsHyperparameters hyper{lr, momentum, weight_decay, trust_coefficient, eps, nesterov, trust_clip};
        lars_step(tensors, grad_type, hyper, static_cast<double*>(scratch.data),
                  reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("adapt"),
      py::arg("momentum_corrections"), py::arg("lr"), py::arg("momentum"), py::arg("weight_decay"),
      py::arg("trust_coefficient"), py::arg("eps"), py::arg("nesterov"), py::arg("trust_clip"),
      py::arg("workspace"), py::arg("stream"),
      "Enqueue one fused LARS step on `stream` (a cudaStream_t as an integer) over float32 CUDA params, with\n"
      "float32/float16/bfloat16 grads of one dtype; see pyallreduce.optim.LARS for the update.");
}
