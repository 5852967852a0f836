"""The entry point of a worker that mpiexec starts: a rank that raises prints
its traceback and aborts the whole MPI job, so no other rank waits for it."""

import sys
import traceback

from mpi4py import MPI


def run(main) -> None:
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
