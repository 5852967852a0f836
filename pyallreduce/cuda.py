"""One GPU per rank: which GPU a rank of an mpirun/mpiexec/srun launch uses.

    pyallreduce.cuda.set_local_device()     # before the first CUDA tensor
    comm = pyallreduce.init()
    comm.allreduce(torch.ones(10, device="cuda"))

pyallreduce reduces a CUDA tensor on the device that holds it; this picks that
device the way launchers lay ranks out: the rank's index among the ranks of
its node, modulo the node's GPUs.
"""

from __future__ import annotations

import os

# The node-local rank as the launchers name it: torchrun, Open MPI, MPICH's
# Hydra (and Intel MPI), MVAPICH, Slurm's srun.
LOCAL_RANK_VARIABLES = (
    "LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "MV2_COMM_WORLD_LOCAL_RANK",
    "SLURM_LOCALID",
)


def local_rank() -> int:
    """This process's index among the ranks on its node: from the first of
    LOCAL_RANK_VARIABLES that is set, else (collective over MPI.COMM_WORLD) from
    the ranks that share its memory."""
    for name in LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not an integer") from None
    from mpi4py import MPI

    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.rank
    finally:
        node.Free()


def set_local_device() -> int:
    """Makes GPU ``local_rank() % torch.cuda.device_count()`` torch's current
    device and returns its index. Raises RuntimeError without a GPU."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError("no CUDA device is visible to this process")
    device = local_rank() % count
    torch.cuda.set_device(device)
    return device
