"""Run by tests/test_mpi.py under `mpiexec -n N [--device cuda]`: the allreduce
checks over the real MPI transport, on torch tensors and numpy arrays (with
--device cuda: CUDA tensors, all ranks sharing GPU 0 over the staged MPI
transport), the other collectives' checks, plus the mismatch errors. With --hosts H0,H1,... (from
tests/test_cluster.py, across simulated hosts) it first checks that the
communicator sees that layout. Exits non-zero on any failure; prints one line
per rank on success."""

import os
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).parent))

import abort_on_error  # noqa: E402
import pyallreduce  # noqa: E402
from collective_checks import (check_allgather, check_broadcast, check_collective_mismatches,  # noqa: E402
                               check_reduce_scatter, expect_error_everywhere)
from reference import ALGORITHMS, DTYPES, OPS, check_result, counts_for, rank_inputs, result_bytes  # noqa: E402

world = MPI.COMM_WORLD


def as_buffer(tensor: torch.Tensor, use_numpy: bool, device: str):
    """numpy has no bfloat16 (and lives on the host): those cases stay torch tensors."""
    if use_numpy and tensor.dtype != torch.bfloat16 and device == "cpu":
        return tensor.numpy().copy()
    return tensor.clone().to(device)


def check_all_algorithms(comm: pyallreduce.Communicator, counts, device: str = "cpu") -> int:
    checks = 0
    digests = []
    for dtype in DTYPES:
        for op in OPS:
            for count_index, count in enumerate(counts):
                inputs = rank_inputs(comm.size, dtype, op, count)
                for index, algorithm in enumerate(ALGORITHMS):
                    x = as_buffer(inputs[comm.rank], use_numpy=index % 2 == 1, device=device)
                    if count_index % 2 == 1:  # out of place, on alternate counts
                        out = as_buffer(torch.zeros_like(inputs[comm.rank]), use_numpy=index % 2 == 1, device=device)
                        result = comm.allreduce(x, op=op, algorithm=algorithm, out=out)
                        assert result_bytes(torch.as_tensor(x).cpu()) == result_bytes(inputs[comm.rank]), "input written"
                    else:
                        result = comm.allreduce(x, op=op, algorithm=algorithm)
                    result = torch.from_numpy(result) if isinstance(result, np.ndarray) else result.cpu()
                    check_result(result, inputs, op)
                    digests.append(zlib.crc32(result_bytes(result)))
                    checks += 1
    # Bitwise identity: every rank's digests equal rank 0's.
    assert world.allgather(digests) == [digests] * comm.size, "results differ across ranks"
    return checks


def check_mismatches(comm: pyallreduce.Communicator) -> int:
    if comm.size == 1:
        return 0
    last = comm.size - 1
    expect_error_everywhere(lambda: comm.allreduce(np.zeros(5 + (comm.rank == last))), "different element counts")
    expect_error_everywhere(
        lambda: comm.allreduce(torch.zeros(5, dtype=torch.float64 if comm.rank == last else torch.float32)), "different dtypes"
    )
    expect_error_everywhere(lambda: comm.allreduce(torch.zeros(5), op="max" if comm.rank == last else "sum"), "different ops")
    bad = "rejected on rank" if comm.rank != last else "not contiguous"
    expect_error_everywhere(lambda: comm.allreduce(torch.zeros(4, 4).t() if comm.rank == last else torch.zeros(16)), bad)
    # The communicator still works after failed calls.
    assert comm.allreduce(torch.ones(3))[0].item() == comm.size
    return 5


def check_other_collectives(comm: pyallreduce.Communicator, device: str = "cpu") -> int:
    """reduce_scatter, allgather and broadcast on a few dtypes and ops (every
    one of them runs in process, in test_collectives.py)."""
    counts = [0, 1, 13, 1009]
    return (check_reduce_scatter(comm, counts, device, ops=("sum", "avg", "max"), dtypes=("float32", "bfloat16", "int64"))
            + check_allgather(comm, counts, device, dtypes=("float32", "float16"))
            + check_broadcast(comm, [0, 1, 1009], device, dtypes=("float32",)))


def main() -> None:
    if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cuda":
        with pyallreduce.init(ring_segment_bytes=4096, cuda_transport="mpi") as comm:
            checks = check_all_algorithms(comm, counts_for(comm.size), device="cuda")
            checks += check_all_algorithms(comm, [(3 << 20) + 1], device="cuda")  # several staging pieces
            checks += check_other_collectives(comm, device="cuda")
        print(f"mpi worker rank {world.rank}/{world.size}: {checks} checks passed", flush=True)
        return
    comm = pyallreduce.init(ring_segment_bytes=4096)
    if "--hosts" in sys.argv:
        expected = [int(h) for h in sys.argv[sys.argv.index("--hosts") + 1].split(",")]
        assert comm.hosts == expected, f"rank {comm.rank} sees hosts {comm.hosts}, not {expected}"
    checks = check_all_algorithms(comm, counts_for(comm.size))
    checks += check_mismatches(comm)
    checks += check_other_collectives(comm)
    checks += check_collective_mismatches(comm)
    comm.free()

    # Every message through MPI, none through the shared-memory pipes.
    os.environ["PYALLREDUCE_SHM_MESSAGE_BYTES"] = "0"
    with pyallreduce.Communicator(world, ring_segment_bytes=4096) as through_mpi:
        assert through_mpi.shared_memory_message_bytes == 0
        checks += check_all_algorithms(through_mpi, counts_for(world.size))
        checks += check_other_collectives(through_mpi)

        # Transfers split into many MPI messages must reassemble exactly.
        os.environ["PYALLREDUCE_MPI_MAX_MESSAGE_BYTES"] = "1000"
        with pyallreduce.Communicator(world) as split:
            checks += check_all_algorithms(split, [4099])
        del os.environ["PYALLREDUCE_MPI_MAX_MESSAGE_BYTES"]

    # Messages many times a pipe's capacity stream through it.
    os.environ["PYALLREDUCE_SHM_MESSAGE_BYTES"] = str(1 << 20)
    with pyallreduce.Communicator(world) as streamed:
        alone = streamed.hosts.count(streamed.hosts[streamed.rank]) == 1
        assert streamed.shared_memory_message_bytes == (0 if alone else 1 << 20)
        checks += check_all_algorithms(streamed, [100_003])
    del os.environ["PYALLREDUCE_SHM_MESSAGE_BYTES"]

    # hierarchical's levels pipelined in several pieces: the transfers of both
    # levels (pipes inside a host, MPI between) in flight at once.
    os.environ["PYALLREDUCE_HIERARCHICAL_PIECES"] = "3"
    os.environ["PYALLREDUCE_ALGO_BETWEEN_HOSTS"] = "ring"
    with pyallreduce.Communicator(world, ring_segment_bytes=4096) as pipelined:
        checks += check_all_algorithms(pipelined, [1, 4099, 100_003])
        checks += check_other_collectives(pipelined)
    del os.environ["PYALLREDUCE_HIERARCHICAL_PIECES"], os.environ["PYALLREDUCE_ALGO_BETWEEN_HOSTS"]

    print(f"mpi worker rank {world.rank}/{world.size}: {checks} checks passed", flush=True)


if __name__ == "__main__":
    abort_on_error.run(main)
