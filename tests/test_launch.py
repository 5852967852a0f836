"""What a launch does when ranks are not alike, under mpiexec: settings that
would shape messages differently are refused on every rank when the
communicator is made, an exception nothing catches ends the whole job, a
call after MPI_Finalize raises instead of aborting the process, and exiting
with asynchronous calls still queued finishes them first."""

import os
import subprocess
import sys
import time

import pytest

from test_mpi import mpiexec

DIFFERING = """
import os, sys
from mpi4py import MPI
rank = MPI.COMM_WORLD.rank
if rank == int(sys.argv[1]):
    os.environ[sys.argv[2]] = sys.argv[3]
import pyallreduce
try:
    pyallreduce.init()
except ValueError as exc:
    outcome = f"rank {rank} refused: {exc}"
else:
    outcome = f"rank {rank} accepted"
outcomes = MPI.COMM_WORLD.gather(outcome)   # printed by one rank: lines from several can interleave
if rank == 0:
    print("\\n".join(outcomes), flush=True)
"""


@pytest.mark.parametrize("variable, value, message", [
    ("PYALLREDUCE_RING_SEGMENT_BYTES", "65536",
     "ranks disagree on ring_segment_bytes (PYALLREDUCE_RING_SEGMENT_BYTES): rank 0 has 1048576, rank 2 has 65536"),
    ("PYALLREDUCE_MPI_MAX_MESSAGE_BYTES", "4096", "ranks disagree on max_message_bytes"),
    ("PYALLREDUCE_CHECK", "0", "ranks disagree on check_arguments (PYALLREDUCE_CHECK)"),
    ("PYALLREDUCE_ALGO", "ring", "ranks disagree on algorithm_rules (PYALLREDUCE_ALGO)"),
    ("PYALLREDUCE_CUDA_TRANSPORT", "mpi", "ranks disagree on device_transport"),
    ("PYALLREDUCE_ALGO", "ring:10", "pyallreduce communicator rejected on rank 2: ValueError: PYALLREDUCE_ALGO rule"),
    ("PYALLREDUCE_RING_SEGMENT_BYTES", "-1", "pyallreduce communicator rejected on rank 2: ValueError"),
])
def test_settings_that_differ_on_one_rank_are_refused_on_every_rank(variable, value, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYALLREDUCE_")}
    result = subprocess.run([mpiexec(), "-n", "3", sys.executable, "-c", DIFFERING, "2", variable, value],
                            capture_output=True, text=True, timeout=120, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    refusals = [line for line in result.stdout.splitlines() if " refused: " in line]
    assert len(refusals) == 3, output
    for line in refusals:
        if not line.startswith("rank 2 "):  # rank 2 raises its own error when its options are invalid
            assert message in line, line
    assert variable in output


UNCAUGHT = """
import pyallreduce, numpy
comm = pyallreduce.init()
if comm.rank == 1:
    raise KeyError("rank 1 failed on purpose")
comm.allreduce(numpy.ones(4))   # would wait for rank 1 forever
"""


def test_an_uncaught_exception_on_one_rank_ends_the_job():
    started = time.monotonic()
    result = subprocess.run([mpiexec(), "-n", "3", sys.executable, "-c", UNCAUGHT], capture_output=True, text=True,
                            timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "KeyError: 'rank 1 failed on purpose'" in result.stderr, result.stderr
    assert "uncaught KeyError on rank 1; aborting the MPI job" in result.stderr, result.stderr
    assert elapsed < 60, elapsed


AFTER_FINALIZE = """
import numpy, pyallreduce
from mpi4py import MPI
comm = pyallreduce.init()
rank = comm.rank
MPI.Finalize()
try:
    comm.allreduce(numpy.ones(3))
except RuntimeError as exc:
    print(f"rank {rank}: {exc}", flush=True)
"""


def test_a_call_after_mpi_finalize_raises_instead_of_aborting():
    result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", AFTER_FINALIZE], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("MPI has been finalized; a pyallreduce communicator cannot be used after it") == 2


EXIT_WITH_QUEUED_CALLS = """
import atexit
import numpy as np
from mpi4py import MPI

futures = []

@atexit.register   # registered first, so it runs after pyallreduce's own exit handler
def report():
    results = [f.result(timeout=0) for f in futures]
    ok = all((r == MPI.COMM_WORLD.size).all() for r in results) and not MPI.Is_finalized()
    print(f"rank {MPI.COMM_WORLD.rank}: {len(results)} queued calls finished before exit: {ok}", flush=True)

import pyallreduce
comm = pyallreduce.init()
futures += [comm.allreduce_async(np.ones(1 << 16)) for _ in range(20)]
"""


def test_exit_with_queued_async_calls_finishes_them():
    result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", EXIT_WITH_QUEUED_CALLS],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("20 queued calls finished before exit: True") == 2, output
