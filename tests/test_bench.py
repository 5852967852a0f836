"""The benchmark at 2 ranks on a tiny sweep: every implementation runs and
every result matches the reference (correctness only: no timing asserts)."""

import json
import subprocess
import sys

import pytest

import pyallreduce
from pyallreduce.bench.implementations import ours

from test_mpi import mpiexec


def run_under_mpiexec(ranks: int, module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` on `ranks` ranks; asserts it exited 0."""
    result = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-m", module, *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result


def run_bench(ranks: int, *args: str) -> subprocess.CompletedProcess:
    """The benchmark with `args`; asserts it exited 0 and every table was correct."""
    result = run_under_mpiexec(ranks, "pyallreduce.bench", *args, "--no-progress")
    assert "# result check: all correct" in result.stdout, (result.stdout + result.stderr)[-6000:]
    assert "WRONG" not in result.stdout, result.stdout[-6000:]
    return result


@pytest.mark.parametrize("dtype, op", [("float32", "sum"), ("float16", "max"), ("bfloat16", "avg")])
def test_bench_tiny_sweep_is_correct(tmp_path, dtype, op):
    record, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_bench(2, "-b", "8", "-e", "64K", "-f", "32", "-n", "3", "-w", "1", "-c", "2", "-d", dtype,
                       "-o", op, "--json", str(record), "--plot", str(plot))
    data = json.loads(record.read_text())
    measured = {m["impl"] for m in data["measurements"]}
    skipped = {s["impl"] for s in data["skipped"]}
    assert measured | skipped == {"ring", "halving_doubling", "recursive_doubling", "hierarchical", "auto",
                                  "torch_pyallreduce", "mpi", "gloo", "naive"}
    assert {"ring", "halving_doubling", "recursive_doubling", "hierarchical", "auto"} <= measured
    assert {m["bytes"] for m in data["measurements"]} == {8, 256, 8192}
    assert all(m["wrong"] == 0 and len(m["samples_us"]) == 3 for m in data["measurements"])
    assert plot.stat().st_size > 0
    # The nccl-tests table: one row per size and implementation that ran.
    rows = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith("#")]
    assert len(rows) >= 3 * len(measured)
    # The summary, out of place and in place, and the same again from the record.
    summary = result.stdout[result.stdout.index("# speed-up of auto (out of place"):result.stdout.index("# result check")]
    assert "# speed-up of auto (in place" in summary, summary
    again = subprocess.run([sys.executable, "-m", "pyallreduce.bench.report", str(record)], capture_output=True,
                           text=True, check=True).stdout
    assert summary.strip() in again, again


@pytest.mark.parametrize("collective", ["reduce_scatter", "allgather", "broadcast"])
def test_bench_of_each_collective_is_correct(tmp_path, collective):
    """3 ranks, so that rows round to whole blocks per rank; broadcast from
    the last rank."""
    record = tmp_path / "bench.json"
    run_bench(3, "--collective", collective, "-b", "8", "-e", "8K", "-f", "32", "-n", "2", "-w", "0", "-c", "1",
              "-o", "max", "-r", "2", "--json", str(record))
    data = json.loads(record.read_text())
    assert data["header"]["collective"] == collective
    measured = {m["impl"] for m in data["measurements"]}
    assert set(pyallreduce.COLLECTIVE_ALGORITHMS[collective]) | {"torch_pyallreduce", "mpi", "gloo", "naive"} <= measured
    placements = {"broadcast": {"in"}}.get(collective, {"out", "in"})
    assert {m["placement"] for m in data["measurements"]} == placements
    # Rows of whole blocks: 8 B holds no float32 block per rank at 3 ranks, 256 B rounds to 63 elements.
    expected_bytes = {8, 256, 8192} if collective == "broadcast" else {252, 8184}
    assert {m["bytes"] for m in data["measurements"]} == expected_bytes
    assert all(m["wrong"] == 0 for m in data["measurements"])


def test_ddp_bench_runs_and_prints_a_timeline(tmp_path):
    record = tmp_path / "ddp.json"
    result = run_under_mpiexec(2, "pyallreduce.bench.ddp", "-n", "1", "-w", "0", "-N", "1", "--timeline", "1",
                               "--json", str(record))
    data = json.loads(record.read_text())
    assert data["ranks"] == 2 and len(data["overhead_ratio"]) == 1 and len(data["coalesced_speedup"]) == 1
    assert len(data["backend_overhead_ratio"]) == 1
    assert set(data["runs_ms"]) == {"iteration, pyallreduce hook", "iteration, pyallreduce backend",
                                    "iteration, gloo default hook",
                                    "iteration, compute only", "allreduce_coalesced", "MPI_Allreduce per tensor"}
    # DDP's 25 MiB buckets over 102 MB of gradients, each reported once, in order.
    buckets = [line.split(":")[0].strip() for line in result.stdout.splitlines() if line.startswith("  bucket ")]
    assert buckets == [f"bucket {i}" for i in range(len(buckets))] and len(buckets) >= 4, result.stdout[-6000:]


def test_soak_leaves_no_thread_behind():
    result = run_under_mpiexec(2, "pyallreduce.bench.soak", "--scale", "0.02", "--rounds", "1")
    output = result.stdout + result.stderr
    assert "resident set growth:" in output and "8 B latency, timeout armed / disarmed" in output, output
    threads = next(line for line in result.stdout.splitlines() if line.startswith("threads: "))
    before, after = (int(word) for word in threads.replace(",", "").split() if word.isdigit())
    assert after <= before, threads  # 20 communicators dropped without free() took their threads along


def test_bench_sweep_of_every_power_of_two_is_correct(tmp_path):
    """Every power of two from 1 KiB to 64 MiB, out of place and in place,
    each of pyallreduce's algorithms once with nccl-tests' statistic: a
    threshold that breaks one size shows as a wrong row."""
    record = tmp_path / "bench.json"
    run_bench(2, "-b", "1K", "-e", "64M", "-f", "2", "-n", "1", "-w", "0", "-c", "1", "--stat", "nccl",
              "--impl", ",".join(ours("allreduce")), "--json", str(record))
    data = json.loads(record.read_text())
    assert {m["bytes"] for m in data["measurements"]} == {1 << k for k in range(10, 27)}
    assert {(m["impl"], m["placement"]) for m in data["measurements"]} == {
        (impl, placement) for impl in ours("allreduce") for placement in ("out", "in")}
    assert all(m["wrong"] == 0 and len(m["samples_us"]) == 1 for m in data["measurements"])


def test_bench_of_every_dtype_and_op_writes_a_table_each(tmp_path):
    record = tmp_path / "bench.json"
    result = run_bench(2, "-b", "8", "-e", "64", "-f", "8", "-n", "1", "-w", "0", "-d", "all", "-o", "all", "-N", "2",
                       "--impl", "ring,auto,mpi", "--json", str(record))
    tables = [(dtype, op) for dtype in pyallreduce.DTYPES for op in pyallreduce.OPS]
    assert result.stdout.count("# result check: all correct") == len(tables), result.stdout[-6000:]
    for dtype, op in tables:
        data = json.loads((tmp_path / f"bench_{dtype}_{op}.json").read_text())
        assert {(m["type"], m["redop"]) for m in data["measurements"]} == {(dtype, op)}
        assert {m["run"] for m in data["measurements"]} == {0, 1}
