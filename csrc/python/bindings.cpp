// The module pyallreduce._C: communicators over MPI (from an mpi4py
// communicator) and over in-process threads. With buffers.cpp, the only code
// that knows Python.
#include <mpi.h>
#include <mpi4py/mpi4py.h>
#include <pybind11/pybind11.h>
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../communicator.h"
#include "../reduce/reduction.h"
#include "../transport/local_transport.h"
#include "../transport/mpi_transport.h"
#include "buffers.h"
#include "optim_bindings.h"

namespace py = pybind11;
using namespace pyallreduce;

namespace {

MPI_Comm mpi_handle(const py::object& mpi4py_comm) {
  static bool imported = false;
  if (!imported) {
    if (import_mpi4py() < 0) throw py::error_already_set();
    imported = true;
  }
  MPI_Comm* handle = PyMPIComm_Get(mpi4py_comm.ptr());
  if (handle == nullptr) throw py::error_already_set();
  if (*handle == MPI_COMM_NULL) throw InvalidArgument("cannot build a communicator on MPI.COMM_NULL");
  return *handle;
}

// The MPI transport of a communicator made by from_mpi; InvalidArgument for
// an in-process one.
MpiTransport& mpi_transport_of(const Communicator& comm) {
  auto* mpi = dynamic_cast<MpiTransport*>(&comm.host_transport());
  if (mpi == nullptr) throw InvalidArgument("only a communicator over MPI has shared-memory pipes");
  return *mpi;
}

std::string mpi_built_against() {
#if defined(OMPI_MAJOR_VERSION)
  return "Open MPI " + std::to_string(OMPI_MAJOR_VERSION) + "." + std::to_string(OMPI_MINOR_VERSION) +
         "." + std::to_string(OMPI_RELEASE_VERSION);
#elif defined(MPICH_VERSION)
  return std::string("MPICH ") + MPICH_VERSION;
#else
  return "MPI " + std::to_string(MPI_VERSION) + "." + std::to_string(MPI_SUBVERSION);
#endif
}

// Runs `call` (which reads the Python arguments, then reduces with the GIL
// released) so that a rank rejecting its arguments still takes part in the
// argument check: every other rank then raises instead of waiting for it.
template <class Call>
void telling_every_rank_of_rejections(Communicator& comm, Call call) {
  auto tell_the_other_ranks = [&](ArgumentError code) {
    if (comm.freed()) return;
    py::gil_scoped_release release;
    comm.report_invalid_arguments(code);
  };
  try {
    call();
  } catch (const Rejection& rejection) {
    tell_the_other_ranks(rejection.code);
    PyErr_SetString(rejection.exception_type, rejection.message.c_str());
    throw py::error_already_set();
  } catch (py::error_already_set&) {
    // Reading an argument raised in Python (an odd tensor subclass, say):
    // still a rejected argument as far as the other ranks are concerned.
    tell_the_other_ranks(ArgumentError::kBadBuffer);
    throw;
  } catch (const py::cast_error& error) {
    // An attribute of an unexpected type (a tensor subclass's data_ptr() that
    // returns a str, say), found while reading the arguments.
    tell_the_other_ranks(ArgumentError::kBadBuffer);
    PyErr_SetString(PyExc_TypeError,
                    (std::string("a buffer argument has an attribute of an unexpected type: ") + error.what()).c_str());
    throw py::error_already_set();
  }
}

// allreduce_coalesced's bucket_bytes: a positive Python int.
size_t parse_bucket_bytes(py::handle bucket_bytes) {
  if (!PyLong_Check(bucket_bytes.ptr()) || PyBool_Check(bucket_bytes.ptr())) {
    throw Rejection{PyExc_TypeError, ArgumentError::kBadBucketBytes,
                    std::string("bucket_bytes must be an int, not ") + Py_TYPE(bucket_bytes.ptr())->tp_name};
  }
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(bucket_bytes.ptr(), &overflow);
  if (overflow != 0 || value <= 0) {
    throw Rejection{PyExc_ValueError, ArgumentError::kBadBucketBytes,
                    "bucket_bytes must be a positive number of bytes, not " + py::repr(bucket_bytes).cast<std::string>()};
  }
  return static_cast<size_t>(value);
}

// The whole per-call path of pyallreduce.Communicator.allreduce.
py::object allreduce(Communicator& comm, py::handle x, py::handle op, py::handle algorithm, py::handle out,
                     py::handle stream) {
  telling_every_rank_of_rejections(comm, [&] {
    const PythonBuffer source(x, "x");
    std::optional<PythonBuffer> target;
    if (!out.is_none()) {
      target.emplace(out, "out");
      check_output(source, *target);
    } else if (!source.writable()) {
      throw Rejection{PyExc_ValueError, ArgumentError::kBadBuffer, "x is read-only; pass a writable array or out="};
    }
    const ReduceOp op_code = parse_op(op);
    const Algorithm algorithm_code = parse_algorithm(algorithm);
    const Placement placement = placement_of(source, stream);
    void* output = target ? target->data() : source.data();
    mark_modified({target ? &*target : &source});
    py::gil_scoped_release release;
    comm.allreduce(source.data(), output, source.count(), source.dtype(), op_code, algorithm_code, placement);
  });
  return py::reinterpret_borrow<py::object>(out.is_none() ? x : out);
}

// The per-call path of pyallreduce.Communicator.allreduce_coalesced: every
// tensor is read and checked (writable, one dtype) before anything is sent.
py::object allreduce_coalesced(Communicator& comm, py::handle tensor_list, py::handle op, py::handle algorithm,
                               py::handle bucket_bytes, py::handle stream) {
  telling_every_rank_of_rejections(comm, [&] {
    if (!PyList_Check(tensor_list.ptr())) {
      throw Rejection{PyExc_TypeError, ArgumentError::kBadBuffer,
                      std::string("tensors must be a sequence of tensors, not ") + Py_TYPE(tensor_list.ptr())->tp_name};
    }
    const auto tensors = py::reinterpret_borrow<py::list>(tensor_list);
    const size_t bucket = parse_bucket_bytes(bucket_bytes);
    std::vector<std::unique_ptr<PythonBuffer>> buffers;
    std::vector<Communicator::Span> spans;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const std::string role = "tensors[" + std::to_string(i) + "]";
      buffers.push_back(std::make_unique<PythonBuffer>(tensors[i], role.c_str()));
      const PythonBuffer& buffer = *buffers.back();
      if (!buffer.writable()) {
        throw Rejection{PyExc_ValueError, ArgumentError::kBadBuffer, role + " is read-only"};
      }
      if (buffer.device() != buffers.front()->device()) {
        throw Rejection{PyExc_ValueError, ArgumentError::kBadBuffer,
                        role + " is on another device than tensors[0]; coalesce tensors of one device per call"};
      }
      if (buffer.dtype() != buffers.front()->dtype()) {
        throw Rejection{PyExc_TypeError, ArgumentError::kBadDtype,
                        role + " is " + dtype_name(buffer.dtype()) + " but tensors[0] is " +
                            dtype_name(buffers.front()->dtype()) + "; coalesce tensors of one dtype per call"};
      }
      spans.push_back({buffer.data(), buffer.count()});
    }
    const DType dtype = buffers.empty() ? DType::kFloat32 : buffers.front()->dtype();
    const ReduceOp op_code = parse_op(op);
    const Algorithm algorithm_code = parse_algorithm(algorithm);
    const Placement placement = buffers.empty() ? Placement{} : placement_of(*buffers.front(), stream);
    std::vector<const PythonBuffer*> written;
    for (const auto& buffer : buffers) written.push_back(buffer.get());
    mark_modified(written);
    py::gil_scoped_release release;
    comm.allreduce_coalesced(spans, dtype, op_code, algorithm_code, bucket, placement);
  });
  return py::reinterpret_borrow<py::object>(tensor_list);
}

// The per-call paths of reduce_scatter and allgather: `out` is the block of
// `x` (reduce_scatter) or `x` the block of `out` (allgather).
py::object reduce_scatter(Communicator& comm, py::handle x, py::handle out, py::handle op, py::handle algorithm,
                          py::handle stream) {
  telling_every_rank_of_rejections(comm, [&] {
    const PythonBuffer source(x, "x");
    const PythonBuffer target(out, "out");
    check_block_output(source, target, /*out_is_block=*/true, comm.rank(), comm.size());
    const ReduceOp op_code = parse_op(op);
    const Algorithm algorithm_code = parse_algorithm(algorithm, Collective::kReduceScatter);
    const Placement placement = placement_of(source, stream);
    mark_modified({&target});
    py::gil_scoped_release release;
    comm.reduce_scatter(source.data(), target.data(), target.count(), source.dtype(), op_code, algorithm_code,
                        placement);
  });
  return py::reinterpret_borrow<py::object>(out);
}

py::object allgather(Communicator& comm, py::handle x, py::handle out, py::handle algorithm, py::handle stream) {
  telling_every_rank_of_rejections(comm, [&] {
    const PythonBuffer source(x, "x");
    const PythonBuffer target(out, "out");
    check_block_output(source, target, /*out_is_block=*/false, comm.rank(), comm.size());
    const Algorithm algorithm_code = parse_algorithm(algorithm, Collective::kAllgather);
    const Placement placement = placement_of(source, stream);
    mark_modified({&target});
    py::gil_scoped_release release;
    comm.allgather(source.data(), target.data(), source.count(), source.dtype(), algorithm_code, placement);
  });
  return py::reinterpret_borrow<py::object>(out);
}

// A broadcast's root: a Python int (its range is checked with the others').
int parse_root(py::handle root) {
  if (!PyLong_Check(root.ptr()) || PyBool_Check(root.ptr())) {
    throw Rejection{PyExc_TypeError, ArgumentError::kBadRoot,
                    std::string("root must be an int, not ") + Py_TYPE(root.ptr())->tp_name};
  }
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(root.ptr(), &overflow);
  return overflow != 0 || value < INT_MIN || value > INT_MAX ? -1 : static_cast<int>(value);
}

py::object broadcast(Communicator& comm, py::handle x, py::handle root, py::handle algorithm, py::handle stream) {
  telling_every_rank_of_rejections(comm, [&] {
    const PythonBuffer data(x, "x");
    const int root_rank = parse_root(root);
    if (!data.writable()) {
      throw Rejection{PyExc_ValueError, ArgumentError::kBadBuffer, "x is read-only; a broadcast writes it in place"};
    }
    if (root_rank < 0 || root_rank >= comm.size()) {
      throw Rejection{PyExc_ValueError, ArgumentError::kBadRoot,
                      "root " + py::repr(root).cast<std::string>() + " is not a rank of this communicator of " +
                          std::to_string(comm.size())};
    }
    const Algorithm algorithm_code = parse_algorithm(algorithm, Collective::kBroadcast);
    const Placement placement = placement_of(data, stream);
    mark_modified({&data});
    py::gil_scoped_release release;
    comm.broadcast(data.data(), data.count(), data.dtype(), root_rank, algorithm_code, placement);
  });
  return py::reinterpret_borrow<py::object>(x);
}

// A device transport's name, or None.
py::object name_or_none(const std::optional<DeviceTransportKind>& kind) {
  return kind ? py::object(py::str(device_transport_name(*kind))) : py::object(py::none());
}

// pyallreduce's describe_call: what a call on `x` (a buffer, or for
// allreduce_coalesced a list of them) with `op` and `algorithm` would be if
// made on this thread: (count, dtype, op, algorithm, stream). The count of a
// list is its tensors' total; its dtype and stream are the first tensor's;
// the stream is None for host memory. Raises as the call would where it
// rejects the arguments (without telling other ranks: this reads, it does not
// communicate).
py::tuple describe_call(py::handle x, py::handle op, py::handle algorithm, Collective collective) {
  try {
    size_t count = 0;
    std::optional<DType> dtype;
    py::object stream = py::none();
    auto read = [&](py::handle item, const std::string& role) {
      const PythonBuffer buffer(item, role.c_str());
      count += buffer.count();
      if (dtype) return;
      dtype = buffer.dtype();
      if (buffer.device() >= 0) stream = py::int_(buffer.stream());
    };
    if (PyList_Check(x.ptr())) {
      const auto tensors = py::reinterpret_borrow<py::list>(x);
      for (size_t i = 0; i < tensors.size(); ++i) read(tensors[i], "tensors[" + std::to_string(i) + "]");
    } else {
      read(x, "x");
    }
    return py::make_tuple(count, dtype ? py::cast(*dtype) : py::object(py::none()),
                          op.is_none() ? py::object(py::none()) : py::cast(parse_op(op)),
                          parse_algorithm(algorithm, collective), stream);
  } catch (const Rejection& rejection) {
    PyErr_SetString(rejection.exception_type, rejection.message.c_str());
    throw py::error_already_set();
  }
}

// Communicator.loopback: `x`'s bytes into `out` through this rank's transport.
void loopback(Communicator& comm, py::handle x, py::handle out, py::handle stream) {
  try {
    const PythonBuffer source(x, "x");
    const PythonBuffer target(out, "out");
    check_output(source, target);
    const Placement placement = placement_of(source, stream);
    py::gil_scoped_release release;
    comm.loopback(source.data(), target.data(), source.bytes(), placement);
  } catch (const Rejection& rejection) {
    PyErr_SetString(rejection.exception_type, rejection.message.c_str());
    throw py::error_already_set();
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyallreduce's C++ core: transports, allreduce algorithms and reductions.";

  // pyallreduce.TimeoutError; like every transport error, a RuntimeError.
  static PyObject* const timeout_error = PyErr_NewExceptionWithDoc(
      "pyallreduce.TimeoutError",
      "A call waited longer than the communicator's timeout. The message says which call, where in its\n"
      "algorithm, which peer it waited for, and which rank holds the call up.",
      PyExc_RuntimeError, nullptr);
  m.attr("TimeoutError") = py::handle(timeout_error);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const TimeoutError& e) {
      PyErr_SetString(timeout_error, e.what());
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const TransportError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  py::enum_<DType>(m, "DType")
      .value("float32", DType::kFloat32)
      .value("float64", DType::kFloat64)
      .value("float16", DType::kFloat16)
      .value("bfloat16", DType::kBFloat16)
      .value("int32", DType::kInt32)
      .value("int64", DType::kInt64);
  py::enum_<ReduceOp>(m, "ReduceOp")
      .value("sum", ReduceOp::kSum)
      .value("avg", ReduceOp::kAvg)
      .value("min", ReduceOp::kMin)
      .value("max", ReduceOp::kMax)
      .value("prod", ReduceOp::kProd);
  py::enum_<Collective> collective_enum(m, "Collective");
  for (Collective c : all_collectives()) collective_enum.value(collective_name(c), c);
  py::enum_<Algorithm> algorithm_enum(m, "Algorithm");
  for (Algorithm a : all_algorithms()) algorithm_enum.value(algorithm_name(a), a);
  m.def("algorithms_of", &algorithms_of, py::arg("collective"),
        "The concrete algorithms of a collective, fewest messages first.");

  py::class_<CommunicatorOptions>(m, "CommunicatorOptions")
      .def(py::init<>())
      .def(py::init<const CommunicatorOptions&>(), py::arg("other"), "A copy of `other`.")
      .def_readwrite("check_arguments", &CommunicatorOptions::check_arguments)
      .def_readwrite("ring_segment_bytes", &CommunicatorOptions::ring_segment_bytes)
      .def_readwrite("ring_receive_window", &CommunicatorOptions::ring_receive_window)
      .def_readwrite("hierarchical_pieces", &CommunicatorOptions::hierarchical_pieces)
      .def_readwrite("streaming_store_bytes", &CommunicatorOptions::streaming_store_bytes)
      .def_readwrite("algorithm_rules", &CommunicatorOptions::algorithm_rules)
      .def_readwrite("between_hosts_rules", &CommunicatorOptions::between_hosts_rules)
      .def_readwrite("log_selection", &CommunicatorOptions::log_selection)
      .def_readwrite("timeout_s", &CommunicatorOptions::timeout_s)
      .def_readwrite("on_break", &CommunicatorOptions::on_break)
      .def_property(
          "device_transport", [](const CommunicatorOptions& o) { return name_or_none(o.device_transport); },
          [](CommunicatorOptions& o, py::handle name) {
            o.device_transport.reset();
            if (!name.is_none()) o.device_transport = device_transport_from_name(py::str(name));
          },
          "How CUDA buffers travel: 'nccl', 'mpi', or None for NCCL where libnccl.so.2 loads, else MPI.");

  py::class_<LocalWorld, std::shared_ptr<LocalWorld>>(m, "LocalWorld")
      .def(py::init<int, bool, const std::vector<int>&>(), py::arg("size"), py::arg("grouped") = false,
           py::arg("hosts") = std::vector<int>{},
           "An in-process world of `size` ranks; `grouped` keeps NCCL's group semantics, `hosts` names\n"
           "each rank's host (see pyallreduce.testing.spawn_local).")
      .def_property_readonly("size", &LocalWorld::size)
      .def_property_readonly("grouped", &LocalWorld::grouped)
      .def("abort", &LocalWorld::abort, py::arg("reason"),
           "Wake every rank blocked in this world with an error carrying `reason`.")
      .def(
          "inject_fault",
          [](LocalWorld& world, int rank, const std::string& kind, size_t message, double seconds) {
            static const std::pair<const char*, LocalFault::Kind> kinds[] = {
                {"stall", LocalFault::Kind::kStall}, {"slow", LocalFault::Kind::kSlow},
                {"short", LocalFault::Kind::kShort}};
            for (const auto& [name, code] : kinds) {
              if (kind == name) return world.inject(LocalFault{rank, code, message, seconds});
            }
            throw InvalidArgument("fault kind '" + kind + "': expected stall, slow or short");
          },
          py::arg("rank"), py::arg("kind"), py::arg("message"), py::arg("seconds") = 0.0,
          "Make `rank`'s send number `message` (counted from 0, argument checks included) late by `seconds`\n"
          "('stall'), every send from it on late ('slow'), or one byte short ('short').");

  py::class_<CallRecord>(m, "CallRecord", "One call of a communicator's flight recorder.")
      .def_readonly("call", &CallRecord::call)
      .def_property_readonly("operation", [](const CallRecord& r) { return std::string(r.operation); })
      .def_readonly("count", &CallRecord::count)
      .def_readonly("dtype", &CallRecord::dtype)
      .def_readonly("reduces", &CallRecord::reduces, "whether op means anything for this operation")
      .def_readonly("op", &CallRecord::op)
      .def_readonly("algorithm", &CallRecord::algorithm)
      .def_property_readonly("state", [](const CallRecord& r) { return std::string(call_state_name(r.state)); })
      .def_readonly("where", &CallRecord::where)
      .def_readonly("started_s", &CallRecord::started_s)
      .def_readonly("ended_s", &CallRecord::ended_s)
      .def_readonly("error", &CallRecord::error);

  py::class_<Communicator>(m, "Communicator")
      .def_static(
          "from_mpi",
          [](const py::object& mpi4py_comm, const CommunicatorOptions& options, size_t max_message_bytes,
             size_t shared_memory_message_bytes) {
            const MPI_Comm handle = mpi_handle(mpi4py_comm);
            py::gil_scoped_release release;  // MPI_Comm_dup is collective
            return std::make_unique<Communicator>(
                std::make_unique<MpiTransport>(handle, max_message_bytes, shared_memory_message_bytes), options);
          },
          py::arg("mpi4py_comm"), py::arg("options"), py::arg("max_message_bytes") = static_cast<size_t>(INT_MAX),
          py::arg("shared_memory_message_bytes") = 0,
          "Duplicate an mpi4py communicator (collective) and communicate over MPI point-to-point, and over\n"
          "shared-memory pipes to the ranks of this host for messages of at most shared_memory_message_bytes.")
      .def_static(
          "local",
          [](std::shared_ptr<LocalWorld> world, int rank, const CommunicatorOptions& options) {
            return std::make_unique<Communicator>(std::make_unique<LocalTransport>(std::move(world), rank),
                                                  options);
          },
          py::arg("world"), py::arg("rank"), py::arg("options"),
          "Rank `rank` of an in-process world; each rank must run on its own thread.")
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly(
          "hosts",
          [](const Communicator& c) {
            std::vector<int> hosts;
            for (int r = 0; r < c.size(); ++r) hosts.push_back(c.layout().host_of(r));
            return hosts;
          },
          "Each rank's host, numbered from 0 in the order of the hosts' lowest ranks.")
      .def_property_readonly("freed", &Communicator::freed)
      .def_property_readonly("check_arguments",
                             [](const Communicator& c) { return c.options().check_arguments; })
      .def("set_cost_model", &Communicator::set_cost_model, py::arg("model"), py::arg("source"),
           "The constants algorithm=\"auto\" uses from now on, and where they came from (for the log).")
      .def_property("ring_segment_bytes",
                    [](const Communicator& c) { return c.options().ring_segment_bytes; },
                    &Communicator::set_ring_segment_bytes)
      .def_property("ring_receive_window",
                    [](const Communicator& c) { return c.options().ring_receive_window; },
                    &Communicator::set_ring_receive_window)
      .def_property("streaming_store_bytes",
                    [](const Communicator& c) { return c.options().streaming_store_bytes; },
                    &Communicator::set_streaming_store_bytes,
                    "Out-of-place calls of at least this many bytes store their outputs around the cache.")
      .def_property(
          "shared_memory_message_bytes",
          [](const Communicator& c) { return mpi_transport_of(c).shared_memory_message_bytes(); },
          [](Communicator& c, size_t bytes) { mpi_transport_of(c).set_shared_memory_message_bytes(bytes); },
          "Messages of at most this many bytes to a rank of this host go through shared-memory pipes (0: none\n"
          "do). Only an MPI communicator has it; set it alike on every rank, between calls.")
      .def_property_readonly(
          "shared_memory_absent",
          [](const Communicator& c) { return mpi_transport_of(c).shared_memory_absent(); },
          "Why this rank has no shared-memory pipes, or '' where it has them.")
      .def_property_readonly(
          "device_transport", [](const Communicator& c) { return name_or_none(c.device_transport()); },
          "The transport CUDA calls use ('nccl' or 'mpi'), or None before pyallreduce._cuda is loaded.")
      .def("allreduce_coalesced", &allreduce_coalesced, py::arg("tensors"), py::arg("op"), py::arg("algorithm"),
           py::arg("bucket_bytes"), py::arg("stream") = py::none(),
           "Reduce every tensor of the list in place, packed into buckets of at most `bucket_bytes`; returns "
           "the list. See pyallreduce.Communicator.allreduce_coalesced.")
      .def("loopback", &loopback, py::arg("x"), py::arg("out"), py::arg("stream") = py::none(),
           "Send x's bytes to this rank itself into out over the transport x would use (see\n"
           "pyallreduce.testing.loopback).")
      .def(
          "ping_pong",
          [](Communicator& c, int first, int second, size_t bytes, int repeats) {
            py::gil_scoped_release release;
            return c.ping_pong(first, second, bytes, repeats);
          },
          py::arg("first"), py::arg("second"), py::arg("bytes"), py::arg("repeats"),
          "One-way seconds of each of `repeats` ping-pongs of `bytes` between ranks first and second over\n"
          "the host transport (after an untimed one); on the other ranks [] at once.")
      .def("allreduce", &allreduce, py::arg("x"), py::arg("op"), py::arg("algorithm"), py::arg("out"),
           py::arg("stream") = py::none(),
           "Reduce `x` across all ranks, in place or into `out` (None for in place); returns the result's "
           "object. See pyallreduce.Communicator.allreduce.")
      .def("reduce_scatter", &reduce_scatter, py::arg("x"), py::arg("out"), py::arg("op"), py::arg("algorithm"),
           py::arg("stream") = py::none(),
           "Reduce x (world size blocks) across all ranks into out, this rank's block; returns out. See\n"
           "pyallreduce.Communicator.reduce_scatter.")
      .def("allgather", &allgather, py::arg("x"), py::arg("out"), py::arg("algorithm"), py::arg("stream") = py::none(),
           "Gather every rank's x into out, rank r's as block r; returns out. See\n"
           "pyallreduce.Communicator.allgather.")
      .def("broadcast", &broadcast, py::arg("x"), py::arg("root"), py::arg("algorithm"),
           py::arg("stream") = py::none(),
           "Copy rank root's x into x on every rank; returns x. See pyallreduce.Communicator.broadcast.")
      .def(
          "barrier",
          [](Communicator& c) {
            py::gil_scoped_release release;
            c.barrier();
          },
          "Return once every rank has called it.")
      .def(
          "choose_algorithm",
          [](const Communicator& c, Algorithm requested, size_t bytes, Collective collective) {
            std::string reason;
            const Algorithm chosen = c.choose_algorithm(collective, requested, bytes, &reason);
            return py::make_tuple(chosen, reason);
          },
          py::arg("requested"), py::arg("bytes"), py::arg("collective") = Collective::kAllreduce,
          "The algorithm a call of `collective` on `bytes` would use, and why.")
      .def("packing_limit", &Communicator::packing_limit, py::arg("requested") = Algorithm::kAuto,
           "The least span allreduce_coalesced reduces where it lies rather than packing it with others.")
      .def("free", &Communicator::free, "Release the transport; later calls raise ValueError.")
      .def("flight_record", &Communicator::flight_record,
           "The last calls (at most 64), oldest first; the running one with the step it is in.")
      .def_property_readonly("broken_reason", &Communicator::broken_reason,
                             "Why the communicator is broken, or '' while it works.")
      .def_property_readonly("timeout_s", [](const Communicator& c) { return c.options().timeout_s; });

  m.def(
      "_register_device_backend",
      [](py::capsule backend) {
        if (std::string(backend.name() ? backend.name() : "") != "pyallreduce.DeviceBackend") {
          throw InvalidArgument("not a pyallreduce.DeviceBackend capsule");
        }
        set_device_backend(backend.get_pointer<DeviceBackend>());
      },
      py::arg("backend"), "Called by pyallreduce._cuda when imported: the backend for CUDA buffers.");
  m.def("check_options", &check_options, py::arg("options"),
        "Raise ValueError where a communicator could not be built with `options`.");
  m.def("describe_call", &describe_call, py::arg("x"), py::arg("op"), py::arg("algorithm"),
        py::arg("collective") = Collective::kAllreduce,
        "(count, dtype, op, algorithm, stream) of a call of `collective` on `x` (a buffer, or a list of\n"
        "them; op None where the collective has none) made on\n"
        "this thread; stream is the CUDA stream (a cudaStream_t as an integer) it is ordered on: torch's\n"
        "current stream on the tensor's device, or the stream a __cuda_array_interface__ names (legacy\n"
        "default, 0, when it names none), None for host buffers. Raises as the call would.");
  m.def("mpi_library_version", &MpiTransport::library_version,
        "The MPI library's version string (callable before MPI is initialized).");
  m.def("mpi_built_against", &mpi_built_against, "The MPI headers the extension was compiled with.");
  m.def("streaming_vector_bytes", &streaming_vector_bytes,
        "The vector size from which out-of-place combines write around the cache where pyallreduce.tune\n"
        "measured nothing (a quarter of the last-level cache).");
  bind_optim(m);
  py::class_<LinkCost>(m, "LinkCost", "What a message costs on one level: inside a host, or between hosts.")
      .def(py::init([](double alpha_s, double beta_s_per_byte, size_t rendezvous_bytes, double rendezvous_s) {
             if (!(alpha_s >= 0 && beta_s_per_byte >= 0 && rendezvous_s >= 0)) {
               throw InvalidArgument("cost model constants must be non-negative");
             }
             return LinkCost{alpha_s, beta_s_per_byte, rendezvous_bytes, rendezvous_s};
           }),
           py::arg("alpha_s"), py::arg("beta_s_per_byte"),
           py::arg("rendezvous_bytes") = std::numeric_limits<size_t>::max(), py::arg("rendezvous_s") = 0.0)
      .def_readonly("alpha_s", &LinkCost::alpha_s, "seconds per message")
      .def_readonly("beta_s_per_byte", &LinkCost::beta_s_per_byte, "seconds per byte sent")
      .def_readonly("rendezvous_bytes", &LinkCost::rendezvous_bytes,
                    "messages of at least this many bytes go by rendezvous")
      .def_readonly("rendezvous_s", &LinkCost::rendezvous_s, "extra seconds per rendezvous message");
  // A layout from Python: a world size (one host) or each rank's host.
  auto layout_of = [](py::handle hosts) {
    if (PyLong_Check(hosts.ptr())) {
      const int size = hosts.cast<int>();
      if (size < 1) throw InvalidArgument("a world has at least one rank");
      return HostLayout::single_host(size);
    }
    const auto host_of = hosts.cast<std::vector<int>>();
    if (host_of.empty()) throw InvalidArgument("a world has at least one rank");
    return HostLayout(host_of);
  };
  m.def(
      "describe_layout", [=](py::handle hosts) { return layout_of(hosts).describe(); }, py::arg("hosts"),
      "A layout (each rank's host) as the ranks per host: \"2 hosts x 4 ranks\", \"2 hosts (3, 2 ranks)\".");
  py::class_<CostModel>(m, "CostModel", "The cost model of an allreduce, per level (see docs/design.md).")
      .def(py::init([](const LinkCost& inside, const LinkCost& between, double gamma_s_per_byte) {
             if (!(gamma_s_per_byte >= 0)) throw InvalidArgument("cost model constants must be non-negative");
             return CostModel{inside, between, gamma_s_per_byte};
           }),
           py::arg("inside"), py::arg("between"), py::arg("gamma_s_per_byte"))
      .def_static("default", &default_cost_model, "The constants that algorithm=\"auto\" uses.")
      .def_readonly("inside", &CostModel::inside, "messages between ranks of one host")
      .def_readonly("between", &CostModel::between, "messages between hosts, through one host's link")
      .def_readonly("gamma_s_per_byte", &CostModel::gamma_s_per_byte, "seconds per byte combined")
      .def(
          "predict",
          [=](const CostModel& model, Algorithm algorithm, size_t bytes, py::handle hosts, size_t segment,
              Collective collective) {
            if (!implements(algorithm, collective) || algorithm == Algorithm::kAuto) {
              throw InvalidArgument(std::string(algorithm_name(algorithm)) + " is not a " +
                                    collective_name(collective) + " algorithm");
            }
            return model.predict(collective, algorithm, bytes, LayoutProfile(layout_of(hosts)), segment);
          },
          py::arg("algorithm"), py::arg("bytes"), py::arg("hosts"),
          py::arg("ring_segment_bytes") = CommunicatorOptions{}.ring_segment_bytes,
          py::arg("collective") = Collective::kAllreduce,
          "Predicted seconds for one call of `collective` on `bytes` (an allgather's output, a\n"
          "reduce-scatter's input) over `hosts`: a world size (one host) or each rank's host (any\n"
          "numbers; equal means shared), the ring cut into segments of `ring_segment_bytes`.")
      .def(
          "between_hosts",
          [=](const CostModel& model, size_t bytes, py::handle hosts, size_t segment) {
            double seconds = 0;
            const Algorithm chosen = model.between_hosts(bytes, LayoutProfile(layout_of(hosts)), segment, &seconds);
            return py::make_tuple(chosen, seconds);
          },
          py::arg("bytes"), py::arg("hosts"), py::arg("ring_segment_bytes") = CommunicatorOptions{}.ring_segment_bytes,
          "hierarchical's algorithm between hosts for a call of `bytes`, and its predicted seconds.")
      .def(
          "hierarchical_pieces",
          [=](const CostModel& model, size_t bytes, py::handle hosts, size_t segment, Collective collective) {
            double seconds = 0;
            const size_t pieces =
                model.hierarchical_pieces(collective, bytes, LayoutProfile(layout_of(hosts)), segment, &seconds);
            return py::make_tuple(pieces, seconds);
          },
          py::arg("bytes"), py::arg("hosts"), py::arg("ring_segment_bytes") = CommunicatorOptions{}.ring_segment_bytes,
          py::arg("collective") = Collective::kAllreduce,
          "How many pieces hierarchical pipelines for a call of `collective` on `bytes` with the ring\n"
          "between hosts, and the predicted seconds (1 and infinity where no host has several ranks).");
}
