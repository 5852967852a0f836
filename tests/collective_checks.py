"""Checks of reduce_scatter, allgather, broadcast and barrier on one
communicator, against float64 references: run by every rank, in process
(test_collectives.py) and under mpiexec (mpi_worker.py)."""

from __future__ import annotations

import re

import numpy as np
import torch

from pyallreduce import COLLECTIVE_ALGORITHMS
from reference import DTYPES, OPS, check_result, rank_inputs, result_bytes


def carry_limit(comm, collective: str = "allreduce") -> int:
    """The most bytes of a call of ``collective`` that the argument check
    carries on ``comm`` (its choose_algorithm reason says)."""
    name, reason = comm.choose_algorithm(0, collective=collective)
    match = re.match(r"at most (\d+) bytes, the cost model's limit for the check", reason)
    assert match, (name, reason)
    return int(match.group(1))


def block_counts(world_size: int) -> list[int]:
    """Elements per rank's block that every algorithm is checked on."""
    return sorted({0, 1, 2, world_size + 1, 7, 13, 1009})


def check_reduce_scatter(comm, counts, device: str = "cpu", ops=OPS, dtypes=DTYPES) -> int:
    """Every algorithm x op x dtype x count, out of place and with out a view
    of this rank's block of x; x must be left as it was."""
    p, r = comm.size, comm.rank
    checks = 0
    for algorithm in COLLECTIVE_ALGORITHMS["reduce_scatter"]:
        for op in ops:
            for dtype in dtypes:
                for index, m in enumerate(counts):
                    inputs = rank_inputs(p, dtype, op, p * m)
                    x = inputs[r].clone().to(device)
                    aliased = index % 2 == 1
                    out = x[r * m:(r + 1) * m] if aliased else torch.full((m,), 7, dtype=x.dtype, device=device)
                    assert comm.reduce_scatter(x, out, op=op, algorithm=algorithm) is out
                    check_result(out.cpu(), inputs[:, r * m:(r + 1) * m], op)
                    if not aliased:
                        assert result_bytes(x.cpu()) == result_bytes(inputs[r]), f"{algorithm} wrote to x"
                    checks += 1
    return checks


def check_allgather(comm, counts, device: str = "cpu", dtypes=DTYPES) -> int:
    """Every algorithm x dtype x count, from a separate x and from x as a view
    of this rank's block of out; every rank's out is bitwise the same."""
    p, r = comm.size, comm.rank
    checks = 0
    for algorithm in COLLECTIVE_ALGORITHMS["allgather"]:
        for dtype in dtypes:
            for index, m in enumerate(counts):
                inputs = rank_inputs(p, dtype, "sum", m)
                out = torch.full((p * m,), 7, dtype=inputs.dtype, device=device)
                if index % 2 == 1:
                    x = out[r * m:(r + 1) * m]
                    x.copy_(inputs[r])
                else:
                    x = inputs[r].clone().to(device)
                assert comm.allgather(x, out, algorithm=algorithm) is out
                assert result_bytes(out.cpu()) == result_bytes(inputs.reshape(-1)), f"{algorithm} {dtype} m={m}"
                checks += 1
    return checks


def check_broadcast(comm, counts, device: str = "cpu", dtypes=("float32", "int64", "bfloat16")) -> int:
    """Every algorithm x root x dtype x count: every rank ends with the root's bits."""
    p, r = comm.size, comm.rank
    checks = 0
    for algorithm in COLLECTIVE_ALGORITHMS["broadcast"]:
        for dtype in dtypes:
            for n in counts:
                inputs = rank_inputs(p, dtype, "sum", n)
                for root in range(p):
                    x = inputs[r].clone().to(device)
                    assert comm.broadcast(x, root, algorithm=algorithm) is x
                    assert result_bytes(x.cpu()) == result_bytes(inputs[root]), f"{algorithm} root {root} n={n}"
                    checks += 1
    return checks


def expect_error_everywhere(call, fragment: str) -> None:
    """``call()`` raises ValueError with ``fragment`` (each rank runs this)."""
    try:
        call()
    except ValueError as exc:
        assert fragment in str(exc), (fragment, str(exc))
    else:
        raise AssertionError(f"expected ValueError with {fragment!r}")


def check_collective_mismatches(comm) -> int:
    """Calls that some rank makes differently raise on every rank, and the
    communicator works afterwards."""
    p, r = comm.size, comm.rank
    last = p - 1
    checks = 0
    if p > 1:
        x = torch.zeros(4 * p)
        if r == last:
            expect_error_everywhere(lambda: comm.allgather(torch.zeros(4), x), "different collectives")
        else:
            expect_error_everywhere(lambda: comm.allreduce(x), "different collectives")
        expect_error_everywhere(lambda: comm.broadcast(torch.zeros(3), root=int(r == last)), "different roots")
        bad_root = "is not a rank" if r == last else "rejected on rank"
        expect_error_everywhere(lambda: comm.broadcast(torch.zeros(3), root=p if r == last else 0), bad_root)
        bad_out = "world size" if r == last else "rejected on rank"
        expect_error_everywhere(lambda: comm.reduce_scatter(torch.zeros(4 * p), torch.zeros(4 + (r == last))), bad_out)
        expect_error_everywhere(
            lambda: comm.allgather(torch.zeros(3 + (r == last)), torch.zeros(p * (3 + (r == last)))),
            "different element counts")
        checks += 5
    # An algorithm of another collective is refused, naming the collective's own.
    expect_error_everywhere(lambda: comm.allgather(torch.zeros(1), torch.zeros(p), algorithm="halving_doubling"),
                            "unknown allgather algorithm 'halving_doubling'; expected one of auto, recursive_doubling, ring")
    comm.barrier()
    assert comm.allreduce(torch.ones(3))[0].item() == p
    return checks + 2
