"""Faults under mpiexec (tests/fault_worker.py): a rank that sleeps past the
timeout, skips a call, sends a short message, or is killed. Every surviving
rank must end within the timeout plus the culprit search plus a few seconds,
with an error that names the culprit rank and the step it was waiting in.
The ranks share a host, so the faults are made with the messages through
MPI and, again, through the shared-memory pipes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_mpi import mpiexec

WORKER = Path(__file__).parent / "fault_worker.py"
TIMEOUT = 2.0
# The timeout, at most as long again looking for the culprit, and slack for
# a loaded machine.
BOUND = 2 * TIMEOUT + 4
# The worker's ring messages (64 KiB-128 KiB) all through MPI, or all through
# the shared-memory pipes.
THROUGH = {"mpi": {"PYALLREDUCE_SHM_MESSAGE_BYTES": "0"},
           "shared memory": {"PYALLREDUCE_SHM_MESSAGE_BYTES": str(1 << 20)}}


def run_job(ranks, fault, culprit, **env):
    started = time.monotonic()
    result = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, str(WORKER), fault, str(culprit),
                             str(TIMEOUT)], capture_output=True, text=True, timeout=180,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env))
    outcomes = {}
    for line in result.stdout.splitlines():
        if line.startswith("rank ") and ": " in line:
            rank, outcome = line[5:].split(": ", 1)
            outcomes[int(rank)] = outcome
    return result, outcomes, time.monotonic() - started


def seconds_to_error(outcome):
    return float(outcome.split(" after ", 1)[1].split(" s: ", 1)[0])


@pytest.mark.parametrize("ranks, fault, through", [
    (2, "sleep", "mpi"), (4, "sleep", "mpi"), (4, "sleep", "shared memory"), (3, "skip", "mpi"),
    (3, "skip", "shared memory"), (3, "async", "mpi"), (2, "ddp", "mpi")])
def test_every_survivor_names_the_rank_that_holds_the_call_up(ranks, fault, through):
    culprit = 1
    result, outcomes, _ = run_job(ranks, fault, culprit, **THROUGH[through])
    assert sorted(outcomes) == list(range(ranks)), result.stdout + result.stderr
    for rank, outcome in outcomes.items():
        if rank == culprit:
            continue
        assert "TimeoutError" in outcome, outcome
        assert f"failed on rank {rank} at " in outcome and f"Culprit: rank {culprit}," in outcome, outcome
        assert seconds_to_error(outcome) < (BOUND if fault != "ddp" else BOUND + 2), outcome
    # The flight record of each survivor went to stderr.
    assert result.stderr.count("pyallreduce flight record, rank") >= ranks - 1, result.stderr


@pytest.mark.parametrize("through", THROUGH)
def test_a_short_message_unchecked_fails_every_rank_at_once(through):
    result, outcomes, _ = run_job(3, "short", 1, PYALLREDUCE_CHECK="0", **THROUGH[through])
    assert sorted(outcomes) == [0, 1, 2], result.stdout + result.stderr
    for outcome in outcomes.values():
        assert "RuntimeError" in outcome and "message size mismatch" in outcome, outcome
        assert seconds_to_error(outcome) < TIMEOUT, outcome  # told by a notice, not by the timeout


def test_on_error_abort_ends_the_job_with_the_error():
    result, _, elapsed = run_job(3, "sleep", 1, PYALLREDUCE_ON_ERROR="abort")
    assert result.returncode != 0
    assert "aborts the MPI job (PYALLREDUCE_ON_ERROR=abort)" in result.stderr, result.stderr
    assert "Culprit: rank 1," in result.stderr, result.stderr
    assert elapsed < BOUND + 10, elapsed  # before the sleeping rank would have woken up and finished


@pytest.mark.parametrize("through", THROUGH)
def test_a_killed_rank_ends_the_job(through):
    # MPICH's hydra ends the job when a rank dies and names its PID and signal;
    # no survivor is left waiting.
    result, outcomes, elapsed = run_job(3, "kill", 1, **THROUGH[through])
    assert result.returncode != 0
    assert "EXIT CODE: 9" in result.stdout + result.stderr, result.stdout + result.stderr
    assert elapsed < BOUND + 10, elapsed
