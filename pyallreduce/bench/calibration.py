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
# Where MPI libraries switch from eager sends to rendezvous: 1 KiB to 64 KiB.
RENDEZVOUS_SEARCH_BYTES = [1 << k for k in range(10, 17)]
NO_RENDEZVOUS_BYTES = 2**63 - 1
MEMORY_TEST_BYTES = 64 << 20


@dataclass(frozen=True)
class Calibration:
    alpha_s: float  # half an 8-byte ping-pong between ranks 0 and 1 (mpi4py Send/Recv)
    beta_s_per_byte: float  # half a 16 MiB ping-pong, per byte
    gamma_s_per_byte: float  # numpy float32 a += b on every rank at once, per byte of b
    rendezvous_bytes: int  # the size from which messages pay the rendezvous step (huge if none was seen)
    rendezvous_s: float  # that step: the largest jump in one-way time between two sizes beyond their bytes
    memory_bytes_per_s: float  # the same a += b, counting every byte read and written (3 per byte of b)

    def model(self) -> _C.CostModel:
        return _C.CostModel(
            self.alpha_s, self.beta_s_per_byte, self.gamma_s_per_byte, self.rendezvous_bytes, self.rendezvous_s
        )

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


def _rendezvous_step(world: MPI.Comm, alpha: float, beta: float) -> tuple[int, float]:
    """Finds the protocol switch as the largest rise in one-way time from one
    size to the next that its extra bytes do not explain. Example: if 4 KiB
    takes 1.6 us and 8 KiB 4.4 us, the rise is 2.8 us, of which the extra
    4 KiB at beta explains, say, 0.3, so messages from 8 KiB on pay 2.5 us
    more. A rise under alpha / 2 is noise, and then there is no step."""
    times = [_half_ping_pong(world, nbytes, repeats=300) for nbytes in RENDEZVOUS_SEARCH_BYTES]
    rises = [
        later - earlier - (larger - smaller) * beta
        for earlier, later, smaller, larger in zip(
            times, times[1:], RENDEZVOUS_SEARCH_BYTES, RENDEZVOUS_SEARCH_BYTES[1:]
        )
    ]
    steepest = int(np.argmax(rises))
    if rises[steepest] < alpha / 2:
        return NO_RENDEZVOUS_BYTES, 0.0
    return RENDEZVOUS_SEARCH_BYTES[steepest + 1], rises[steepest]


def calibrate(world: MPI.Comm) -> Calibration:
    """Collective over ``world``; every rank gets the same numbers."""
    if world.size > 1:
        alpha = _half_ping_pong(world, PING_PONG_SMALL_BYTES, repeats=2000)
        beta = max(_half_ping_pong(world, PING_PONG_LARGE_BYTES, repeats=10) - alpha, 0.0) / PING_PONG_LARGE_BYTES
        rendezvous_bytes, rendezvous_s = _rendezvous_step(world, alpha, beta)
    else:
        alpha = beta = rendezvous_s = 0.0
        rendezvous_bytes = NO_RENDEZVOUS_BYTES

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
        rendezvous_bytes=rendezvous_bytes,
        rendezvous_s=rendezvous_s,
        memory_bytes_per_s=3 * MEMORY_TEST_BYTES / seconds,
    )
