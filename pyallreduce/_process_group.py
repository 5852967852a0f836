"""pyallreduce as a torch.distributed backend: a ``torch.distributed.ProcessGroup``
whose collectives run on a :class:`pyallreduce.Communicator` over the ranks of
an MPI launch. :mod:`pyallreduce.distributed` registers it as "pyallreduce".

Inside a backward pass (DDP's buckets, torch's comm hooks), a collective is
queued on the communicator's progress thread and returns a Work at once,
whose future completes with the call, so that the reductions overlap with
the rest of backward. Elsewhere it runs on the caller's thread and returns a
completed Work: handing a call to the progress thread and back costs several
times what a small allreduce itself does, and the caller of a synchronous
call waits for it anyway. Either way calls run in the order they
are made.
"""

from __future__ import annotations

import contextlib
import zlib
from concurrent.futures import Future
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future

from ._communicator import Communicator

BACKEND_NAME = "pyallreduce"

# torch's reduce ops (their RedOpType's value: hashing the enum itself costs
# more than a small allreduce's argument check) and pyallreduce's names for them.
_OPS = {op.value: name for op, name in ((dist.ReduceOp.SUM, "sum"), (dist.ReduceOp.AVG, "avg"),
                                        (dist.ReduceOp.MIN, "min"), (dist.ReduceOp.MAX, "max"),
                                        (dist.ReduceOp.PRODUCT, "prod"))}

# Communicators for groups are made with MPI_Comm_create_group, collective
# over the group's ranks only, with a tag from the group's name (the same on
# every member) below MPI's least tag bound.
_MPI_TAG_BOUND = 32768


def _op_name(opts: Any, operation: str) -> str:
    """pyallreduce's name for the reduce op of ``opts`` (torch's options for
    ``operation``; None: SUM)."""
    if opts is None:
        return "sum"
    op = opts.reduceOp.op
    name = _OPS.get(op.value)
    if name is None:
        raise ValueError(f"pyallreduce's {operation} supports ReduceOp.SUM, AVG, MIN, MAX and PRODUCT, not {op!r} "
                         "(PREMUL_SUM's factor cannot be read from Python: scale the tensor, then reduce with SUM)")
    return name


def _not_provided(operation: str) -> NotImplementedError:
    return NotImplementedError(
        f"the pyallreduce backend does not provide {operation}; pyallreduce implements allreduce, broadcast, "
        "allgather, reduce_scatter and barrier. Run this operation on a group of another backend "
        "(dist.new_group(backend='gloo'))")


class ProcessGroup(dist.ProcessGroup):
    """One torch process group over ``comm``'s ranks (rank and size are the
    communicator's)."""

    def __init__(self, comm: Communicator):
        super().__init__(comm.rank, comm.size)
        self.comm = comm
        self._name = ""
        self._desc = ""

    def getBackendName(self) -> str:  # noqa: N802 - torch's names, for the four below too
        return BACKEND_NAME

    # torch names each group when it registers it (and DeviceMesh, FSDP
    # look groups up by name); a C++ group keeps them in its backend.
    def getGroupName(self) -> str:  # noqa: N802
        return self._name

    def setGroupName(self, name: str) -> None:  # noqa: N802
        self._name = name

    def getGroupDesc(self) -> str:  # noqa: N802
        return self._desc

    def setGroupDesc(self, desc: str) -> None:  # noqa: N802
        self._desc = desc

    def __repr__(self) -> str:
        return f"<pyallreduce ProcessGroup rank {self.comm.rank} of {self.comm.size}>"

    # Each collective: its tensors in the layout pyallreduce takes (one
    # contiguous buffer per argument), the call (see _start), and what to do
    # once it is done (copy results out).

    def _start(self, operation: str, *args: Any, **kwargs: Any) -> Future | None:
        """``comm.<operation>(...)``: queued (its ``_async`` form, whose
        future this returns) inside a backward pass, else run here (None)."""
        if torch._C._current_graph_task_id() != -1:
            return getattr(self.comm, operation + "_async")(*args, **kwargs)
        getattr(self.comm, operation)(*args, **kwargs)
        return None

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> Any:
        op = _op_name(opts, "all_reduce")
        if len(tensors) == 1 and tensors[0].is_contiguous() and torch._C._current_graph_task_id() == -1:
            self.comm.allreduce(tensors[0], op)  # dist.all_reduce's call, with nothing in between
            # dist.all_reduce(async_op=False) (opts.asyncOp False) drops the Work.
            return _Done(tensors) if opts is None or opts.asyncOp else _SYNCHRONOUS_DONE
        calls = []
        for tensor in tensors:
            buffer, copy_back = _contiguous(tensor)
            calls.append((self._start("allreduce", buffer, op=op), copy_back))
        return _work(calls, tensors)

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> Any:
        op = _op_name(opts, "all_reduce_coalesced")
        buffers, copies = zip(*(_contiguous(t) for t in tensors)) if tensors else ((), ())

        def copy_back() -> None:
            for copy in copies:
                copy()

        return _work([(self._start("allreduce_coalesced", list(buffers), op=op), copy_back)], tensors)

    def broadcast(self, tensors: list[torch.Tensor], opts: Any = None) -> Any:
        root = opts.rootRank if opts is not None else 0
        calls = []
        for tensor in tensors:
            buffer, copy_back = _contiguous(tensor)
            calls.append((self._start("broadcast", buffer, root=root), copy_back))
        return _work(calls, tensors)

    def allgather(self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor],
                  opts: Any = None) -> Any:
        calls = []
        for outputs, tensor in zip(output_tensors, input_tensors, strict=True):
            gathered = tensor.new_empty((self.comm.size, tensor.numel()))

            def copy_out(outputs: list[torch.Tensor] = outputs, gathered: torch.Tensor = gathered) -> None:
                for out, block in zip(outputs, gathered, strict=True):
                    out.copy_(block.view(out.shape))

            calls.append((self._start("allgather", tensor.contiguous().view(-1), gathered.view(-1)), copy_out))
        return _work(calls, output_tensors)

    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Any:  # noqa: A002
        return _work([self._all_gather_into(output, input)], [output])

    def all_gather_single_coalesced(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                                    opts: Any = None) -> Any:
        return _work([self._all_gather_into(o, i) for o, i in zip(outputs, inputs, strict=True)], outputs)

    def _all_gather_into(self, output: torch.Tensor,
                         input: torch.Tensor) -> tuple[Future | None, Callable[[], None]]:  # noqa: A002
        buffer, copy_back = _contiguous(output)
        return self._start("allgather", input.contiguous().view(-1), buffer.view(-1)), copy_back

    def reduce_scatter(self, outputs: list[torch.Tensor], input_lists: list[list[torch.Tensor]],
                       opts: Any = None) -> Any:
        op = _op_name(opts, "reduce_scatter")
        calls = []
        for output, inputs in zip(outputs, input_lists, strict=True):
            whole = torch.cat([t.reshape(-1) for t in inputs]) if inputs else output.new_empty(0)
            calls.append(self._reduce_scatter_into(output, whole, op))
        return _work(calls, outputs)

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Any:  # noqa: A002
        op = _op_name(opts, "reduce_scatter_tensor")
        return _work([self._reduce_scatter_into(output, input, op)], [output])

    def reduce_scatter_single_coalesced(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                                        opts: Any = None) -> Any:
        op = _op_name(opts, "reduce_scatter_tensor_coalesced")
        return _work([self._reduce_scatter_into(o, i, op) for o, i in zip(outputs, inputs, strict=True)], outputs)

    def _reduce_scatter_into(self, output: torch.Tensor, input: torch.Tensor,  # noqa: A002
                             op: str) -> tuple[Future | None, Callable[[], None]]:
        buffer, copy_back = _contiguous(output)
        return self._start("reduce_scatter", input.contiguous().view(-1), buffer.view(-1), op=op), copy_back

    def barrier(self, opts: Any = None) -> Any:
        return _work([(self._start("barrier"), _nothing)], [])

    def send(self, tensors: Any, dst: int, tag: int) -> Any:
        raise _not_provided("send")

    def recv(self, tensors: Any, src: int, tag: int) -> Any:
        raise _not_provided("recv")

    def all_to_all_single(self, *args: Any) -> Any:
        raise _not_provided("all_to_all_single")


def _nothing() -> None:
    pass


def _contiguous(tensor: torch.Tensor) -> tuple[torch.Tensor, Callable[[], None]]:
    """A contiguous tensor to run on in ``tensor``'s place, and what copies
    its result back into ``tensor`` (nothing when it is ``tensor`` itself)."""
    if tensor.is_contiguous():
        return tensor, _nothing
    buffer = tensor.contiguous()
    return buffer, lambda: tensor.copy_(buffer)


def _future(result: Any) -> torch.futures.Future:
    """An unset torch future for ``result``; for CUDA tensors one that marks
    them ready on the stream current when it is set."""
    devices = sorted({t.device for t in _tensors(result) if t.device.type == "cuda"}, key=str)
    return torch.futures.Future(devices=devices) if devices else torch.futures.Future()


class _Done(dist._Work):
    """The Work of calls that have run on the caller's thread: waiting
    returns at once, and the future is made only when asked for (a torch
    future and the Work around it cost more than a small allreduce)."""

    def __init__(self, result: Any):
        super().__init__()
        self._result = result

    def wait(self, timeout: Any = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True

    def result(self) -> list[torch.Tensor]:
        return _tensors(self._result)

    def get_future(self) -> torch.futures.Future:
        future = _future(self._result)
        future.set_result(self._result)
        return future


# The Work of every synchronous call that ran here: torch drops it unread.
_SYNCHRONOUS_DONE = _Done([])


def _work(calls: list[tuple[Future | None, Callable[[], None]]], result: Any) -> Any:
    """A torch Work for ``calls``, each a pyallreduce future (None for a call
    that has run) and what to do once it is done: its future gets ``result``
    when every call is done, or the first call's error. For CUDA tensors the
    result is marked ready on the caller's current stream, where pyallreduce
    ordered the calls."""
    pending = [(future, after) for future, after in calls if future is not None]
    for future, after in calls:
        if future is None:
            after()
    if not pending:
        return _Done(result)
    torch_future = _future(result)
    devices = [d for d in {t.device for t in _tensors(result)} if d.type == "cuda"]
    streams = [torch.cuda.current_stream(d) for d in devices]
    remaining = [len(pending)]
    failed: list[BaseException] = []

    def on_callers_stream() -> Any:
        return torch.cuda.stream(streams[0]) if streams else contextlib.nullcontext()

    def done(future: Future, after: Callable[[], None]) -> None:
        try:
            future.result()
            with on_callers_stream():
                after()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            failed.append(exc)
        remaining[0] -= 1
        if remaining[0] > 0:
            return
        with on_callers_stream():
            if failed:
                torch_future.set_exception(failed[0])
            else:
                torch_future.set_result(result)

    # The callbacks run on the progress thread, one at a time, in call order.
    for future, after in pending:
        future.add_done_callback(lambda f, after=after: done(f, after))
    return _create_work_from_future(torch_future)


def _tensors(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in _tensors(item)]
    return []


def create(backend_options: Any, pg_options: Any) -> ProcessGroup:
    """torch's creator for backend "pyallreduce" (extended API): the default
    group over MPI.COMM_WORLD, whose ranks must be torch's, and every other
    group over the MPI ranks it names."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    ranks = list(backend_options.global_ranks_in_group)
    if not ranks:  # the default group
        if backend_options.group_size != world.size or backend_options.group_rank != world.rank:
            raise RuntimeError(
                f"the pyallreduce backend runs over the ranks of an MPI launch, and torch's world (rank "
                f"{backend_options.group_rank} of {backend_options.group_size}) is not MPI's (rank {world.rank} of "
                f"{world.size}): launch with mpiexec/mpirun/srun and initialize with "
                "pyallreduce.distributed.init_process_group('pyallreduce')")
        return ProcessGroup(Communicator(world))
    tag = zlib.crc32(str(backend_options.group_id).encode()) % _MPI_TAG_BOUND
    members = world.Create_group(world.Get_group().Incl(ranks), tag=tag)
    try:
        return ProcessGroup(Communicator(members))
    finally:
        members.Free()  # the communicator keeps its own duplicate
