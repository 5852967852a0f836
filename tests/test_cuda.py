"""The GPU path: CUDA tensors (torch, cupy) reduced by pyallreduce's
algorithms over NCCL and over MPI-style transports staged through pinned host
memory, with the CUDA reduction kernels, in the order of the caller's stream.

The first tests need only the CUDA module (built wherever nvcc is); the rest
need a GPU and skip without one. scripts/gpu_checks.sh runs them all on a
GPU machine, with the MPI-launched ones (tests/test_mpi.py) and the benchmarks.
"""

import importlib.util

import numpy as np
import pytest
import torch

import pyallreduce
from pyallreduce.testing import loopback, spawn_local
from reference import ALGORITHMS, rank_inputs
from test_local_allreduce import every_case, run_cases

CUDA_BUILT = importlib.util.find_spec("pyallreduce._cuda") is not None
needs_cuda_module = pytest.mark.skipif(not CUDA_BUILT, reason="pyallreduce was built without nvcc")
needs_gpu = pytest.mark.skipif(not (CUDA_BUILT and torch.cuda.is_available()), reason="needs a GPU")
needs_nccl = pytest.mark.skipif(
    not (CUDA_BUILT and torch.cuda.is_available() and pyallreduce.build_info()["nccl_available"]),
    reason="needs a GPU and libnccl.so.2",
)


@needs_cuda_module
def test_the_cuda_module_registers_its_backend():
    import pyallreduce._cuda  # noqa: F401 - registers the backend with _C

    assert spawn_local(1, lambda comm: comm.cuda_transport)[0] in ("nccl", "mpi")
    assert spawn_local(2, lambda comm: comm.cuda_transport, cuda_transport="mpi") == ["mpi", "mpi"]


def test_an_unknown_cuda_transport_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="CUDA transport 'gloo'"):
        spawn_local(1, lambda comm: None, cuda_transport="gloo")
    monkeypatch.setenv("PYALLREDUCE_CUDA_TRANSPORT", "infiniband")
    with pytest.raises(ValueError, match="PYALLREDUCE_CUDA_TRANSPORT|CUDA transport 'infiniband'"):
        spawn_local(1, lambda comm: None)


class HostMemoryClaimingToBeDevice:
    """A __cuda_array_interface__ whose pointer is ordinary host memory."""

    def __init__(self, count):
        self.host = np.zeros(count, np.float32)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.host.shape, "typestr": "<f4", "data": (self.host.ctypes.data, False), "version": 3}


@needs_cuda_module
def test_a_bad_device_buffer_on_one_rank_raises_on_every_rank():
    def each_rank(comm):
        x = HostMemoryClaimingToBeDevice(4) if comm.rank == 0 else np.zeros(4, np.float32)
        with pytest.raises(ValueError) as info:
            comm.allreduce(x)
        return str(info.value)

    messages = spawn_local(3, each_rank)
    assert "not usable device memory" in messages[0]
    assert all("rejected on rank 0" in message for message in messages[1:])


@needs_gpu
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_algorithm_op_and_dtype_on_cuda_tensors(world_size):
    """Ranks are threads sharing the GPU, each on its own stream; buffers
    travel staged through pinned memory over the in-process transport."""
    run_cases(world_size, every_case(world_size), ring_segment_bytes=4096, device="cuda", cuda_transport="mpi")


@needs_gpu
def test_large_vectors_cross_several_staging_pieces():
    """5 MiB + 3 elements: the staged transport cuts messages into 1 MiB
    pieces; the odd tail and the unaligned slice take the kernels' scalar path."""
    inputs = rank_inputs(3, "float32", "sum", (5 << 20) // 4 + 3)
    cases = [(algorithm, "sum", inputs, out_of_place) for algorithm in ALGORITHMS for out_of_place in (False, True)]
    run_cases(3, cases, ring_segment_bytes=1 << 20, device="cuda", cuda_transport="mpi")


@needs_gpu
def test_the_result_follows_the_callers_stream():
    """The input is written by a long kernel on a side stream; the allreduce
    on that stream must see it, and a read on the same stream afterwards must
    see the result, without any synchronization by the caller."""

    def each_rank(comm):
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            x = torch.zeros(1 << 20, device="cuda")
            for _ in range(20):  # keeps the stream busy while the host goes on
                x.add_(comm.rank + 1)
            comm.allreduce(x)
            total = x.sum()
        side.synchronize()
        return total.item()

    sums = spawn_local(2, each_rank, cuda_transport="mpi")
    assert sums == [float(20 * 3 * (1 << 20))] * 2


@needs_gpu
def test_coalesced_cuda_tensors():
    def each_rank(comm):
        tensors = [torch.full((n,), float(comm.rank + 1), device="cuda") for n in (0, 1, 7, 1000, 300_000)]
        comm.allreduce_coalesced(tensors, op="avg")
        torch.cuda.synchronize()
        return [t.cpu() for t in tensors]

    for result in spawn_local(3, each_rank, cuda_transport="mpi"):
        for tensor in result:
            assert torch.equal(tensor, torch.full_like(tensor, 2.0))


@needs_gpu
def test_mixing_host_and_device_buffers_across_ranks_raises_on_every_rank():
    def each_rank(comm):
        x = torch.ones(5, device="cuda") if comm.rank == 1 else torch.ones(5)
        with pytest.raises(ValueError, match="different places"):
            comm.allreduce(x)
        return True

    assert spawn_local(3, each_rank, cuda_transport="mpi") == [True] * 3


@needs_gpu
def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")

    def each_rank(comm):
        x = cupy.full(1001, comm.rank + 1, dtype=cupy.float64)
        comm.allreduce(x, op="max")
        return cupy.asnumpy(x)

    for result in spawn_local(3, each_rank, cuda_transport="mpi"):
        assert np.array_equal(result, np.full(1001, 3.0))


@needs_nccl
def test_nccl_at_world_size_one():
    """One GPU allows one NCCL rank. An allreduce of one rank sends nothing,
    so the loopback sends a tensor to this rank itself: a send and a receive
    in one NCCL group (issued one at a time they would deadlock)."""

    def each_rank(comm):
        assert comm.cuda_transport == "nccl"
        x = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
        out = torch.zeros_like(x)
        loopback(comm, x, out)
        reduced = x.clone()
        comm.allreduce(reduced, op="avg")
        torch.cuda.synchronize()
        return torch.equal(out, x), torch.equal(reduced, x)

    assert spawn_local(1, each_rank, cuda_transport="nccl") == [(True, True)]


@needs_gpu
def test_a_second_gpu_is_refused_on_every_rank():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")

    def each_rank(comm):
        comm.allreduce(torch.ones(3, device="cuda:0"))
        with pytest.raises(ValueError, match="another GPU"):
            comm.allreduce(torch.ones(3, device="cuda:1") if comm.rank == 0 else torch.ones(3, device="cuda:0"))
        return True

    assert spawn_local(2, each_rank, cuda_transport="mpi") == [True, True]
