"""Running pyallreduce in one process: ranks as threads over the in-process transport.

The same C++ algorithms as over MPI, so tests can sweep world sizes 1..32 in
milliseconds. A rank that raises aborts the world: the others raise too
instead of waiting for it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from . import _C
from ._communicator import Communicator
from ._options import communicator_options

T = TypeVar("T")


def loopback(comm: Communicator, x: Any, out: Any) -> Any:
    """Sends ``x``'s bytes from this rank to itself into ``out`` (same dtype and
    size) as one exchange over the transport ``x`` would travel on, and
    returns ``out``: for CUDA tensors under NCCL, a send and a receive in one
    group on the current stream. It checks that a transport runs where no
    allreduce sends anything (NCCL at world size 1). The first CUDA call of a
    communicator sets up its device context, which is collective."""
    comm._core.loopback(x, out)
    return out


class LocalWorldError(RuntimeError):
    """A rank of spawn_local raised; the original exception is the __cause__."""

    def __init__(self, rank: int, exc: BaseException):
        super().__init__(f"rank {rank} raised {type(exc).__name__}: {exc}")
        self.rank = rank


@dataclass(frozen=True)
class Fault:
    """A fault the in-process transport injects into one rank's sends.

    ``message`` counts the rank's sends from 0 (the argument check's messages
    included). ``kind``: "stall" posts that send ``seconds`` late (a rank that
    stops there for a while), "slow" posts every send from it on ``seconds``
    late, "short" makes it one byte shorter than its receiver expects.
    """

    rank: int
    kind: str
    message: int = 0
    seconds: float = 0.0


def spawn_local(
    world_size: int,
    fn: Callable[[Communicator], T],
    *,
    check: bool | None = None,
    ring_segment_bytes: int | None = None,
    grouped: bool = False,
    cuda_transport: str | None = None,
    timeout: float = 120.0,
    call_timeout: float | None = None,
    faults: Sequence[Fault] = (),
    hosts: Sequence[int] | None = None,
) -> list[T]:
    """Run ``fn(comm)`` on ``world_size`` threads, one per rank of an in-process world.

    Returns the ranks' return values in rank order. If a rank raises, the world
    is aborted (blocked ranks raise RuntimeError) and LocalWorldError is raised
    from the first rank's original exception. Each communicator is freed when
    its rank's ``fn`` returns. Options as for :class:`pyallreduce.Communicator`;
    ranks that reduce CUDA tensors share the GPU, so use ``cuda_transport="mpi"``
    (staged through host memory over the in-process transport) beyond one rank.

    ``grouped=True`` gives the world NCCL's group semantics: a rank's transfers
    start only at its next wait, together, and that wait returns only once all
    of them have met their partners (as a CUDA stream passes an NCCL group).
    An algorithm that would deadlock over NCCL then deadlocks here too, and
    the world's timeout reports it.

    ``timeout`` bounds the whole run; ``call_timeout`` is the communicators'
    own (see :class:`pyallreduce.Communicator`). ``faults`` are injected into
    the ranks' sends (see :class:`Fault`).

    ``hosts`` names each rank's host (any numbers; equal means shared), as an
    MPI launch across servers would group them: ``[0, 0, 1, 1]`` is two hosts
    of two ranks. The ranks still share this process; the algorithms, the
    cost model and ``algorithm="hierarchical"`` see the layout. Default: one
    host.
    """
    if not 1 <= world_size <= 1024:
        raise ValueError(f"world_size must be in 1..1024, got {world_size}")
    options = communicator_options(check, ring_segment_bytes, cuda_transport, call_timeout)
    world = _C.LocalWorld(world_size, grouped, list(hosts) if hosts is not None else [])
    for fault in faults:
        world.inject_fault(fault.rank, fault.kind, fault.message, fault.seconds)
    results: list[Any] = [None] * world_size
    errors: list[BaseException | None] = [None] * world_size
    first_failure: list[int] = []
    lock = threading.Lock()

    def run(rank: int) -> None:
        try:
            comm = Communicator._wrap(rank, options, lambda options: _C.Communicator.local(world, rank, options))
            try:
                results[rank] = fn(comm)
            finally:
                comm.free()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            errors[rank] = exc
            with lock:
                first_failure.append(rank)
            world.abort(f"rank {rank} raised {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(rank,), name=f"pyallreduce-rank-{rank}") for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if any(thread.is_alive() for thread in threads):
        world.abort(f"spawn_local timed out after {timeout} s")
        for thread in threads:
            thread.join()
        raise TimeoutError(f"spawn_local: ranks still running after {timeout} s (world aborted)")
    if first_failure:
        rank = first_failure[0]
        raise LocalWorldError(rank, errors[rank]) from errors[rank]  # type: ignore[misc]
    return results
