"""pyallreduce: allreduce algorithms written once in C++, run over MPI (and,
for CUDA tensors, over NCCL or MPI staged through pinned memory).

    comm = pyallreduce.init()              # under mpirun/mpiexec/srun
    comm.allreduce(tensor)                 # in place; sum over all ranks

See README.md for the algorithms, the environment variables and launching.
"""

# mpi4py.MPI loads the MPI library before _C needs it: _C records no path to
# libmpi, and the dynamic loader finds it among the libraries already loaded.
from mpi4py import MPI as _MPI  # noqa: F401

from . import cuda
from ._C import TimeoutError  # noqa: A004 - pyallreduce.TimeoutError, a RuntimeError
from ._build_info import build_info
from ._communicator import ALGORITHMS, COLLECTIVE_ALGORITHMS, DTYPES, OPS, Communicator, init
from ._version import __version__

__all__ = ["ALGORITHMS", "COLLECTIVE_ALGORITHMS", "DTYPES", "OPS", "Communicator", "TimeoutError", "__version__", "build_info", "cuda", "init"]
