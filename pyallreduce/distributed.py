"""torch.distributed set up from the ranks of an MPI launch.

    mpiexec -n 4 python train.py      # (or mpirun, srun) and in train.py:

    comm = pyallreduce.init(torch_backend="gloo")        # both at once, or
    pyallreduce.distributed.init_process_group("gloo")   # torch.distributed alone ("nccl" too)

Rank and world size come from MPI; rank 0 opens the rendezvous store on a
port the operating system picks and tells the others its address over MPI,
so no MASTER_ADDR/MASTER_PORT is needed. The local rank (the process's index
among the ranks on its node) comes from MPI's shared-memory split, which
every launcher supports.
"""

from __future__ import annotations

import atexit
import datetime
import os
import socket
from typing import Any

from ._communicator import require_mpi_launch
from ._optional import require


def _rendezvous_host() -> str:
    """The address the other ranks use to reach rank 0's store."""
    explicit = os.environ.get("MASTER_ADDR")
    if explicit:
        return explicit
    hostname = socket.gethostname()
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return "127.0.0.1"


def init_process_group(
    backend: str = "gloo", *, mpi_comm: Any = None, timeout: datetime.timedelta | None = None
) -> int:
    """Initialize torch.distributed's default process group over the ranks of
    ``mpi_comm`` (default ``MPI.COMM_WORLD``). Collective over ``mpi_comm``.

    Sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` in
    the environment, and for ``backend="nccl"`` selects the GPU
    ``LOCAL_RANK`` (mod the devices visible).

    Returns:
        The local rank.

    Raises:
        RuntimeError: started by torchrun rather than an MPI launcher, or
            torch.distributed is already initialized.
    """
    torch = require("torch", "torch", "pyallreduce.distributed")
    import torch.distributed as dist
    from mpi4py import MPI

    comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
    require_mpi_launch(comm)
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialized")
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("backend='nccl' needs a CUDA device, and torch sees none; use backend='gloo'")

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.rank, node.size
    node.Free()

    store = None
    address = None
    if comm.rank == 0:
        try:
            host = _rendezvous_host()
            store = dist.TCPStore(host, 0, comm.size, is_master=True, wait_for_workers=False)
            address = (host, store.port)
        except Exception as exc:  # noqa: BLE001 - every rank must hear about it
            address = exc
    address = comm.bcast(address, root=0)
    if isinstance(address, Exception):
        raise RuntimeError(f"rank 0 could not open the rendezvous store: {address}")
    host, port = address
    if store is None:
        store = dist.TCPStore(host, port, comm.size, is_master=False)

    os.environ.update(
        RANK=str(comm.rank), WORLD_SIZE=str(comm.size), LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE=str(local_size)
    )
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, store=store, rank=comm.rank, world_size=comm.size, **kwargs)
    atexit.register(_destroy_at_exit)
    return local_rank


def _destroy_at_exit() -> None:
    """Tears the process group down before the interpreter does. Left to
    interpreter shutdown, gloo's threads can outlive the objects they use and
    abort the process ("terminate called without an active exception"), as
    some runs of a two-rank script did."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
