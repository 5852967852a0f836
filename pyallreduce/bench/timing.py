"""What every benchmark here shares: how calls are timed, and how a spread
over runs is written."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def time_calls(
    call: Callable[[], Any],
    iterations: int,
    *,
    warmup: int = 0,
    device: str = "cpu",
    world: Any = None,
    prepare: Callable[[], Any] | None = None,
) -> np.ndarray:
    """Seconds taken by each of ``iterations`` calls of ``call()``, after
    ``warmup`` untimed ones.

    ``prepare()`` runs untimed before each call (the in-place runs restore
    their input with it). On ``device="cuda"`` the GPU is idle when each call
    starts, and the call is timed by CUDA events on the current stream: from
    its start to the end of the work it enqueued, without the cost of a host
    synchronize. With an MPI ``world`` the ranks start each call together,
    after a barrier, and each sample is the slowest rank's time.
    """
    torch = None
    if device == "cuda":
        import torch
    samples = np.empty(iterations)
    for i in range(warmup + iterations):
        if prepare is not None:
            prepare()
        if torch is not None:
            torch.cuda.synchronize()
        if world is not None:
            world.Barrier()
        if torch is not None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            began = time.perf_counter()
            call()
            elapsed = time.perf_counter() - began
        if i >= warmup:
            samples[i - warmup] = elapsed
    if world is not None:
        from mpi4py import MPI

        world.Allreduce(MPI.IN_PLACE, samples, op=MPI.MAX)
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
