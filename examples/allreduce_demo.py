"""Allreduce over the ranks of an mpiexec launch: each pyallreduce algorithm
timed beside MPI_Allreduce (the same MPI library, through mpi4py) and checked.

    mpiexec -n 4 python examples/allreduce_demo.py [--sizes 8,65536,16MiB] [--iters 20]

Times are the median over iterations of the slowest rank; busbw is
algbw * 2(p-1)/p (the nccl-tests convention, GB = 1e9). The full benchmark is
`python -m pyallreduce.bench`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

import pyallreduce

ALGORITHMS = ("ring", "halving_doubling", "recursive_doubling", "auto")
UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(text: str) -> int:
    number = text.rstrip("KMGiB")
    unit = text[len(number):]
    if unit not in UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use bytes or KiB/MiB/GiB")
    return int(number) * UNITS[unit]


def timed(world: MPI.Comm, call, iters: int, warmup: int) -> float:
    """Median over iterations of the slowest rank's time for call(), in seconds."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iters):
        world.Barrier()
        start = time.perf_counter()
        call()
        samples.append(world.allreduce(time.perf_counter() - start, op=MPI.MAX))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,64KiB,16MiB", help="message sizes, comma separated (default %(default)s)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]

    world = MPI.COMM_WORLD
    comm = pyallreduce.init()
    p, rank = comm.size, comm.rank
    if rank == 0:
        info = pyallreduce.build_info()
        print(f"pyallreduce {info['version']} on {p} ranks, {info['mpi_library_version'].splitlines()[0]}")
        print(f"{'bytes':>10} {'implementation':>26} {'time us':>10} {'busbw GB/s':>11}  check")

    failures = 0
    for nbytes in sizes:
        count = max(nbytes // 4, 1)
        # Small integers in float32: every sum is exact, so the check is equality.
        source = ((np.arange(count) % 251) + rank).astype(np.float32)
        expected = ((np.arange(count) % 251) * p + p * (p - 1) // 2).astype(np.float32)
        work = np.empty_like(source)
        rows = []
        for algorithm in ALGORITHMS:
            seconds = timed(world, lambda: comm.allreduce(source, algorithm=algorithm, out=work), args.iters, args.warmup)
            rows.append((algorithm if algorithm != "auto" else f"auto ({comm.choose_algorithm(source.nbytes)[0]})", seconds, np.array_equal(work, expected)))
        seconds = timed(world, lambda: world.Allreduce(source, work, op=MPI.SUM), args.iters, args.warmup)
        rows.append(("MPI_Allreduce", seconds, np.array_equal(work, expected)))
        all_correct = world.allreduce(all(ok for _, _, ok in rows), op=MPI.LAND)
        failures += not all_correct
        if rank == 0:
            for name, seconds, ok in rows:
                busbw = source.nbytes / seconds / 1e9 * (2 * (p - 1) / p if p > 1 else 1)
                print(f"{source.nbytes:>10} {name:>26} {seconds * 1e6:>10.1f} {busbw:>11.2f}  {'ok' if ok else 'WRONG'}")

    # What the cross-rank argument check costs on an 8-byte call.
    tiny, tiny_out = np.ones(2, np.float32), np.empty(2, np.float32)
    unchecked = pyallreduce.init(check=False)
    with_check = timed(world, lambda: comm.allreduce(tiny, out=tiny_out), 200, 20)
    without = timed(world, lambda: unchecked.allreduce(tiny, out=tiny_out), 200, 20)
    if rank == 0:
        print(f"argument check at 8 B: {with_check * 1e6:.1f} us with, {without * 1e6:.1f} us without")
        print("result check:", "all correct" if failures == 0 else f"{failures} size(s) WRONG")
    unchecked.free()
    comm.free()
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
