"""torch.distributed set up from the ranks of an MPI launch, and pyallreduce
as a torch.distributed backend.

    mpiexec -n 4 python train.py      # (or mpirun, srun) and in train.py:

    comm = pyallreduce.init(torch_backend="gloo")        # both at once, or
    pyallreduce.distributed.init_process_group("gloo")   # torch.distributed alone ("nccl" too)
    pyallreduce.distributed.init_process_group("pyallreduce")   # torch's collectives run on pyallreduce

Importing this module registers the backend "pyallreduce" with
torch.distributed (see pyallreduce._process_group): dist.all_reduce,
broadcast, all_gather(_into_tensor), reduce_scatter(_tensor), barrier and
DDP without a hook then run on pyallreduce's algorithms, for CPU and CUDA
tensors.

Rank and world size come from MPI; rank 0 opens the rendezvous store on a
port the operating system picks and tells the others its address over MPI,
so no MASTER_ADDR/MASTER_PORT is needed. The local rank (the process's index
among the ranks on its node) comes from MPI's shared-memory split, which
every launcher supports.
"""

from __future__ import annotations

import atexit
import datetime
import importlib.util
import ipaddress
import os
import socket
from typing import Any

from ._communicator import require_mpi_launch
from ._optional import require


def _register_backend() -> None:
    """Registers backend "pyallreduce" with torch.distributed, once."""
    import torch.distributed as dist

    from . import _process_group

    if _process_group.BACKEND_NAME.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(_process_group.BACKEND_NAME, _process_group.create, extended_api=True,
                                      devices=["cpu", "cuda"])


def _resolved_host_name() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def interface_addresses() -> list[tuple[str, str]]:
    """(address, netmask) of this machine's IPv4 interfaces, loopback left
    out; empty where the system cannot say (Linux's SIOCGIFADDR)."""
    try:
        import fcntl
        import struct
    except ImportError:
        return []
    get_address, get_netmask = 0x8915, 0x891B  # SIOCGIFADDR, SIOCGIFNETMASK
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), get_address, request)[20:24])
                netmask = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), get_netmask, request)[20:24])
            except OSError:  # no IPv4 address on it
                continue
            if not ipaddress.ip_address(address).is_loopback:
                found.append((address, netmask))
    return found


def rendezvous_address(resolved: str, hosts: int, mine: list[tuple[str, str]],
                       theirs: list[list[tuple[str, str]]]) -> str:
    """The address the other ranks use to reach rank 0's store: its host
    name's address (``resolved``), unless that is a loopback address (a
    common /etc/hosts entry) while the ranks span ``hosts`` > 1 hosts; then
    the one of rank 0's interface addresses (``mine``) that shares a network
    with an address of every other rank (``theirs``), else the first.

    Raises:
        RuntimeError: loopback across hosts, and rank 0 has no other address.
    """
    if hosts == 1 or not ipaddress.ip_address(resolved).is_loopback:
        return resolved
    if not mine:
        raise RuntimeError(
            f"rank 0's host name {socket.gethostname()!r} resolves to {resolved}, a loopback address, but the ranks "
            f"span {hosts} hosts, and rank 0 has no other IPv4 address; set MASTER_ADDR to an address of rank 0's "
            "host that the others can reach")

    def network(address: str, netmask: str) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)

    for address, netmask in mine:
        if all(any(ipaddress.ip_address(a) in network(address, netmask) for a, _ in other) for other in theirs):
            return address
    return mine[0][0]


def init_process_group(
    backend: str = "gloo", *, mpi_comm: Any = None, timeout: datetime.timedelta | None = None
) -> int:
    """Initialize torch.distributed's default process group over the ranks of
    ``mpi_comm`` (default ``MPI.COMM_WORLD``). Collective over ``mpi_comm``.

    ``backend`` is any of torch's, or "pyallreduce" (this package's, which
    runs torch's collectives on a :class:`pyallreduce.Communicator` over the
    same MPI ranks). Sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` in the environment, and for ``backend="nccl"`` (or
    "pyallreduce" where torch sees a GPU) selects the GPU ``LOCAL_RANK``
    (mod the devices visible).

    Returns:
        The local rank.

    Raises:
        RuntimeError: started by torchrun rather than an MPI launcher, or
            torch.distributed is already initialized.
    """
    torch = require("torch", "torch", "pyallreduce.distributed")
    import torch.distributed as dist
    from mpi4py import MPI

    _register_backend()

    comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
    require_mpi_launch(comm)
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialized")
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("backend='nccl' needs a CUDA device, and torch sees none; use backend='gloo'")

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.rank, node.size
    node.Free()
    hosts = comm.allreduce(1 if local_rank == 0 else 0)
    addresses = comm.gather(interface_addresses(), root=0)

    store = None
    address = None
    if comm.rank == 0:
        try:
            host = os.environ.get("MASTER_ADDR") or rendezvous_address(
                _resolved_host_name(), hosts, addresses[0], [theirs for theirs in addresses[1:] if theirs != addresses[0]])
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
    if backend == "nccl" or (backend == "pyallreduce" and torch.cuda.is_available()):
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


if importlib.util.find_spec("torch") is not None:
    _register_backend()
