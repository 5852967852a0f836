// pyallreduce._C.lars_step: the fused CPU LARS step (csrc/optim/lars.h) over
// lists of tensors. pyallreduce.optim.LARS decides which tensors come here.
#include "optim_bindings.h"

#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../optim/lars.h"
#include "buffers.h"

namespace py = pybind11;

namespace pyallreduce {

namespace {

struct StepArguments {
  std::vector<std::unique_ptr<PythonBuffer>> buffers;  // held open for the step
  DType dtype = DType::kFloat32;
};

const PythonBuffer& open_buffer(StepArguments& args, py::handle tensor, const std::string& role, size_t count,
                                bool writable) {
  args.buffers.push_back(std::make_unique<PythonBuffer>(tensor, role.c_str()));
  const PythonBuffer& buffer = *args.buffers.back();
  if (writable && !buffer.writable()) throw InvalidArgument(role + " is read-only");
  if (buffer.dtype() != args.dtype) {
    throw InvalidArgument(role + " is " + dtype_name(buffer.dtype()) + " but params[0] is " + dtype_name(args.dtype));
  }
  if (buffer.count() != count) {
    throw InvalidArgument(role + " has " + std::to_string(buffer.count()) + " elements but its parameter has " +
                          std::to_string(count));
  }
  return buffer;
}

template <class T>
std::vector<double> run_step(StepArguments& args, const py::list& params, const py::list& grads,
                             const py::object& buffers, const std::vector<bool>& adapt,
                             const std::vector<double>& corrections, const std::vector<double>& known_w_squares,
                             const LarsHyperparameters& hyper, int threads, size_t tile_bytes) {
  std::vector<LarsTensor<T>> tensors;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string index = "[" + std::to_string(i) + "]";
    args.buffers.push_back(std::make_unique<PythonBuffer>(params[i], ("params" + index).c_str()));
    const PythonBuffer& param = *args.buffers.back();
    if (!param.writable()) throw InvalidArgument("params" + index + " is read-only");
    const size_t count = param.count();
    const PythonBuffer& grad = open_buffer(args, grads[i], "grads" + index, count, false);
    T* momentum_buffer = nullptr;
    if (!buffers.is_none()) {
      momentum_buffer = static_cast<T*>(
          open_buffer(args, buffers.cast<py::list>()[i], "momentum_buffers" + index, count, true).data());
    }
    tensors.push_back({static_cast<T*>(param.data()), static_cast<const T*>(grad.data()), momentum_buffer, count,
                       adapt[i], corrections[i], known_w_squares[i]});
  }
  py::gil_scoped_release release;
  return lars_step(tensors, hyper, threads, tile_bytes);
}

std::vector<double> lars_step_binding(const py::list& params, const py::list& grads,
                                      const py::object& momentum_buffers, const std::vector<bool>& adapt,
                                      const std::vector<double>& momentum_corrections, double lr, double momentum,
                                      double weight_decay, double trust_coefficient, double eps, bool nesterov,
                                      bool trust_clip, int threads, size_t tile_bytes,
                                      std::optional<std::vector<double>> known_w_squares) {
  const size_t n = params.size();
  if (!known_w_squares) known_w_squares.emplace(n, std::nan(""));
  if (grads.size() != n || adapt.size() != n || momentum_corrections.size() != n || known_w_squares->size() != n ||
      (!momentum_buffers.is_none() && momentum_buffers.cast<py::list>().size() != n)) {
    throw InvalidArgument(
        "params, grads, momentum_buffers, adapt, momentum_corrections and known_w_squares differ in length");
  }
  for (size_t i = 0; i < n; ++i) {
    if ((*known_w_squares)[i] < 0) {
      throw InvalidArgument("known_w_squares[" + std::to_string(i) + "] is negative: a sum of squares, or NaN");
    }
  }
  StepArguments args;
  try {
    if (n > 0) args.dtype = PythonBuffer(params[0], "params[0]").dtype();
    const LarsHyperparameters hyper{lr, momentum, weight_decay, trust_coefficient, eps, nesterov, trust_clip};
    switch (args.dtype) {
      case DType::kFloat32:
        return run_step<float>(args, params, grads, momentum_buffers, adapt, momentum_corrections,
                               *known_w_squares, hyper, threads, tile_bytes);
      case DType::kFloat64:
        return run_step<double>(args, params, grads, momentum_buffers, adapt, momentum_corrections,
                                *known_w_squares, hyper, threads, tile_bytes);
      default:
        throw InvalidArgument(std::string("the fused LARS step takes float32 or float64, not ") +
                              dtype_name(args.dtype));
    }
  } catch (const Rejection& rejection) {
    PyErr_SetString(rejection.exception_type, rejection.message.c_str());
    throw py::error_already_set();
  }
}

}  // namespace

void bind_optim(py::module_& m) {
  m.def("lars_step", &lars_step_binding, py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"),
        py::arg("adapt"), py::arg("momentum_corrections"), py::arg("lr"), py::arg("momentum"),
        py::arg("weight_decay"), py::arg("trust_coefficient"), py::arg("eps"), py::arg("nesterov"),
        py::arg("trust_clip"), py::arg("threads"), py::arg("tile_bytes") = 0, py::arg("known_w_squares") = py::none(),
        "One fused LARS step over contiguous CPU float32 or float64 tensors, in place (momentum_buffers None\n"
        "when momentum is 0), in tiles of tile_bytes (0: the last-level cache). known_w_squares (None: all NaN):\n"
        "per tensor, the sum of squares of its parameters as returned by the previous step, if nothing wrote\n"
        "them since, else NaN. Returns each adapted tensor's sum of squares after the step (NaN for the\n"
        "others). See pyallreduce.optim.LARS for the update.");
}

}  // namespace pyallreduce
