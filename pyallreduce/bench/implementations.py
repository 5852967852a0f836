"""The allreduce implementations the benchmark runs side by side: pyallreduce's
algorithms and their peers (the MPI library's own MPI_Allreduce, torch's gloo
all_reduce, and a plain ring written with mpi4py as the naive baseline; on
GPUs, torch's NCCL all_reduce).

Each takes the same buffers (numpy arrays, with torch tensors viewing the
same memory; on a GPU, CUDA tensors) and reduces out of place (send -> recv)
or in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import _C
from .._communicator import Communicator

OURS = ("ring", "halving_doubling", "recursive_doubling", "hierarchical", "auto")
PEERS = ("mpi", "gloo", "naive_ring", "nccl")
ALL = OURS + PEERS


class Buffers:
    """One message's send and receive buffers, as numpy arrays (None for
    bfloat16, which numpy lacks, and on a GPU) and as torch tensors over the
    same memory (None without torch); with device "cuda", CUDA tensors on the
    current device."""

    def __init__(self, count: int, dtype: str, device: str = "cpu"):
        self.dtype = dtype
        self.device = device
        try:
            import torch
        except ImportError:
            torch = None
        if device == "cuda":
            self.send_torch = torch.empty(count, dtype=getattr(torch, dtype), device="cuda")
            self.recv_torch = torch.empty_like(self.send_torch)
            self.send = self.recv = None
        elif dtype == "bfloat16":
            if torch is None:
                raise SystemExit("--datatype bfloat16 needs torch (numpy has no bfloat16)")
            self.send_torch = torch.empty(count, dtype=torch.bfloat16)
            self.recv_torch = torch.empty_like(self.send_torch)
            self.send = self.recv = None
        else:
            self.send = np.empty(count, dtype)
            self.recv = np.empty_like(self.send)
            self.send_torch = torch.from_numpy(self.send) if torch else None
            self.recv_torch = torch.from_numpy(self.recv) if torch else None

    def array(self, which: str) -> Any:
        """The numpy array if there is one, else the tensor."""
        numpy_view = self.send if which == "send" else self.recv
        if numpy_view is not None:
            return numpy_view
        return self.send_torch if which == "send" else self.recv_torch


class Implementation(ABC):
    name: str
    devices: tuple[str, ...] = ("cpu",)  # where its buffers may live

    def unsupported(self, dtype: str, op: str) -> str | None:
        """Why this implementation cannot run dtype/op, or None if it can."""
        return None

    @abstractmethod
    def out_of_place(self, buffers: Buffers, op: str) -> None:
        """Reduces buffers' send into its recv."""

    @abstractmethod
    def in_place(self, buffers: Buffers, op: str) -> None:
        """Reduces buffers' recv in place."""

    def model_algorithm(self, nbytes: int) -> _C.Algorithm | None:
        """The algorithm whose cost-model time this implementation should show."""
        return None

    def close(self) -> None:
        pass


class Ours(Implementation):
    devices = ("cpu", "cuda")

    def __init__(self, comm: Communicator, algorithm: str):
        self.name = algorithm
        self.comm = comm
        self.algorithm = algorithm

    def out_of_place(self, buffers: Buffers, op: str) -> None:
        self.comm.allreduce(buffers.array("send"), op=op, algorithm=self.algorithm, out=buffers.array("recv"))

    def in_place(self, buffers: Buffers, op: str) -> None:
        self.comm.allreduce(buffers.array("recv"), op=op, algorithm=self.algorithm)

    def model_algorithm(self, nbytes: int) -> _C.Algorithm:
        return getattr(_C.Algorithm, self.comm.choose_algorithm(nbytes, self.algorithm)[0])


_MPI_OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}


class MpiAllreduce(Implementation):
    """MPI_Allreduce of the MPI library pyallreduce runs over, through mpi4py."""

    name = "mpi"

    def __init__(self, world: MPI.Comm):
        self.world = world

    def unsupported(self, dtype: str, op: str) -> str | None:
        if op not in _MPI_OPS:
            return f"MPI has no {op} reduction"
        if dtype == "bfloat16":
            return "mpi4py has no bfloat16 datatype"
        return None

    def out_of_place(self, buffers: Buffers, op: str) -> None:
        self.world.Allreduce(buffers.send, buffers.recv, op=_MPI_OPS[op])

    def in_place(self, buffers: Buffers, op: str) -> None:
        self.world.Allreduce(MPI.IN_PLACE, buffers.recv, op=_MPI_OPS[op])


class GlooAllreduce(Implementation):
    """torch.distributed all_reduce on the gloo backend, set up from the MPI
    ranks. torch has no out-of-place all_reduce: out of place copies the input
    into the output and reduces that, as a caller would."""

    name = "gloo"

    def __init__(self, world: MPI.Comm):
        import torch.distributed as dist

        from ..distributed import init_process_group

        self.dist = dist
        if not dist.is_initialized():
            init_process_group("gloo", mpi_comm=world)
        self.ops = {"sum": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}

    def unsupported(self, dtype: str, op: str) -> str | None:
        return None if op in self.ops else f"gloo has no {op} reduction"

    def out_of_place(self, buffers: Buffers, op: str) -> None:
        buffers.recv_torch.copy_(buffers.send_torch)
        self.dist.all_reduce(buffers.recv_torch, op=self.ops[op])

    def in_place(self, buffers: Buffers, op: str) -> None:
        self.dist.all_reduce(buffers.recv_torch, op=self.ops[op])

    def close(self) -> None:
        self.dist.destroy_process_group()


class NcclAllreduce(Implementation):
    """torch.distributed all_reduce over NCCL (a group beside the gloo one),
    one GPU per rank. Out of place copies, then reduces, as GlooAllreduce."""

    name = "nccl"
    devices = ("cuda",)

    def __init__(self, world: MPI.Comm):
        import torch.distributed as dist

        from ..distributed import init_process_group

        self.dist = dist
        if not dist.is_initialized():
            init_process_group("gloo", mpi_comm=world)
        self.group = dist.new_group(backend="nccl")
        self.ops = {"sum": dist.ReduceOp.SUM, "avg": dist.ReduceOp.AVG, "prod": dist.ReduceOp.PRODUCT,
                    "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}

    def out_of_place(self, buffers: Buffers, op: str) -> None:
        buffers.recv_torch.copy_(buffers.send_torch)
        self.dist.all_reduce(buffers.recv_torch, op=self.ops[op], group=self.group)

    def in_place(self, buffers: Buffers, op: str) -> None:
        self.dist.all_reduce(buffers.recv_torch, op=self.ops[op], group=self.group)

    def close(self) -> None:
        self.dist.destroy_process_group(self.group)


_NUMPY_OPS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


class NaiveRing(Implementation):
    """The ring allreduce as a Python programmer would first write it with
    mpi4py: whole chunks (no segments), one blocking Sendrecv per step, numpy
    for the arithmetic."""

    name = "naive_ring"

    def __init__(self, world: MPI.Comm):
        self.world = world
        self.scratch = np.empty(0, np.uint8)

    def unsupported(self, dtype: str, op: str) -> str | None:
        if dtype == "bfloat16":
            return "numpy has no bfloat16"
        if op == "avg" and dtype.startswith("int"):
            return "the naive ring averages floats only"
        return None

    def out_of_place(self, buffers: Buffers, op: str) -> None:
        np.copyto(buffers.recv, buffers.send)
        self.in_place(buffers, op)

    def in_place(self, buffers: Buffers, op: str) -> None:
        data = buffers.recv
        p, r = self.world.size, self.world.rank
        if p == 1:
            return
        # Chunk k is data[bounds[k]:bounds[k+1]]; e.g. 10 elements, p = 4: 0, 3, 6, 8, 10.
        bounds = [k * (data.size // p) + min(k, data.size % p) for k in range(p + 1)]
        chunk = [data[bounds[k] : bounds[k + 1]] for k in range(p)]
        if self.scratch.nbytes < chunk[0].nbytes:
            self.scratch = np.empty(chunk[0].nbytes, np.uint8)
        right, left = (r + 1) % p, (r - 1) % p
        combine = _NUMPY_OPS["sum" if op == "avg" else op]
        # Reduce-scatter: step s sends chunk r-s and folds chunk r-s-1 into its own.
        for s in range(p - 1):
            outgoing, incoming = chunk[(r - s) % p], chunk[(r - s - 1) % p]
            received = self.scratch[: incoming.nbytes].view(data.dtype)
            self.world.Sendrecv(outgoing, dest=right, recvbuf=received, source=left)
            combine(incoming, received, out=incoming)
        if op == "avg":
            np.divide(chunk[(r + 1) % p], p, out=chunk[(r + 1) % p])
        # Allgather: step s passes on chunk r+1-s and receives chunk r-s in place.
        for s in range(p - 1):
            self.world.Sendrecv(chunk[(r + 1 - s) % p], dest=right, recvbuf=chunk[(r - s) % p], source=left)


_PEER_CLASSES = {"mpi": MpiAllreduce, "naive_ring": NaiveRing, "gloo": GlooAllreduce, "nccl": NcclAllreduce}


def make(
    names: list[str], comm: Communicator, world: MPI.Comm, device: str = "cpu"
) -> tuple[list[Implementation], list[str]]:
    """The implementations named, in order, that run on `device`, and notes
    on those that cannot run here."""
    made, notes = [], []
    for name in names:
        if name not in ALL:
            raise SystemExit(f"unknown implementation {name!r}; choose from {', '.join(ALL)}")
        kind = Ours if name in OURS else _PEER_CLASSES[name]
        if device not in kind.devices:
            notes.append(f"{name} skipped: it does not run on {device} buffers here")
            continue
        try:
            made.append(Ours(comm, name) if name in OURS else kind(world))
        except (ImportError, RuntimeError) as exc:
            notes.append(f"{name} skipped: {exc}")
    return made, notes
