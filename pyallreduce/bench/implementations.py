"""The implementations the benchmark runs side by side: pyallreduce's
algorithms, pyallreduce under torch.distributed (its backend, to show what
torch's layer costs), and their peers: the MPI library's own collectives,
torch's gloo, and the collectives as a Python programmer would first write
them with mpi4py (the naive baseline); on GPUs, torch's NCCL.

Each takes the same buffers (numpy arrays, with torch tensors viewing the
same memory; on a GPU, CUDA tensors) and runs one collective of
collectives.COLLECTIVES, out of place or in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import COLLECTIVE_ALGORITHMS, _C
from .._communicator import Communicator

PEERS = ("mpi", "gloo", "naive", "nccl")
# pyallreduce's auto under torch.distributed: its time over auto's is torch's layer.
BACKEND = "torch_pyallreduce"


def ours(collective: str) -> tuple[str, ...]:
    """pyallreduce's algorithms of `collective`, auto last (as the table shows them)."""
    return (*COLLECTIVE_ALGORITHMS[collective][1:], "auto")


def names(collective: str) -> tuple[str, ...]:
    return (*ours(collective), BACKEND, *PEERS)


class Buffer:
    """One buffer as a numpy array (None for bfloat16, which numpy lacks, and
    on a GPU) and as a torch tensor over the same memory (None without
    torch)."""

    def __init__(self, numpy: np.ndarray | None, torch: Any):
        self.numpy = numpy
        self.torch = torch

    @property
    def native(self) -> Any:
        """The numpy array if there is one, else the tensor."""
        return self.numpy if self.numpy is not None else self.torch

    def block(self, index: int, length: int) -> Buffer:
        """Elements [index * length, (index + 1) * length), a view."""
        window = slice(index * length, (index + 1) * length)
        return Buffer(None if self.numpy is None else self.numpy[window],
                      None if self.torch is None else self.torch[window])

    def copy_from(self, other: Buffer) -> None:
        if self.numpy is not None:
            np.copyto(self.numpy, other.numpy)
        else:
            self.torch.copy_(other.torch)

    def __len__(self) -> int:
        return len(self.native)


def allocate(count: int, dtype: str, device: str = "cpu") -> Buffer:
    """A buffer of `count` elements; with device "cuda", on the current GPU."""
    try:
        import torch
    except ImportError:
        torch = None
    if device == "cuda" or dtype == "bfloat16":
        if torch is None:
            raise SystemExit("--datatype bfloat16 and --device cuda need torch")
        return Buffer(None, torch.empty(count, dtype=getattr(torch, dtype), device=device))
    array = np.empty(count, dtype)
    return Buffer(array, torch.from_numpy(array) if torch else None)


@dataclass
class Call:
    """One call: out of place, `recv` is a buffer of its own; in place, the
    views collectives.py names (an allreduce's or a broadcast's send is its
    recv, a reduce-scatter's recv is block r of send, an allgather's send is
    block r of recv)."""

    send: Buffer
    recv: Buffer
    op: str
    in_place: bool
    root: int


class Implementation:
    name: str
    ops: tuple[str, ...] = ("sum", "avg", "prod", "min", "max")

    def unsupported(self, collective: str, dtype: str, op: str) -> str | None:
        """Why this implementation cannot run collective/dtype/op, or None if it can."""
        if not hasattr(self, collective):
            return f"{self.name} has no {collective}"
        if op != "none" and op not in self.ops:
            return f"{self.name} has no {op} reduction"
        return None

    def run(self, collective: str, call: Call) -> Buffer:
        """Runs the call; returns where this rank's result is (its recv but
        where an implementation's in-place form puts it elsewhere)."""
        return getattr(self, collective)(call) or call.recv

    def model_algorithm(self, collective: str, nbytes: int) -> _C.Algorithm | None:
        """The algorithm whose cost-model time this implementation should show."""
        return None

    def close(self) -> None:
        pass


class Ours(Implementation):
    def __init__(self, comm: Communicator, algorithm: str):
        self.name = algorithm
        self.comm = comm
        self.algorithm = algorithm

    def unsupported(self, collective: str, dtype: str, op: str) -> str | None:
        if self.algorithm not in COLLECTIVE_ALGORITHMS[collective]:
            return f"{self.algorithm} is no {collective} algorithm"
        return super().unsupported(collective, dtype, op)

    def allreduce(self, call: Call) -> None:
        self.comm.allreduce(call.send.native, op=call.op, algorithm=self.algorithm,
                            out=None if call.in_place else call.recv.native)

    def reduce_scatter(self, call: Call) -> None:
        self.comm.reduce_scatter(call.send.native, call.recv.native, op=call.op, algorithm=self.algorithm)

    def allgather(self, call: Call) -> None:
        self.comm.allgather(call.send.native, call.recv.native, algorithm=self.algorithm)

    def broadcast(self, call: Call) -> None:
        self.comm.broadcast(call.recv.native, root=call.root, algorithm=self.algorithm)

    def model_algorithm(self, collective: str, nbytes: int) -> _C.Algorithm:
        return getattr(_C.Algorithm, self.comm.choose_algorithm(nbytes, self.algorithm, collective)[0])


_MPI_OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}


class Mpi(Implementation):
    """The MPI library pyallreduce runs over, through mpi4py: MPI_Allreduce,
    MPI_Reduce_scatter_block, MPI_Allgather and MPI_Bcast."""

    name = "mpi"
    ops = tuple(_MPI_OPS)

    def __init__(self, world: MPI.Comm):
        self.world = world

    def unsupported(self, collective: str, dtype: str, op: str) -> str | None:
        return "mpi4py has no bfloat16 datatype" if dtype == "bfloat16" else super().unsupported(collective, dtype, op)

    def allreduce(self, call: Call) -> None:
        self.world.Allreduce(MPI.IN_PLACE if call.in_place else call.send.numpy, call.recv.numpy, op=_MPI_OPS[call.op])

    def reduce_scatter(self, call: Call) -> Buffer | None:
        if not call.in_place:
            self.world.Reduce_scatter_block(call.send.numpy, call.recv.numpy, op=_MPI_OPS[call.op])
            return None
        # MPI's in-place form leaves this rank's block at the front of the input.
        self.world.Reduce_scatter_block(MPI.IN_PLACE, call.send.numpy, op=_MPI_OPS[call.op])
        return call.send.block(0, len(call.recv))

    def allgather(self, call: Call) -> None:
        self.world.Allgather(MPI.IN_PLACE if call.in_place else call.send.numpy, call.recv.numpy)

    def broadcast(self, call: Call) -> None:
        self.world.Bcast(call.recv.numpy, root=call.root)


class TorchDistributed(Implementation):
    """torch.distributed's collectives on one process group (gloo, NCCL or
    pyallreduce's backend), set up from the MPI ranks. torch has no
    out-of-place all_reduce: out of place copies the input into the output
    and reduces that, as a caller would."""

    def __init__(self, world: MPI.Comm, name: str, backend: str):
        import torch.distributed as dist

        from ..distributed import init_process_group

        self.dist, self.name = dist, name
        self.made_default_group = not dist.is_initialized()
        if self.made_default_group:
            init_process_group("gloo", mpi_comm=world)
        self.group = None if backend == "gloo" else dist.new_group(backend=backend)
        self.reduce_ops = {"sum": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT, "min": dist.ReduceOp.MIN,
                           "max": dist.ReduceOp.MAX}
        if backend != "gloo":
            self.reduce_ops["avg"] = dist.ReduceOp.AVG
        self.ops = tuple(self.reduce_ops)

    def allreduce(self, call: Call) -> None:
        if not call.in_place:
            call.recv.torch.copy_(call.send.torch)
        self.dist.all_reduce(call.recv.torch, op=self.reduce_ops[call.op], group=self.group)

    def reduce_scatter(self, call: Call) -> None:
        self.dist.reduce_scatter_single(call.recv.torch, call.send.torch, op=self.reduce_ops[call.op], group=self.group)

    def allgather(self, call: Call) -> None:
        self.dist.all_gather_single(call.recv.torch, call.send.torch, group=self.group)

    def broadcast(self, call: Call) -> None:
        self.dist.broadcast(call.recv.torch, src=call.root, group=self.group)

    def close(self) -> None:
        """Destroys its group, and the default group where it made that
        (implementations close in the reverse order of their making)."""
        if self.group is not None:
            self.dist.destroy_process_group(self.group)
        if self.made_default_group:
            self.dist.destroy_process_group()


_NUMPY_OPS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


class Naive(Implementation):
    """The collectives as a Python programmer would first write them with
    mpi4py: rings of whole blocks (no segments), one blocking Sendrecv per
    step, numpy for the arithmetic; a broadcast that sends the whole vector
    from the root to each rank in turn."""

    name = "naive"

    def __init__(self, world: MPI.Comm):
        self.world = world
        self.scratch = np.empty(0, np.uint8)
        self.work = np.empty(0, np.uint8)

    def unsupported(self, collective: str, dtype: str, op: str) -> str | None:
        if dtype == "bfloat16":
            return "numpy has no bfloat16"
        if op == "avg" and dtype.startswith("int"):
            return "the naive ring averages floats only"
        return super().unsupported(collective, dtype, op)

    def _blocks(self, data: np.ndarray) -> list[np.ndarray]:
        # Block k is data[bounds[k]:bounds[k+1]]; e.g. 10 elements, p = 4: 0, 3, 6, 8, 10.
        p = self.world.size
        bounds = [k * (data.size // p) + min(k, data.size % p) for k in range(p + 1)]
        return [data[bounds[k] : bounds[k + 1]] for k in range(p)]

    def _reduce_ring(self, blocks: list[np.ndarray], owned: int, op: str) -> None:
        """Folds every rank's blocks so that this rank ends with block `owned`
        reduced (its neighbour on the left with block owned - 1): step s sends
        block owned-1-s and folds the one it receives into block owned-2-s,
        e.g. p = 3, owned = 0: sends 2 then 1, folds 1 then 0."""
        p, r = self.world.size, self.world.rank
        largest = max(b.nbytes for b in blocks)
        if self.scratch.nbytes < largest:
            self.scratch = np.empty(largest, np.uint8)
        combine = _NUMPY_OPS["sum" if op == "avg" else op]
        for s in range(p - 1):
            outgoing, incoming = blocks[(owned - 1 - s) % p], blocks[(owned - 2 - s) % p]
            received = self.scratch[: incoming.nbytes].view(incoming.dtype)
            self.world.Sendrecv(outgoing, dest=(r + 1) % p, recvbuf=received, source=(r - 1) % p)
            combine(incoming, received, out=incoming)
        if op == "avg":
            np.divide(blocks[owned], p, out=blocks[owned])

    def _gather_ring(self, blocks: list[np.ndarray], held: int) -> None:
        """Passes blocks around until every rank has all: step s sends block
        held-s and receives block held-s-1 in place."""
        p, r = self.world.size, self.world.rank
        for s in range(p - 1):
            self.world.Sendrecv(blocks[(held - s) % p], dest=(r + 1) % p, recvbuf=blocks[(held - s - 1) % p],
                                source=(r - 1) % p)

    def allreduce(self, call: Call) -> None:
        if not call.in_place:
            np.copyto(call.recv.numpy, call.send.numpy)
        if self.world.size == 1:
            return
        blocks = self._blocks(call.recv.numpy)
        owned = (self.world.rank + 1) % self.world.size
        self._reduce_ring(blocks, owned, call.op)
        self._gather_ring(blocks, owned)

    def reduce_scatter(self, call: Call) -> None:
        data = call.send.numpy
        if not call.in_place:  # the input is read-only: reduce a copy
            if self.work.nbytes < data.nbytes:
                self.work = np.empty(data.nbytes, np.uint8)
            data = self.work[: data.nbytes].view(data.dtype)
            np.copyto(data, call.send.numpy)
        blocks = self._blocks(data)
        self._reduce_ring(blocks, self.world.rank, call.op)
        if not call.in_place:
            np.copyto(call.recv.numpy, blocks[self.world.rank])

    def allgather(self, call: Call) -> None:
        blocks = self._blocks(call.recv.numpy)
        if not call.in_place:
            np.copyto(blocks[self.world.rank], call.send.numpy)
        self._gather_ring(blocks, self.world.rank)

    def broadcast(self, call: Call) -> None:
        if self.world.rank != call.root:
            self.world.Recv(call.recv.numpy, source=call.root)
            return
        for rank in range(self.world.size):
            if rank != call.root:
                self.world.Send(call.recv.numpy, dest=rank)


def make(
    requested: list[str], collective: str, comm: Communicator, world: MPI.Comm, device: str = "cpu"
) -> tuple[list[Implementation], list[str]]:
    """The implementations named, in order, that run `collective` on
    `device`, and notes on those that cannot run here."""
    made, notes = [], []
    known = names(collective)
    makers = {  # name: (devices, maker)
        "mpi": (("cpu",), lambda: Mpi(world)),
        "naive": (("cpu",), lambda: Naive(world)),
        "gloo": (("cpu",), lambda: TorchDistributed(world, "gloo", "gloo")),
        "nccl": (("cuda",), lambda: TorchDistributed(world, "nccl", "nccl")),
        BACKEND: (("cpu", "cuda"), lambda: TorchDistributed(world, BACKEND, "pyallreduce")),
    }
    for name in requested:
        if name not in known:
            raise SystemExit(f"unknown {collective} implementation {name!r}; choose from {', '.join(known)}")
        devices, maker = makers.get(name, (("cpu", "cuda"), lambda name=name: Ours(comm, name)))
        if device not in devices:
            notes.append(f"{name} skipped: it does not run on {device} buffers here")
            continue
        try:
            made.append(maker())
        except (ImportError, RuntimeError) as exc:
            notes.append(f"{name} skipped: {exc}")
    return made, notes
