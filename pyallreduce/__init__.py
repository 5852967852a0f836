"""pyallreduce: allreduce algorithms written once in C++, run over MPI (and,
for CUDA tensors, over NCCL or MPI staged through pinned memory).

    comm = pyallreduce.init()              # under mpirun/mpiexec/srun
    comm.allreduce(tensor)                 # in place; sum over all ranks

See README.md for the algorithms, the environment variables and launching.
"""

from . import cuda
from ._build_info import build_info
from ._communicator import ALGORITHMS, DTYPES, OPS, Communicator, init

__all__ = ["ALGORITHMS", "DTYPES", "OPS", "Communicator", "build_info", "cuda", "init"]
