"""What the machine does, measured at the start of a benchmark run: the
alpha-beta-gamma constants of the cost model and the memory bandwidth that
bounds any allreduce."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
from mpi4py import MPI

from .. import _C

PING_PONG_SMALL_BYTES = 8
PING_PONG_LARGE_BYTES = 16 << 20
MEMORY_TEST_BYTES = 64 << 20


@dataclass(frozen=True)
class Calibration:
    alpha_s: float  # half an 8-byte ping-pong between ranks 0 and 1 (mpi4py Send/Recv)
    beta_s_per_byte: float  # half a 16 MiB ping-pong, per byte
    gamma_s_per_byte: float  # numpy float32 a += b on every rank at once, per byte of b
    memory_bytes_per_s: float  # the same a += b, counting every byte read and written (3 per byte of b)

    def model(self) -> _C.CostModel:
        return _C.CostModel(self.alpha_s, self.beta_s_per_byte, self.gamma_s_per_byte)

    def memory_limit_s(self, nbytes: int) -> float:
        """The least time an allreduce of ``nbytes`` can take on one rank: it
        reads its input and writes its output, receives at least the message's
        worth of data and combines it, so at least 4x the message bytes cross
        the memory bus at the a += b rate."""
        return 4 * nbytes / self.memory_bytes_per_s

    def as_dict(self) -> dict:
        return asdict(self)


def _slowest_median(world: MPI.Comm, samples: list[float]) -> float:
    """Median over repetitions of the slowest rank's time."""
    slowest = np.empty(len(samples))
    world.Allreduce(np.array(samples), slowest, op=MPI.MAX)
    return float(statistics.median(slowest))


def _half_ping_pong(world: MPI.Comm, nbytes: int, repeats: int) -> float:
    """Median one-way time between ranks 0 and 1 (others wait)."""
    message = np.zeros(nbytes, np.uint8)
    samples = []
    for _ in range(repeats):
        world.Barrier()
        start = time.perf_counter()
        if world.rank == 0:
            world.Send(message, dest=1)
            world.Recv(message, source=1)
        elif world.rank == 1:
            world.Recv(message, source=0)
            world.Send(message, dest=0)
        samples.append((time.perf_counter() - start) / 2)
    return float(statistics.median(world.bcast(samples, root=0)))


def calibrate(world: MPI.Comm) -> Calibration:
    """Collective over ``world``; every rank gets the same numbers."""
    if world.size > 1:
        alpha = _half_ping_pong(world, PING_PONG_SMALL_BYTES, repeats=2000)
        beta = max(_half_ping_pong(world, PING_PONG_LARGE_BYTES, repeats=10) - alpha, 0.0) / PING_PONG_LARGE_BYTES
    else:
        alpha = beta = 0.0

    a = np.ones(MEMORY_TEST_BYTES // 4, np.float32)
    b = np.ones_like(a)
    samples = []
    for _ in range(7):
        world.Barrier()
        start = time.perf_counter()
        a += b
        samples.append(time.perf_counter() - start)
    seconds = _slowest_median(world, samples[1:])  # the first touches fresh pages
    return Calibration(
        alpha_s=alpha,
        beta_s_per_byte=beta,
        gamma_s_per_byte=seconds / MEMORY_TEST_BYTES,
        memory_bytes_per_s=3 * MEMORY_TEST_BYTES / seconds,
    )
