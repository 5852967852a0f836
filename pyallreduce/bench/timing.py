"""What every benchmark here shares: how calls are timed, and how a spread
over runs is written."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def add_run_cycles(parser: argparse.ArgumentParser, default: int) -> None:
    """The repeat option every benchmark here takes, spelled as nccl-tests
    spells it (-N/--run_cycles; its -R is buffer registration)."""
    parser.add_argument("-N", "--run_cycles", type=int, default=default, metavar="N",
                        help=f"repeat the whole measurement N times, interleaved; figures are the median and range "
                             f"over the cycles (default {default})")


# What a sample is, by the name --stat gives it.
STATISTICS = {
    "median": "median over iterations of the slowest rank, each iteration timed alone after a barrier",
    "nccl": "nccl-tests': the iterations back to back after a barrier, their mean per rank, averaged across ranks",
}


def time_calls(
    call: Callable[[], Any],
    iterations: int,
    *,
    warmup: int = 0,
    device: str = "cpu",
    world: Any = None,
    prepare: Callable[[], Any] | None = None,
    statistic: str = "median",
) -> np.ndarray:
    """Seconds taken by ``call()``, after ``warmup`` untimed calls: with
    statistic "median", one sample per call, each of ``iterations`` calls
    timed alone; with "nccl", one sample, the mean of ``iterations`` calls
    made back to back.

    ``prepare()`` runs untimed before each call (the in-place runs restore
    their input with it); back to back, only before the first. On
    ``device="cuda"`` the GPU is idle when the timing starts, and the calls
    are timed by CUDA events on the current stream: from the start to the
    end of the work they enqueued, without the cost of a host synchronize.
    With an MPI ``world`` the ranks start together, after a barrier, and a
    sample is the slowest rank's time ("median") or the ranks' average
    ("nccl").
    """
    torch = None
    if device == "cuda":
        import torch

    def timed(calls: int) -> float:
        if torch is not None:
            torch.cuda.synchronize()
        if world is not None:
            world.Barrier()
        if torch is not None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        began = time.perf_counter()
        for _ in range(calls):
            call()
        return time.perf_counter() - began

    for _ in range(warmup):
        if prepare is not None:
            prepare()
        call()
    if statistic == "nccl":
        if prepare is not None:
            prepare()
        samples = np.array([timed(iterations) / iterations])
    else:
        samples = np.empty(iterations)
        for i in range(iterations):
            if prepare is not None:
                prepare()
            samples[i] = timed(1)
    if world is not None:
        from mpi4py import MPI

        world.Allreduce(MPI.IN_PLACE, samples, op=MPI.SUM if statistic == "nccl" else MPI.MAX)
        if statistic == "nccl":
            samples /= world.size
    return samples


def median_seconds(call: Callable[[], Any], iterations: int, **options: Any) -> float:
    """The median of :func:`time_calls` ``(call, iterations, **options)``."""
    return float(np.median(time_calls(call, iterations, **options)))


def median_range(values: Sequence[float], unit: str = "", width: int = 0) -> str:
    """``median [min-max]`` of values with two decimals, e.g. ``12.50 ms
    [12.31-13.02]``; a single value alone; ``-`` for none. ``width`` pads the
    median, so that columns line up."""
    if len(values) == 0:
        return "-"
    middle = f"{statistics.median(values):{width}.2f}{unit}"
    return middle if len(values) == 1 else f"{middle} [{min(values):.2f}-{max(values):.2f}]"
