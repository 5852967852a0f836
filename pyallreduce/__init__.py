"""pyallreduce: allreduce algorithms written once in C++, run over MPI.

    comm = pyallreduce.init()              # under mpirun/mpiexec/srun
    comm.allreduce(tensor)                 # in place; sum over all ranks

See README.md for the algorithms, the environment variables and launching.
"""

from ._build_info import build_info
from ._communicator import ALGORITHMS, DTYPES, OPS, Communicator, init

__all__ = ["ALGORITHMS", "DTYPES", "OPS", "Communicator", "build_info", "init"]
