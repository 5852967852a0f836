"""Flight records: what each rank's communicator was doing when a call broke.

Every communicator keeps its last 64 calls (sequence number, operation, size,
algorithm, state, the step it was in, times), and knows the calls queued
behind them on its progress thread, not yet started. When a call breaks the
communicator (a timeout, a transport error, a peer that gave up), each rank
writes its record: a summary on stderr, or with ``PYALLREDUCE_DEBUG_DIR`` set,
a JSON file there per rank (``pyallreduce-rank<R>-<PID>.json``). Then

    python -m pyallreduce.debug DIR_OR_FILES...

lines the ranks' records up call by call and says which rank fell behind or
diverged, and where.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _C

if TYPE_CHECKING:
    from ._progress import ProgressThread

# Calls of a record shown on stderr (the file holds all of them).
_STDERR_CALLS = 8


def flight_record(core: _C.Communicator, progress: ProgressThread) -> list[dict[str, Any]]:
    """The communicator's last calls as dicts, oldest first, then the calls
    queued on its progress thread (state "queued"; see
    Communicator.flight_record)."""
    return [
        {
            "call": r.call,
            "operation": r.operation,
            "count": r.count,
            "dtype": r.dtype.name,
            "op": r.op.name if r.reduces else None,
            "algorithm": r.algorithm.name,
            "state": r.state,
            "where": r.where,
            "started_s": r.started_s,
            "ended_s": r.ended_s,
            "error": r.error,
        }
        for r in core.flight_record()
    ] + [queued_call(*entry) for entry in progress.queued()]


def queued_call(operation: str, described: tuple[Any, ...] | None, queued_s: float) -> dict[str, Any]:
    """The record of a call queued on the progress thread at ``queued_s``,
    of which ``_C.describe_call`` said ``described`` (None: its arguments
    could not be read, and the call will reject them)."""
    count, dtype, op, algorithm, _ = described if described is not None else (None,) * 5
    def name(code: Any) -> str | None:
        return None if code is None else code.name

    return {"call": None, "operation": operation, "count": count, "dtype": name(dtype), "op": name(op),
            "algorithm": name(algorithm), "state": "queued",
            "where": "", "started_s": None, "ended_s": None, "error": "", "queued_s": queued_s}


def describe_call(call: dict[str, Any]) -> str:
    number = "queued call" if call["call"] is None else f"call {call['call']}"
    text = f"{number}: {call['operation']} of {call['count']} x {call['dtype']}, {call['op']}, " \
           f"{call['algorithm']}: {call['state']}"
    if call["state"] not in ("done", "queued") and call["where"]:
        text += f" at {call['where']}"
    return text


def write_flight_record(calls: list[dict[str, Any]], rank: int, size: int, error: str) -> str | None:
    """Writes this rank's record of ``calls`` (see the module docs); returns the file's path, if one."""
    record = {"rank": rank, "size": size, "host": socket.gethostname(), "pid": os.getpid(), "error": error,
              "calls": calls}
    directory = os.environ.get("PYALLREDUCE_DEBUG_DIR", "").strip()
    if directory:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"pyallreduce-rank{rank}-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        sys.stderr.write(f"pyallreduce: rank {rank}'s flight record is in {path}\n")
        return path
    lines = [f"pyallreduce flight record, rank {rank} of {size} (last {_STDERR_CALLS} calls; "
             "PYALLREDUCE_DEBUG_DIR keeps all of them in a file):"]
    started = [call for call in calls if call["state"] != "queued"]
    lines += [f"  {describe_call(call)}" for call in started[-_STDERR_CALLS:]]
    if len(started) < len(calls):
        lines.append(f"  and {len(calls) - len(started)} queued call(s) behind them, never started")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    return None


def _load(paths: list[str]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        files += sorted(path.glob("pyallreduce-rank*.json")) if path.is_dir() else [path]
    if not files:
        raise SystemExit("pyallreduce.debug: no flight records found (pyallreduce-rank*.json)")
    records = [json.loads(f.read_text()) for f in files]
    return sorted(records, key=lambda r: r["rank"])


def diagnose(records: list[dict[str, Any]]) -> list[str]:
    """What the records say, one finding per line."""
    findings = []
    size = max(r["size"] for r in records)
    missing = sorted(set(range(size)) - {r["rank"] for r in records})
    if missing:
        findings.append(f"no record from rank(s) {', '.join(map(str, missing))}: dead, or never reached the "
                        "failure (look at their output first)")
    started = {r["rank"]: [call for call in r["calls"] if call["state"] != "queued"] for r in records}
    last = {rank: (calls[-1] if calls else None) for rank, calls in started.items()}
    reached = {rank: (call["call"] if call else 0) for rank, call in last.items()}
    furthest = max(reached.values())
    for rank, call in sorted(last.items()):
        if reached[rank] < furthest:
            state = f"its last is {describe_call(call)}" if call else "it made no call"
            findings.append(f"rank {rank} fell behind: the others reached call {furthest}, {state}")
    failed = [(call["ended_s"], rank, call) for rank, call in last.items() if call and call["state"] == "failed"]
    if failed:
        _, rank, call = min(failed)
        findings.append(f"first to fail: rank {rank}, {describe_call(call)}\n    {call['error']}")
    where = {rank: call["where"] for rank, call in last.items() if call and reached[rank] == furthest}
    if len(set(where.values())) > 1:
        findings += [f"in call {furthest}, rank {rank} was at {w or 'its start'}" for rank, w in sorted(where.items())]
    for record in records:
        queued = len(record["calls"]) - len(started[record["rank"]])
        if queued:
            behind = f"call {reached[record['rank']]}" if reached[record["rank"]] else "no started call"
            findings.append(f"rank {record['rank']} has {queued} call(s) queued behind {behind}, never started")
    return findings or ["the ranks' records agree: every rank is at the same call and step"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pyallreduce.debug", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="flight record files, or the PYALLREDUCE_DEBUG_DIR directory")
    parser.add_argument("-n", "--calls", type=int, default=10, help="calls to show per rank (default 10)")
    args = parser.parse_args(argv)
    records = _load(args.paths)
    for record in records:
        print(f"rank {record['rank']} of {record['size']} ({record['host']}, pid {record['pid']}):")
        for call in record["calls"][-args.calls:]:
            print(f"  {describe_call(call)}")
    print("findings:")
    for finding in diagnose(records):
        print(f"  {finding}")


if __name__ == "__main__":
    main()
