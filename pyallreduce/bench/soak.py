"""Soak: many calls of every kind, then what was left behind.

    mpiexec -n 2 python -m pyallreduce.bench.soak [--scale 1.0]

Runs 100k allreduces of 1 KiB, 2k of 4 MiB, 2k asynchronous ones and 1k
communicators made, used asynchronously and dropped (every other one freed,
the rest only dropped), and reports on rank 0: the resident set's growth from
after a warm-up to the end (target below 1%), the threads left (target: as
many as at the start), and the 8-byte latency with the timeout machinery
armed (the default timeout) beside it disarmed (timeout=0), measured
alternately, median of rounds (target: within 5%).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import threading
import time

import numpy as np

import pyallreduce


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def latency_s(comm: pyallreduce.Communicator, iterations: int) -> float:
    x = np.ones(1, np.float64)
    out = np.empty_like(x)
    comm.allreduce(x, out=out)
    started = time.perf_counter()
    for _ in range(iterations):
        comm.allreduce(x, out=out)
    return (time.perf_counter() - started) / iterations


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pyallreduce.bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count by this (default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="latency rounds, alternating (default 7)")
    args = parser.parse_args(argv)
    n = lambda count: max(1, int(count * args.scale))  # noqa: E731

    comm = pyallreduce.init()
    small = np.ones(256, np.float32)
    large = np.ones(1 << 20, np.float32)
    for _ in range(100):  # warm-up: scratch regions, first-touch pages, lazy imports
        comm.allreduce(small)
        comm.allreduce_async(large).result()
    gc.collect()
    threads_before, rss_before = os_threads(), rss_bytes()
    phases = []

    def phase(name: str, run) -> None:
        started = time.perf_counter()
        run()
        gc.collect()
        phases.append((name, time.perf_counter() - started, rss_bytes()))

    def small_calls() -> None:
        for _ in range(n(100_000)):
            comm.allreduce(small)

    def large_calls() -> None:
        for _ in range(n(2_000)):
            comm.allreduce(large)

    def async_calls() -> None:
        pending = []
        for i in range(n(2_000)):
            pending.append(comm.allreduce_async(small if i % 2 else large))
            if len(pending) == 16:
                for future in pending:
                    future.result()
                pending.clear()
        for future in pending:
            future.result()

    def communicators() -> None:
        for i in range(n(1_000)):
            other = pyallreduce.Communicator()
            other.allreduce_async(small).result()
            if i % 2 == 0:
                other.free()
            del other  # the odd ones only dropped: their thread and MPI communicator must go too
        gc.collect()

    for name, run in [("100k x 1 KiB", small_calls), ("2k x 4 MiB", large_calls), ("2k async", async_calls),
                      ("1k communicators", communicators)]:
        phase(name, run)
        comm.allreduce(small)  # keeps the ranks in step between phases

    time.sleep(0.5)  # dropped communicators' threads finish exiting
    threads_after = os_threads()
    armed = pyallreduce.Communicator()
    disarmed = pyallreduce.Communicator(timeout=0)
    ratios = []
    for _ in range(args.rounds):
        with_timeout, without = latency_s(armed, n(20_000)), latency_s(disarmed, n(20_000))
        ratios.append(with_timeout / without)
    armed.free()
    disarmed.free()

    if comm.rank == 0:
        print(f"soak over {comm.size} ranks, pyallreduce {pyallreduce.__version__}, python threads "
              f"{threading.active_count()}")
        print(f"resident set after warm-up: {rss_before / 2**20:.1f} MiB, threads {threads_before}")
        for name, seconds, rss in phases:
            print(f"  {name:<18} {seconds:7.1f} s  resident {rss / 2**20:8.1f} MiB "
                  f"({100 * (rss - rss_before) / rss_before:+.2f}%)")
        growth = 100 * (phases[-1][2] - rss_before) / rss_before
        print(f"resident set growth: {growth:+.2f}% (target < 1%)")
        print(f"threads: {threads_before} before, {threads_after} after (target: no more)")
        print(f"8 B latency, timeout armed / disarmed: median {statistics.median(ratios):.3f} "
              f"[{min(ratios):.3f}-{max(ratios):.3f}] over {len(ratios)} rounds (target < 1.05)")
    comm.free()


if __name__ == "__main__":
    main()
