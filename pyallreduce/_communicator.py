"""The Communicator: pyallreduce's algorithms over one group of ranks."""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any, Callable

from . import _C
from ._options import (
    communicator_options,
    env_flag,
    logger,
    mpi_max_message_bytes,
    on_error_choice,
    shm_message_bytes,
)
from ._progress import ProgressThread

DTYPES = tuple(_C.DType.__members__)
OPS = tuple(_C.ReduceOp.__members__)
# allreduce's algorithms, auto first; each collective's are COLLECTIVE_ALGORITHMS[name].
COLLECTIVE_ALGORITHMS = {
    name: ("auto", *(a.name for a in _C.algorithms_of(collective)))
    for name, collective in _C.Collective.__members__.items()
}
ALGORITHMS = COLLECTIVE_ALGORITHMS["allreduce"]

# allreduce_coalesced's default bucket: DDP's default bucket_cap_mb.
BUCKET_BYTES = 25 << 20


class Communicator:
    """A group of ranks that reduce together with pyallreduce's algorithms.

    ``Communicator(mpi_comm)`` duplicates an mpi4py communicator (collective:
    every rank of ``mpi_comm`` must call it) and sends over MPI point-to-point;
    ``mpi_comm`` defaults to ``MPI.COMM_WORLD``. Messages to the ranks of the
    same host of at most :attr:`shared_memory_message_bytes` go through
    shared-memory pipes instead of MPI. In-process communicators for tests
    come from :func:`pyallreduce.testing.spawn_local`.

    Args:
        mpi_comm: an ``mpi4py.MPI.Comm`` (intracommunicator).
        check: verify before each call that all ranks passed the same count,
            dtype, op and algorithm, and that none rejected its arguments, so
            that a bad call raises on every rank instead of hanging. Costs one
            small recursive-doubling exchange per call. Default: on, unless
            ``PYALLREDUCE_CHECK=0``.
        ring_segment_bytes: pipelining granularity of the ring algorithm.
            Default: ``PYALLREDUCE_RING_SEGMENT_BYTES``, else what
            ``python -m pyallreduce.tune`` measured for this layout, else 1 MiB.
        cuda_transport: how CUDA buffers travel between ranks: "nccl"
            (ncclSend/ncclRecv, one GPU per rank), "mpi" (through pinned host
            memory, pipelined; ranks may share a GPU) or "auto" (NCCL where
            libnccl.so.2 loads, else MPI). Default:
            ``PYALLREDUCE_CUDA_TRANSPORT`` or "auto".
        timeout: seconds a call may wait for its peers before it raises
            :class:`pyallreduce.TimeoutError`, naming the call, its step, the
            peer it waited for and the rank that holds it up; the
            communicator is then broken (every later call raises at once).
            0 waits forever. Default: ``PYALLREDUCE_TIMEOUT`` or 300.

    What a rank does when a call breaks its communicator is
    ``PYALLREDUCE_ON_ERROR``: "raise" (the default) raises in the call;
    "abort" also writes the error and calls MPI_Abort, so the launcher ends
    the whole job. Either way each rank first writes its flight record (see
    :mod:`pyallreduce.debug`).
    """

    def __init__(
        self,
        mpi_comm: Any = None,
        *,
        check: bool | None = None,
        ring_segment_bytes: int | None = None,
        cuda_transport: str | None = None,
        timeout: float | None = None,
    ):
        from mpi4py import MPI

        comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"mpi_comm must be an mpi4py intracommunicator, not {type(comm).__name__}")
        options, transport, on_error = _agreed_options(comm, check, ring_segment_bytes, cuda_transport, timeout)
        self._progress = ProgressThread("pyallreduce progress", before_first_call=_require_mpi_thread_multiple)
        options.on_break = _report_break(self._progress, abort=on_error == "abort")
        max_message_bytes, shm_bytes = transport
        self._core = _C.Communicator.from_mpi(comm, options, max_message_bytes,
                                              _SHM_MESSAGE_BYTES_UNTUNED if shm_bytes is None else shm_bytes)
        _report_missing_pipes(self._core, shm_bytes)
        _use_tuning(comm, self._core, segment_given=ring_segment_bytes is not None, shm_given=shm_bytes is not None)
        _close_when_dropped(self)
        if env_flag("PYALLREDUCE_ABORT_ON_UNCAUGHT", True):
            _abort_on_uncaught_exception()

    @classmethod
    def _wrap(cls, rank: int, options: _C.CommunicatorOptions,
              build: Callable[[_C.CommunicatorOptions], _C.Communicator]) -> Communicator:
        """Rank ``rank``'s communicator on the core that ``build(options)``
        makes, once ``options`` (a copy) knows where its queued calls are."""
        comm = cls.__new__(cls)
        comm._progress = ProgressThread(f"pyallreduce progress, rank {rank}")
        options = _C.CommunicatorOptions(options)
        options.on_break = _report_break(comm._progress, abort=False)
        comm._core = build(options)
        _close_when_dropped(comm)
        return comm

    @property
    def rank(self) -> int:
        """This process's (or thread's) rank, 0 <= rank < size."""
        return self._core.rank

    @property
    def size(self) -> int:
        """The number of ranks."""
        return self._core.size

    @property
    def hosts(self) -> list[int]:
        """Each rank's host: ranks that share memory (MPI_COMM_TYPE_SHARED) have
        the same number; hosts are numbered from 0 in the order of their
        lowest ranks. Example: ``[0, 0, 1, 1]`` is two hosts of two ranks."""
        return self._core.hosts

    @property
    def ring_segment_bytes(self) -> int:
        """The ring's pipelining granularity (see the class docs)."""
        return self._core.ring_segment_bytes

    @property
    def shared_memory_message_bytes(self) -> int:
        """Messages of at most this many bytes to a rank of the same host go
        through shared-memory pipes (two copies, no MPI), longer ones through
        MPI. Default: ``PYALLREDUCE_SHM_MESSAGE_BYTES`` (0 turns the pipes
        off), else the size up to which ``python -m pyallreduce.tune``
        measured the pipes faster, else a pipe's capacity (64 KiB). 0 where
        this rank has no pipes (alone on its host, or /dev/shm could not hold
        them: the DEBUG log says why) and on an in-process communicator."""
        try:
            return self._core.shared_memory_message_bytes
        except ValueError:  # in-process
            return 0

    @property
    def cuda_transport(self) -> str | None:
        """How CUDA buffers travel ("nccl" or "mpi"); None until the first CUDA
        buffer has loaded pyallreduce's CUDA module."""
        return self._core.device_transport

    @property
    def timeout(self) -> float:
        """Seconds a call may wait for its peers (0: forever); see the class docs."""
        return self._core.timeout_s

    @property
    def broken(self) -> str | None:
        """Why the communicator is broken (every call then raises at once), or None."""
        return self._core.broken_reason or None

    def flight_record(self) -> list[dict[str, Any]]:
        """The last calls (at most 64), oldest first, as dicts: call (its
        sequence number), operation, count, dtype, op, algorithm, state
        ("running", "done" or "failed"), where (the step it is or was in),
        started_s and ended_s (seconds since the epoch), error. Then the
        calls waiting behind them on the progress thread, in the order they
        will run: state "queued", call, started_s and ended_s None, and
        queued_s, when they were made (count and dtype None where the call
        will reject its arguments). See :mod:`pyallreduce.debug`."""
        from .debug import flight_record

        return flight_record(self._core, self._progress)

    @property
    def check(self) -> bool:
        """Whether calls are checked across ranks first (see the class docs)."""
        return self._core.check_arguments

    def allreduce(self, x: Any, op: Any = "sum", algorithm: str = "auto", out: Any = None) -> Any:
        """Reduce ``x`` element-wise across all ranks; every rank gets the result.

        Collective: every rank calls it with the same element count, dtype, op
        and algorithm. In place unless ``out`` is given.

        Args:
            x: a contiguous torch tensor (CPU or CUDA), numpy or cupy array, or
                buffer-protocol / DLPack / ``__cuda_array_interface__`` object
                of float32, float64, float16, bfloat16, int32 or int64. Written
                in place when ``out`` is None. A CUDA buffer is reduced in the
                order of the caller's current stream (torch's, or the one its
                ``__cuda_array_interface__`` names), and the call returns once
                the work is enqueued: over NCCL without waiting for the GPU.
            op: "sum", "avg", "min", "max" or "prod", in any case, or a
                ``torch.distributed.ReduceOp`` (SUM, AVG, MIN, MAX, PRODUCT).
                Integer "avg" rounds toward
                zero; float16/bfloat16 are combined in float32 and rounded once
                per step; min/max propagate NaN.
            algorithm: "auto", "ring", "halving_doubling", "recursive_doubling"
                or "hierarchical" (across hosts: inside each host, then between
                them; see the README's Algorithms), in any case. "auto" follows
                ``PYALLREDUCE_ALGO`` rules, else the cost model.
            out: where to put the result instead: same dtype and element count,
                not partially overlapping ``x``.

        Returns:
            ``out`` if given, else ``x``: bitwise identical on every rank. A
            torch tensor written (``out``, or ``x`` in place) has its autograd
            version counter bumped, as torch's in-place operations do.

        Raises:
            TypeError / ValueError: bad arguments, on this rank; with the check
                on, every other rank raises ValueError naming this rank.
            RuntimeError: the transport failed.
        """
        # Arguments are read and checked in C++ (csrc/python/buffers.cpp): the
        # whole call costs about what MPI_Allreduce does at small sizes.
        return self._progress.run_in_order(self._core.allreduce, x, op, algorithm, out, queued_as=_queued_allreduce)

    def allreduce_async(self, x: Any, op: Any = "sum", algorithm: str = "auto", out: Any = None) -> Future:
        """:meth:`allreduce` on the communicator's progress thread.

        Returns at once with a ``concurrent.futures.Future`` whose result is
        what :meth:`allreduce` returns, or whose exception is what it raises.
        Calls (synchronous or not) run in the order they are made; ``x`` and
        ``out`` must stay untouched until the future is done. A CUDA buffer is
        reduced in the order of the stream that was current here, at the call
        (torch's current stream is per thread, and this runs on another).
        """
        entry, stream = _queued_call("allreduce", x, op, algorithm)
        return self._progress.submit(lambda: self._core.allreduce(x, op, algorithm, out, stream), entry)

    def allreduce_coalesced(
        self, tensors: Sequence[Any], op: Any = "sum", algorithm: str = "auto", bucket_bytes: int = BUCKET_BYTES
    ) -> list:
        """Reduce each tensor of ``tensors`` in place, as one allreduce each,
        but fused into few: consecutive small tensors are copied (in C++)
        into a buffer of at most ``bucket_bytes``, reduced together and copied
        back. A larger tensor, or one alone in its bucket, is reduced where it
        lies. Small means below ``bucket_bytes`` and below the size from which
        the cost model predicts that copying a tensor in and out costs more
        than the latency fusing saves.

        Collective: every rank passes tensors of the same sizes in the same
        order, all of one dtype, and the same ``bucket_bytes`` (default 25 MiB,
        DDP's bucket size). One argument check covers the whole call.

        Returns:
            ``tensors`` as a list.

        Raises:
            TypeError / ValueError: as :meth:`allreduce`, or mixed dtypes.
        """
        tensors = _as_list(tensors)
        return self._progress.run_in_order(self._core.allreduce_coalesced, tensors, op, algorithm, bucket_bytes,
                                           queued_as=_queued_allreduce_coalesced)

    def allreduce_coalesced_async(
        self, tensors: Sequence[Any], op: Any = "sum", algorithm: str = "auto", bucket_bytes: int = BUCKET_BYTES
    ) -> Future:
        """:meth:`allreduce_coalesced` on the progress thread; see :meth:`allreduce_async`."""
        tensors = _as_list(tensors)
        entry, stream = _queued_call("allreduce_coalesced", tensors, op, algorithm)
        return self._progress.submit(
            lambda: self._core.allreduce_coalesced(tensors, op, algorithm, bucket_bytes, stream), entry)

    def reduce_scatter(self, x: Any, out: Any, op: Any = "sum", algorithm: str = "auto") -> Any:
        """Reduce ``x`` element-wise across all ranks and leave this rank's
        block of the result in ``out`` (MPI_Reduce_scatter_block, torch's
        ``reduce_scatter_tensor``).

        Collective, with the same checks and errors as :meth:`allreduce`.
        ``x`` holds ``size`` blocks of ``len(out)`` elements; rank r gets
        block r. ``out`` may be this rank's block of ``x`` (a view of it) or
        not overlap ``x`` at all; ``x`` is not written.

        Args:
            x, op: as for :meth:`allreduce` (``x`` may be read-only).
            out: ``len(x) / size`` elements of x's dtype on x's device.
            algorithm: "auto", "ring", "halving_doubling" (recursive
                halving) or "hierarchical" (inside each host, then between
                hosts); "auto" follows ``PYALLREDUCE_ALGO`` rules for
                ``reduce_scatter:``, else the cost model.

        Returns:
            ``out``.
        """
        return self._progress.run_in_order(self._core.reduce_scatter, x, out, op, algorithm,
                                           queued_as=_queued_reduce_scatter)

    def reduce_scatter_async(self, x: Any, out: Any, op: Any = "sum", algorithm: str = "auto") -> Future:
        """:meth:`reduce_scatter` on the progress thread; see :meth:`allreduce_async`."""
        entry, stream = _queued_call("reduce_scatter", x, op, algorithm)
        return self._progress.submit(lambda: self._core.reduce_scatter(x, out, op, algorithm, stream), entry)

    def allgather(self, x: Any, out: Any, algorithm: str = "auto") -> Any:
        """Gather every rank's ``x`` into ``out`` on every rank, rank r's as
        block r (MPI_Allgather, torch's ``all_gather_into_tensor``).

        Collective, with the same checks and errors as :meth:`allreduce`.
        ``out`` holds ``size`` blocks of ``len(x)`` elements; ``x`` may be
        this rank's block of ``out`` (a view of it) or not overlap it.

        Args:
            x: as for :meth:`allreduce` (may be read-only).
            out: ``size * len(x)`` elements of x's dtype on x's device.
            algorithm: "auto", "ring", "recursive_doubling" or
                "hierarchical" (between hosts, then inside each; see the
                README's Algorithms); "auto" follows ``PYALLREDUCE_ALGO`` rules
                for ``allgather:``, else the cost model.

        Returns:
            ``out``, bitwise identical on every rank.
        """
        return self._progress.run_in_order(self._core.allgather, x, out, algorithm, queued_as=_queued_allgather)

    def allgather_async(self, x: Any, out: Any, algorithm: str = "auto") -> Future:
        """:meth:`allgather` on the progress thread; see :meth:`allreduce_async`."""
        entry, stream = _queued_call("allgather", x, None, algorithm)
        return self._progress.submit(lambda: self._core.allgather(x, out, algorithm, stream), entry)

    def broadcast(self, x: Any, root: int = 0, algorithm: str = "auto") -> Any:
        """Copy rank ``root``'s ``x`` into ``x`` on every rank (MPI_Bcast).

        Collective, with the same checks and errors as :meth:`allreduce`;
        every rank names the same ``root``.

        Args:
            x: as for :meth:`allreduce`, written in place on every rank but
                the root.
            root: the rank whose ``x`` is sent, 0 <= root < size.
            algorithm: "auto", "binomial_tree" (lg p steps of the whole
                vector, for small ones) or "scatter_allgather" (the root
                scatters blocks, then a ring allgather, for large ones);
                "auto" follows ``PYALLREDUCE_ALGO`` rules for ``broadcast:``,
                else the cost model.

        Returns:
            ``x``.
        """
        return self._progress.run_in_order(self._core.broadcast, x, root, algorithm, queued_as=_queued_broadcast)

    def broadcast_async(self, x: Any, root: int = 0, algorithm: str = "auto") -> Future:
        """:meth:`broadcast` on the progress thread; see :meth:`allreduce_async`."""
        entry, stream = _queued_call("broadcast", x, None, algorithm)
        return self._progress.submit(lambda: self._core.broadcast(x, root, algorithm, stream), entry)

    def barrier(self) -> None:
        """Return once every rank has called it (MPI_Barrier). It is the
        argument check's exchange alone, so it also fails on every rank
        where a rank is at another call, and it runs with the check off."""
        self._progress.run_in_order(self._core.barrier, queued_as=_queued_barrier)

    def barrier_async(self) -> Future:
        """:meth:`barrier` on the progress thread; see :meth:`allreduce_async`."""
        return self._progress.submit(self._core.barrier, _queued_barrier())

    def choose_algorithm(self, nbytes: int, algorithm: str = "auto", collective: str = "allreduce") -> tuple[str, str]:
        """The algorithm a call of ``collective`` on ``nbytes`` would run on
        this communicator, and why (``nbytes``: the whole vector, a
        reduce-scatter's input or an allgather's output)."""
        names = COLLECTIVE_ALGORITHMS.get(collective)
        if names is None:
            raise ValueError(f"unknown collective {collective!r}; expected one of {', '.join(COLLECTIVE_ALGORITHMS)}")
        name = algorithm.lower() if isinstance(algorithm, str) else None
        if name not in names:
            raise ValueError(f"unknown {collective} algorithm {algorithm!r}; expected one of {', '.join(names)}")
        chosen, reason = self._core.choose_algorithm(getattr(_C.Algorithm, name), nbytes,
                                                     getattr(_C.Collective, collective))
        return chosen.name, reason

    def free(self) -> None:
        """Release the communicator (for MPI, its duplicate) once its queued
        asynchronous calls are done. Later calls raise ValueError."""
        self._progress.stop()
        self._core.free()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.free()

    def __repr__(self) -> str:
        if self._core.freed:
            return "<pyallreduce.Communicator (freed)>"
        return f"<pyallreduce.Communicator rank {self.rank} of {self.size}>"


def _close_when_dropped(comm: Communicator) -> None:
    """Dropped without free(), a communicator still ends its progress thread
    (which holds no reference to it between calls); its core, and the MPI
    communicator, go with the last reference. At exit the queued calls are
    finished instead (see _progress), so this is not run then."""
    weakref.finalize(comm, comm._progress.close).atexit = False


def _as_list(tensors: Any) -> Any:
    """``tensors`` as a list; anything that is not a sequence passes unchanged,
    so that the call rejects it where every rank hears of it."""
    return list(tensors) if isinstance(tensors, Iterable) and not isinstance(tensors, (str, bytes)) else tensors


def _queued_call(operation: str, x: Any, op: Any, algorithm: Any) -> tuple[tuple[Any, ...], int | None]:
    """What a call of ``operation`` (op None for a collective without one)
    is while it waits on the progress thread (see debug.queued_call), and
    the stream it follows, both read on the caller's thread. Arguments that
    cannot be read leave the description None and the stream None: the
    queued call then rejects them on the progress thread, where every rank
    hears of it."""
    collective = getattr(_C.Collective, operation.removesuffix("_coalesced"))
    try:
        described = _C.describe_call(x, op, algorithm, collective)
    except Exception:  # noqa: BLE001 - raised again by the call itself, through the agreement
        return (operation, None, time.time()), None
    return (operation, described, time.time()), described[4]


def _queued_allreduce(x: Any, op: Any, algorithm: Any, out: Any) -> tuple[Any, ...]:
    return _queued_call("allreduce", x, op, algorithm)[0]


def _queued_allreduce_coalesced(tensors: Any, op: Any, algorithm: Any, bucket_bytes: Any) -> tuple[Any, ...]:
    return _queued_call("allreduce_coalesced", tensors, op, algorithm)[0]


def _queued_reduce_scatter(x: Any, out: Any, op: Any, algorithm: Any) -> tuple[Any, ...]:
    return _queued_call("reduce_scatter", x, op, algorithm)[0]


def _queued_allgather(x: Any, out: Any, algorithm: Any) -> tuple[Any, ...]:
    return _queued_call("allgather", x, None, algorithm)[0]


def _queued_broadcast(x: Any, root: Any, algorithm: Any) -> tuple[Any, ...]:
    return _queued_call("broadcast", x, None, algorithm)[0]


def _queued_barrier() -> tuple[Any, ...]:
    return ("barrier", (0, None, None, _C.Algorithm.auto, None), time.time())


# What shapes a call's messages, and so must be alike on every rank: the
# option, and the variable that sets it.
_SHAPING_SETTINGS = (
    ("check_arguments", "PYALLREDUCE_CHECK"),
    ("ring_segment_bytes", "PYALLREDUCE_RING_SEGMENT_BYTES"),
    ("algorithm_rules", "PYALLREDUCE_ALGO"),
    ("between_hosts_rules", "PYALLREDUCE_ALGO_BETWEEN_HOSTS"),
    ("device_transport", "PYALLREDUCE_CUDA_TRANSPORT"),
    ("max_message_bytes", "PYALLREDUCE_MPI_MAX_MESSAGE_BYTES"),
    ("shm_message_bytes", "PYALLREDUCE_SHM_MESSAGE_BYTES"),
)
_TRANSPORT_SETTINGS = ("max_message_bytes", "shm_message_bytes")

# Where nothing was measured, a message goes through the pipes while it fits
# in one whole (their capacity): longer ones stream through, copied twice,
# where MPI's large messages are copied once.
_SHM_MESSAGE_BYTES_UNTUNED = 1 << 16


def _report_missing_pipes(core: _C.Communicator, shm_bytes: int | None) -> None:
    """Says why a rank that shares its host has no shared-memory pipes:
    a warning where they could not be made, the DEBUG log where they were
    turned off."""
    reason = core.shared_memory_absent
    if not reason or core.hosts.count(core.hosts[core.rank]) == 1:
        return
    if shm_bytes == 0:
        logger.debug("rank %d: no shared-memory pipes (%s)", core.rank, reason)
    else:
        logger.warning("pyallreduce: rank %d has no shared-memory pipes (%s); its messages to the ranks of its "
                       "host go through MPI", core.rank, reason)


def _use_tuning(comm: Any, core: _C.Communicator, segment_given: bool, shm_given: bool) -> None:
    """Gives ``core`` what pyallreduce.tune measured for its layout, if
    anything: rank 0's, on every rank (collective), so that every rank
    chooses alike. The cost model; the size from which streaming stores
    paid and the ring's receive window, each unless its variable says
    otherwise; the largest message through the shared-memory pipes unless
    PYALLREDUCE_SHM_MESSAGE_BYTES set it (``shm_given``, alike on every rank
    by _agreed_options); and the ring's segment size (which shapes messages)
    unless a rank was given one (``segment_given``) or its variable. A tune
    file rank 0 cannot read raises on every rank."""
    from mpi4py import MPI

    from . import tune

    if comm.rank == 0:
        try:
            found: Any = tune.load(core.hosts)
        except ValueError as exc:
            found = str(exc)
    else:
        found = None
    found = comm.bcast(found, root=0)
    if isinstance(found, str):
        raise ValueError(found if comm.rank == 0 else f"pyallreduce communicator rejected on rank 0: {found}")
    core.set_cost_model(found.model(), found.source)
    if found.streaming_store_bytes is not None and not os.environ.get("PYALLREDUCE_STREAMING_STORE_BYTES"):
        core.streaming_store_bytes = found.streaming_store_bytes
    if found.ring_receive_window is not None and not os.environ.get("PYALLREDUCE_RING_RECEIVE_WINDOW"):
        core.ring_receive_window = found.ring_receive_window
    segment_given = comm.allreduce(segment_given or bool(os.environ.get("PYALLREDUCE_RING_SEGMENT_BYTES")),
                                   op=MPI.LOR)
    if found.ring_segment_bytes is not None and not segment_given:
        core.ring_segment_bytes = found.ring_segment_bytes
    if found.shm_message_bytes is not None and not shm_given and core.shared_memory_message_bytes > 0:
        core.shared_memory_message_bytes = found.shm_message_bytes


def _report_break(progress: ProgressThread, abort: bool) -> Callable[[_C.Communicator, str], None]:
    """The on_break of a communicator whose calls queue on ``progress``:
    writes the flight record, then with ``abort`` ends the MPI job with the
    error."""

    def on_break(core: _C.Communicator, message: str) -> None:
        from .debug import flight_record, write_flight_record

        write_flight_record(flight_record(core, progress), core.rank, core.size, message)
        if abort:
            abort_mpi_job(f"pyallreduce: rank {core.rank} aborts the MPI job (PYALLREDUCE_ON_ERROR=abort): {message}")

    return on_break


# How long an aborting rank waits for the launcher to take its last output.
# Reading a pipe takes the launcher microseconds; this only bounds the wait
# where it has stopped reading.
_LAUNCHER_READ_WAIT_S = 2.0


def abort_mpi_job(message: str) -> None:
    """Writes ``message`` to stderr, waits until the launcher has read this
    rank's output, then ends every rank of the job with MPI_Abort. Every
    deliberate abort of pyallreduce goes through here, so that what was
    printed before it (a traceback, the error) reaches the user."""
    from mpi4py import MPI

    sys.stderr.write(message + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    _wait_until_launcher_reads((sys.stdout, sys.stderr), _LAUNCHER_READ_WAIT_S)
    MPI.COMM_WORLD.Abort(1)


def _wait_until_launcher_reads(streams: Iterable[Any], seconds: float) -> None:
    """Returns once the launcher has read everything written to ``streams``
    that are pipes (as mpiexec's and srun's stdout and stderr are), or after
    ``seconds``. MPI_Abort reaches hydra's proxy over its PMI socket, and the
    proxy kills the job on it even while the error message still waits unread
    in the rank's stderr pipe: the user would see no reason for the abort.
    Once the proxy has read the pipe, the message goes to mpiexec on the same
    connection as the abort, ahead of it."""
    import array
    import fcntl
    import stat
    import termios

    deadline = time.monotonic() + seconds
    for stream in streams:
        try:
            fd = stream.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
        except (OSError, ValueError):  # closed, or not a file
            continue
        unread = array.array("i", [0])
        while time.monotonic() < deadline:
            fcntl.ioctl(fd, termios.FIONREAD, unread)  # bytes in the pipe, asked of either end
            if unread[0] == 0:
                break
            time.sleep(0.001)


def _agreed_options(
    comm: Any, check: bool | None, ring_segment_bytes: int | None, cuda_transport: str | None, timeout: float | None
) -> tuple[_C.CommunicatorOptions, tuple[int, int | None], str]:
    """This rank's options, its MPI transport's settings (the largest MPI
    message; the largest through shared memory, None where unset) and
    PYALLREDUCE_ON_ERROR, once
    every rank of ``comm`` has its own and they agree (collective). A rank whose options are
    invalid raises its own error and the others a ValueError naming it; ranks
    whose settings differ all raise the same ValueError, naming the setting.
    Without this, such ranks would exchange messages of different shapes: a
    truncation on some, a hang on others."""
    try:
        options = communicator_options(check, ring_segment_bytes, cuda_transport, timeout)
        transport = mpi_max_message_bytes(), shm_message_bytes()
        on_error = on_error_choice()
        _C.check_options(options)
        settings = tuple(transport[_TRANSPORT_SETTINGS.index(name)] if name in _TRANSPORT_SETTINGS
                         else getattr(options, name) for name, _ in _SHAPING_SETTINGS)
        error = None
    except (TypeError, ValueError) as exc:
        settings, error = None, exc
    everyone = comm.allgather((None if error is None else f"{type(error).__name__}: {error}", settings))
    if error is not None:
        raise error
    for rank, (their_error, _) in enumerate(everyone):
        if their_error is not None:
            raise ValueError(f"pyallreduce communicator rejected on rank {rank}: {their_error}")
    first = everyone[0][1]
    for rank, (_, theirs) in enumerate(everyone):
        for (name, variable), expected, their in zip(_SHAPING_SETTINGS, first, theirs):
            if their != expected:
                raise ValueError(
                    f"ranks disagree on {name} ({variable}): rank 0 has {expected!r}, rank {rank} has "
                    f"{their!r}; set it alike on every rank"
                )
    return options, transport, on_error


_excepthook_installed = False


def _abort_on_uncaught_exception() -> None:
    """Makes an exception that nothing catches end the whole MPI job: its
    traceback is printed as usual, then MPI_Abort tells the launcher to stop
    every rank, as ``python -m mpi4py`` does. Otherwise this rank would exit
    and leave the others waiting for it in their next call, forever."""
    global _excepthook_installed
    from mpi4py import MPI

    if _excepthook_installed or MPI.COMM_WORLD.size == 1:
        return
    previous = sys.excepthook

    def print_then_abort(kind, value, traceback) -> None:
        previous(kind, value, traceback)
        if MPI.Is_finalized():  # nothing left to abort: the process ends as usual
            return
        abort_mpi_job(f"pyallreduce: uncaught {kind.__name__} on rank {MPI.COMM_WORLD.rank}; "
                      "aborting the MPI job (PYALLREDUCE_ABORT_ON_UNCAUGHT=0 leaves it running)")

    sys.excepthook = print_then_abort
    _excepthook_installed = True


def _require_mpi_thread_multiple() -> None:
    from mpi4py import MPI

    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise RuntimeError(
            "asynchronous calls run MPI on pyallreduce's progress thread while the caller's thread may use MPI "
            "too, which needs MPI_THREAD_MULTIPLE; initialize MPI with it (mpi4py's default: leave "
            "mpi4py.rc.thread_level at 'multiple')"
        )


# Variables torchrun sets; under it there is no MPI world to build from.
_TORCHRUN_VARIABLES = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def require_mpi_launch(mpi_comm: Any) -> None:
    """Raises RuntimeError where torchrun started the processes: each is then
    rank 0 of an MPI world of 1, and a "reduction" would reduce nothing."""
    torchrun_world = int(os.environ.get("WORLD_SIZE", "1"))
    if any(v in os.environ for v in _TORCHRUN_VARIABLES) and mpi_comm.size == 1 and torchrun_world > 1:
        raise RuntimeError(
            "pyallreduce needs an MPI launch (mpirun, mpiexec or srun): under torchrun every process is "
            f"rank 0 of an MPI world of 1, not one of {torchrun_world} ranks"
        )


def init(*, torch_backend: str | None = None, **options: Any) -> Communicator:
    """The communicator over all ranks of an mpirun/mpiexec/srun launch
    (mpi4py's COMM_WORLD). Collective. Keyword options as for Communicator.

    Args:
        torch_backend: also initialize torch.distributed's default process
            group over the same ranks with this backend ("gloo", or "nccl"
            for one GPU per rank), as
            :func:`pyallreduce.distributed.init_process_group` does.

    Raises:
        RuntimeError: the processes were started by torchrun, not an MPI
            launcher (see :func:`require_mpi_launch`).
    """
    from mpi4py import MPI

    require_mpi_launch(MPI.COMM_WORLD)
    if torch_backend is not None:
        from .distributed import init_process_group

        init_process_group(torch_backend)
    return Communicator(None, **options)
