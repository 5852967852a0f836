"""Failures in the middle of a call, injected into the in-process transport:
a rank that stops for a while at one of its messages, one that is slow, one
whose message is short. Every surviving rank must raise within the timeout
plus the culprit search (at most the timeout again), with a message naming
the call, its step and the culprit; the communicator is broken afterwards,
and the flight recorder and pyallreduce.debug tell the same story."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import pyallreduce
from pyallreduce.testing import Fault, spawn_local

TIMEOUT = 1.0
# The timeout, then at most as long again looking for the culprit, and slack
# for a loaded machine.
BOUND = 2 * TIMEOUT + 3.0


def run_calls(calls, algorithm="auto", count=40_000, async_calls=False):
    """A rank's body: `calls` allreduces; returns (exception or None, seconds to it)."""

    def body(comm):
        x = np.ones(count, np.float32)
        started = time.monotonic()
        try:
            for _ in range(calls):
                if async_calls:
                    comm.allreduce_async(x, algorithm=algorithm).result()
                else:
                    comm.allreduce(x, algorithm=algorithm)
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            return exc, time.monotonic() - started, comm.flight_record(), comm.broken
        return None, time.monotonic() - started, comm.flight_record(), comm.broken

    return body


@pytest.mark.parametrize("world", [2, 3, 4, 5])
@pytest.mark.parametrize("algorithm", ["ring", "halving_doubling", "recursive_doubling"])
def test_a_rank_that_stops_is_named_by_every_other_rank(world, algorithm):
    culprit = world - 1
    # Its sixth send: past the first call's argument check, in the data phase
    # of the first or second call.
    stall = Fault(rank=culprit, kind="stall", message=5, seconds=2 * TIMEOUT + 2)
    results = spawn_local(world, run_calls(3, algorithm), call_timeout=TIMEOUT, faults=[stall])
    for rank, (error, seconds, record, broken) in enumerate(results):
        assert error is not None, f"rank {rank} finished although rank {culprit} stopped"
        text = str(error)
        if rank == culprit:
            # It comes back after the others gave up; its own call then fails at once.
            assert isinstance(error, RuntimeError), text
            continue
        assert isinstance(error, pyallreduce.TimeoutError), text
        assert isinstance(error, RuntimeError)
        assert seconds < BOUND, (rank, seconds)
        assert f"failed on rank {rank} at " in text and " step " in text, text
        assert f"Culprit: rank {culprit}," in text, text
        assert record[-1]["state"] == "failed" and record[-1]["error"] == text, record[-1]
        assert broken == text


@pytest.mark.parametrize("hosts", [[0, 0, 1, 1], [0, 0, 0, 1, 1, 1]], ids=str)
@pytest.mark.parametrize("message", [3, 9, 15])
def test_a_rank_that_stops_in_hierarchical_pipeline_is_named(hosts, message, monkeypatch):
    """While both levels of the pipeline are in flight, the ranks poll both;
    a stalled rank still ends every other rank's call within the timeout,
    named as the culprit."""
    monkeypatch.setenv("PYALLREDUCE_ALGO_BETWEEN_HOSTS", "ring")
    monkeypatch.setenv("PYALLREDUCE_HIERARCHICAL_PIECES", "4")
    culprit = len(hosts) - 1
    stall = Fault(rank=culprit, kind="stall", message=message, seconds=2 * TIMEOUT + 2)
    results = spawn_local(len(hosts), run_calls(2, "hierarchical"), call_timeout=TIMEOUT, faults=[stall],
                          hosts=hosts, ring_segment_bytes=4096)
    for rank, (error, seconds, _, _) in enumerate(results):
        if rank == culprit:
            continue
        assert isinstance(error, pyallreduce.TimeoutError), (rank, error)
        assert seconds < BOUND, (rank, seconds)
        assert "hierarchical" in str(error) and f"Culprit: rank {culprit}," in str(error), str(error)


def test_a_short_message_in_hierarchical_pipeline_fails_every_rank(monkeypatch):
    monkeypatch.setenv("PYALLREDUCE_ALGO_BETWEEN_HOSTS", "ring")
    monkeypatch.setenv("PYALLREDUCE_HIERARCHICAL_PIECES", "4")
    short = Fault(rank=1, kind="short", message=6)
    results = spawn_local(4, run_calls(2, "hierarchical"), call_timeout=30.0, faults=[short], hosts=[0, 0, 1, 1],
                          ring_segment_bytes=4096)
    for rank, (error, seconds, _, _) in enumerate(results):
        assert isinstance(error, RuntimeError) and not isinstance(error, pyallreduce.TimeoutError), (rank, error)
        assert "message size mismatch: rank 1 sent" in str(error), str(error)
        assert seconds < 5, seconds


def test_the_late_rank_learns_that_it_was_late():
    stall = Fault(rank=1, kind="stall", message=0, seconds=2 * TIMEOUT + 1)
    results = spawn_local(3, run_calls(1), call_timeout=TIMEOUT, faults=[stall])
    error = results[1][0]
    assert isinstance(error, pyallreduce.TimeoutError), error
    assert "Culprit: rank 1, which was not waiting when rank " in str(error), error


def test_a_slow_rank_that_makes_the_call_outlast_the_timeout_is_named():
    slow = Fault(rank=0, kind="slow", message=0, seconds=0.2)
    results = spawn_local(3, run_calls(20, "ring"), call_timeout=TIMEOUT, faults=[slow])
    for rank in (1, 2):
        error, seconds, _, _ = results[rank]
        assert isinstance(error, pyallreduce.TimeoutError), error
        assert "Culprit: rank 0," in str(error), error
        assert seconds < 20 * 0.2 * 8, seconds  # well before the slow rank would have finished


@pytest.mark.parametrize("world", [2, 3, 4])
def test_a_short_message_fails_every_rank_at_once_naming_the_sender(world):
    short = Fault(rank=1, kind="short", message=4)
    results = spawn_local(world, run_calls(3, "ring"), call_timeout=30.0, faults=[short])
    for rank, (error, seconds, _, _) in enumerate(results):
        assert isinstance(error, RuntimeError) and not isinstance(error, pyallreduce.TimeoutError), error
        assert "message size mismatch: rank 1 sent" in str(error), error
        assert seconds < 5, seconds  # told by the failing rank's notice, not by the 30 s timeout


def test_asynchronous_calls_carry_the_timeout_to_their_future():
    stall = Fault(rank=2, kind="stall", message=5, seconds=2 * TIMEOUT + 1)
    results = spawn_local(3, run_calls(3, "ring", async_calls=True), call_timeout=TIMEOUT, faults=[stall])
    for rank in (0, 1):
        error = results[rank][0]
        assert isinstance(error, pyallreduce.TimeoutError), error
        assert "Culprit: rank 2," in str(error), error


def test_a_broken_communicator_refuses_every_later_call_at_once():
    stall = Fault(rank=1, kind="stall", message=2, seconds=2 * TIMEOUT + 1)

    def body(comm):
        x = np.ones(1000)
        with pytest.raises(RuntimeError) as first:
            for _ in range(3):
                comm.allreduce(x)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="this communicator is broken") as later:
            comm.allreduce(x)
        assert time.monotonic() - started < 0.5
        assert str(first.value) in str(later.value)
        with pytest.raises(RuntimeError, match="this communicator is broken"):
            comm.allreduce_coalesced([x, x])
        return True

    assert spawn_local(3, body, call_timeout=TIMEOUT, faults=[stall]) == [True] * 3


def test_the_flight_record_holds_the_last_calls():
    def body(comm):
        for count in range(70):
            comm.allreduce(np.ones(count + 1))
        return comm.flight_record()

    for record in spawn_local(2, body):
        assert [call["call"] for call in record] == list(range(7, 71))
        assert all(call["state"] == "done" and call["operation"] == "allreduce" for call in record)
        assert record[-1]["count"] == 70 and record[-1]["dtype"] == "float64"
        assert all(call["started_s"] <= call["ended_s"] for call in record)


def test_records_written_on_failure_are_lined_up_by_pyallreduce_debug(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PYALLREDUCE_DEBUG_DIR", str(tmp_path))
    stall = Fault(rank=2, kind="stall", message=5, seconds=2 * TIMEOUT + 1)
    spawn_local(3, run_calls(3, "ring"), call_timeout=TIMEOUT, faults=[stall])
    files = sorted(tmp_path.glob("pyallreduce-rank*.json"))
    assert len(files) == 3
    record = json.loads(files[0].read_text())
    assert record["rank"] == 0 and record["size"] == 3 and "Culprit: rank 2," in record["error"]
    report = subprocess.run([sys.executable, "-m", "pyallreduce.debug", str(tmp_path)], capture_output=True,
                            text=True, check=True).stdout
    assert "rank 0 of 3" in report and "rank 2 of 3" in report
    assert "first to fail: rank " in report and "Culprit: rank 2," in report, report


def test_the_flight_record_lists_queued_calls_after_the_running_one():
    """Rank 0 queues calls behind one that waits for rank 1: two asynchronous
    ones and a synchronous one from another thread. Its record shows the first
    running and the rest queued, in order, until rank 1 joins."""
    rank_0_has_looked = threading.Event()

    def body(comm):
        if comm.rank == 1:
            rank_0_has_looked.wait(30)
            comm.allreduce(np.ones(10, np.float32))
            comm.allreduce(np.ones(11, np.float64), op="max")
            comm.allreduce_coalesced([np.ones(3, np.float32), np.ones(4, np.float32)])
            return None
        futures = [comm.allreduce_async(np.ones(10, np.float32)),
                   comm.allreduce_async(np.ones(11, np.float64), op="max")]
        sync_call = threading.Thread(target=comm.allreduce_coalesced, args=([np.ones(3, np.float32),
                                                                            np.ones(4, np.float32)],))
        sync_call.start()
        deadline = time.monotonic() + 30
        # Until the first call has started (on a loaded machine the progress
        # thread may not have taken it yet) and the other two wait behind it.
        while time.monotonic() < deadline:
            record = comm.flight_record()
            if [c["state"] for c in record] == ["running", "queued", "queued"]:
                break
            time.sleep(0.01)
        rank_0_has_looked.set()
        for future in futures:
            future.result()
        sync_call.join()
        return record, comm.flight_record()

    while_waiting, after = spawn_local(2, body)[0]
    running, *queued = while_waiting
    assert (running["call"], running["state"], running["count"]) == (1, "running", 10)
    assert [(c["call"], c["state"], c["operation"], c["count"], c["dtype"], c["op"]) for c in queued] == [
        (None, "queued", "allreduce", 11, "float64", "max"),
        (None, "queued", "allreduce_coalesced", 7, "float32", "sum"),
    ]
    assert all(c["started_s"] is None and c["ended_s"] is None for c in queued)
    assert abs(queued[0]["queued_s"] - running["started_s"]) < 10 and queued[0]["queued_s"] <= queued[1]["queued_s"]
    assert [(c["call"], c["state"]) for c in after] == [(1, "done"), (2, "done"), (3, "done")]


def test_a_queued_call_whose_arguments_cannot_be_read_is_listed_without_them():
    def body(comm):
        if comm.rank == 0:
            blocker = comm.allreduce_async(np.ones(5))
            rejected = comm.allreduce_async("not a buffer")
            record = comm.flight_record()
        else:
            time.sleep(0.5)
            comm.allreduce(np.ones(5))
            rejected = comm.allreduce_async(np.ones(5))
            record = None
        # The rank that passed it raises TypeError, its peer a ValueError naming it.
        with pytest.raises(TypeError if comm.rank == 0 else ValueError):
            rejected.result()
        return record

    queued = spawn_local(2, body)[0][-1]
    assert (queued["state"], queued["count"], queued["dtype"], queued["op"]) == ("queued", None, None, None)


def test_a_broken_rank_writes_its_queued_calls_too(tmp_path, monkeypatch):
    """Asynchronous calls queued behind one that breaks are in the record each
    rank writes, and pyallreduce.debug counts them."""
    monkeypatch.setenv("PYALLREDUCE_DEBUG_DIR", str(tmp_path))
    stall = Fault(rank=2, kind="stall", message=2, seconds=2 * TIMEOUT + 1)

    def body(comm):
        futures = [comm.allreduce_async(np.ones(40_000, np.float32), algorithm="ring") for _ in range(4)]
        return [type(future.exception(timeout=60)).__name__ for future in futures]

    for errors in spawn_local(3, body, call_timeout=TIMEOUT, faults=[stall]):
        assert "NoneType" not in errors, errors
    record = json.loads(next(tmp_path.glob("pyallreduce-rank0-*.json")).read_text())
    states = [call["state"] for call in record["calls"]]
    assert states[0] == "failed" and states[1:] == ["queued"] * 3, states
    report = subprocess.run([sys.executable, "-m", "pyallreduce.debug", str(tmp_path)], capture_output=True,
                            text=True, check=True).stdout
    assert "rank 0 has 3 call(s) queued behind call 1, never started" in report, report


def test_timeout_values():
    assert spawn_local(1, lambda comm: comm.timeout) == [300.0]
    assert spawn_local(1, lambda comm: comm.timeout, call_timeout=0) == [0.0]
    with pytest.raises(ValueError, match="non-negative, finite"):
        spawn_local(1, lambda comm: None, call_timeout=-1)
    with pytest.raises(TypeError, match="number of seconds"):
        spawn_local(1, lambda comm: None, call_timeout="5")


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("PYALLREDUCE_TIMEOUT", "12.5")
    assert spawn_local(1, lambda comm: comm.timeout) == [12.5]
    monkeypatch.setenv("PYALLREDUCE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="PYALLREDUCE_TIMEOUT='soon'"):
        spawn_local(1, lambda comm: None)
