"""Collectives microbenchmark: pyallreduce's algorithms and their peers, side by side in one run.

    mpiexec -n 2 pyallreduce-bench -b 8 -e 256M -f 4 -n 20 -N 3 --json out.json --plot out.png
    mpiexec -n 2 python -m pyallreduce.bench --collective allgather ...
    mpiexec -n 2 python -m pyallreduce.bench ...     # the same program

--collective picks allreduce (the default), reduce_scatter, allgather or
broadcast; -d and -o take "all" too (every dtype, every op, one table each).
Columns follow nccl-tests: size (the larger buffer: an allgather's output, a
reduce-scatter's input), count, type, redop, then for out-of-place and
in-place calls the time, its 99th percentile, algbw = size/time and busbw =
algbw times nccl-tests' factor of the collective (allreduce 2(p-1)/p,
reduce_scatter and allgather (p-1)/p, broadcast 1) in GB/s (1e9), and
#wrong, the elements that differ from a float64 reference. Beside them, the
cost model's prediction (from the constants pyallreduce.tune measures at the
start: inside a host, and between hosts where there are several), mem%: the time a memory-bandwidth bound
allows (the bytes that must cross one rank's memory bus, 4x the message for
an allreduce and 2x for the others, at the a += b rate measured at the start
on all ranks at once) as a share of the measured time, and across hosts
link%: the time the link bound allows (the bus factor's bytes with hosts in
place of ranks through each host's link, at the measured rate between hosts)
as a share of the measured time. The time is, with --stat median (the
default), the median over iterations of the slowest rank, each iteration
timed alone after a barrier; with --stat nccl, nccl-tests' figure: the -n
iterations run back to back after a barrier, their mean per rank, averaged
across ranks (p99 is then that mean too). With -N/--run_cycles N the whole
sweep is repeated N times, interleaved, and the table shows medians over the
cycles; the closing summary gives ratios with their range across cycles, and
a row whose times spread by more than a fifth across cycles is flagged as
noisy.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import traceback

import numpy as np
from mpi4py import MPI

from .. import DTYPES, OPS, build_info, init
from .._communicator import abort_mpi_job
from .._optional import require
from . import calibration, data, implementations, report, timing
from .collectives import COLLECTIVES, Collective, calls
from .sizes import parse_size, sweep


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pyallreduce-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("8"), help="smallest message (default 8)")
    parser.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"), help="largest message (default 64M)")
    parser.add_argument("-f", "--stepfactor", type=int, default=4, help="size multiplier between steps (default 4)")
    parser.add_argument("-n", "--iters", type=int, default=20, help="timed iterations per size (default 20)")
    parser.add_argument("-w", "--warmup_iters", type=int, default=3, help="untimed iterations first (default 3)")
    parser.add_argument("-c", "--check", type=int, default=1, help="iterations checked against the reference (default 1)")
    parser.add_argument("--collective", default="allreduce", choices=tuple(COLLECTIVES), help="(default allreduce)")
    parser.add_argument("-d", "--datatype", default="float32", choices=(*DTYPES, "all"))
    parser.add_argument("-o", "--op", default="sum", choices=(*OPS, "all"),
                        help="the reduction (allreduce, reduce_scatter)")
    parser.add_argument("--stat", default="median", choices=timing.STATISTICS,
                        help="median: of the slowest rank over iterations timed alone (default); nccl: nccl-tests' "
                             "mean of back-to-back iterations, averaged across ranks")
    parser.add_argument("-r", "--root", type=int, default=0, help="broadcast's root (default 0)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where the buffers live (cuda: one GPU per rank, from LOCAL_RANK or the launcher's "
                             "local rank; ranks may share one over PYALLREDUCE_CUDA_TRANSPORT=mpi)")
    parser.add_argument("--impl", help="comma-separated, from pyallreduce's algorithms of the collective, "
                                       f"{implementations.BACKEND} (torch.distributed on pyallreduce's backend) "
                                       f"and {', '.join(implementations.PEERS)} (default: all)")
    timing.add_run_cycles(parser, default=1)
    parser.add_argument("--json", metavar="FILE", help="write every sample and the set-up to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="draw busbw and time against size per implementation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if args.stepfactor < 2 or args.iters < 1 or args.warmup_iters < 0 or args.check < 0 or args.run_cycles < 1:
        parser.error("need -f >= 2, -n >= 1, -w >= 0, -c >= 0 and -N >= 1")
    if not 0 < args.minbytes <= args.maxbytes:
        parser.error("need 0 < -b <= -e")
    return args


def itemsize(dtype: str) -> int:
    return np.dtype("float16" if dtype == "bfloat16" else dtype).itemsize


def tables(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (dtype, op) of each table: -d and -o, "all" expanded; one op,
    "none", for a collective that does not reduce."""
    dtypes = DTYPES if args.datatype == "all" else (args.datatype,)
    ops = (OPS if args.op == "all" else (args.op,)) if COLLECTIVES[args.collective].reduces else ("none",)
    return [(dtype, op) for dtype in dtypes for op in ops]


def _device_name(device: str) -> str:
    if device != "cuda":
        return "cpu"
    import torch

    return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"


def header(args: argparse.Namespace, world: MPI.Comm, cal: calibration.Calibration) -> dict:
    info = build_info()
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "world_size": world.size,
        "collective": args.collective,
        "type": args.datatype,
        "redop": args.op if COLLECTIVES[args.collective].reduces else "none",
        "pyallreduce": info["version"],
        "mpi": info["mpi_library_version"].splitlines()[0],
        "mpi4py": info["mpi4py_version"],
        "torch": torch_version,
        "device": _device_name(args.device),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "calibration": cal.as_dict(),
        "args": vars(args),
    }


def measure(world, impl, collective, views, args, op, run, cal, predict_us) -> list[report.Measurement]:
    """Times and checks one implementation at one size, in each placement."""
    p = world.size
    measurements = []
    for placement, (send, recv, prepare) in views.items():
        call = implementations.Call(send, recv, op, placement == "in", args.root)
        samples = 1e6 * timing.time_calls(lambda: impl.run(collective.name, call), args.iters,  # noqa: B023
                                          warmup=args.warmup_iters, device=args.device, world=world, prepare=prepare,
                                          statistic=args.stat)
        count = max(len(send), len(recv))
        wrong = 0
        for _ in range(args.check):
            if prepare is not None:
                prepare()
            result = impl.run(collective.name, call)
            wrong += data.count_wrong(result.native, collective.name, op, args.datatype, p, world.rank, args.root,
                                      block=count // p)
        wrong = world.allreduce(wrong, op=MPI.SUM)
        nbytes = count * args.itemsize
        median = float(np.median(samples))
        algbw = nbytes / median / 1e3 if median > 0 else 0.0
        algorithm = impl.model_algorithm(collective.name, nbytes)
        link_limit_s = cal.link_limit_s(collective, nbytes)
        measurements.append(report.Measurement(
            impl=impl.name, bytes=nbytes, count=count, type=args.datatype, redop=op,
            placement=placement, run=run, samples_us=samples.round(3).tolist(), time_us=median,
            p99_us=float(np.percentile(samples, 99)), algbw=algbw, busbw=algbw * collective.bus_factor(p), wrong=wrong,
            model_us=predict_us(algorithm, nbytes) if algorithm is not None else None,
            memory_limit_pct=100 * cal.memory_limit_s(collective, nbytes) * 1e6 / median if median > 0 else 0.0,
            link_limit_pct=100 * link_limit_s * 1e6 / median if median > 0 and link_limit_s is not None else None,
        ))
    return measurements


def row_counts(collective: Collective, args: argparse.Namespace, world_size: int) -> list[int]:
    """The element count of each row of the sweep: whole elements, and a
    whole number per rank where the collective has blocks (nccl-tests'
    rounding); none left empty."""
    counts = []
    for nbytes in sweep(args.minbytes, args.maxbytes, args.stepfactor):
        count = nbytes // args.itemsize
        if collective.blocks:
            count -= count % world_size
        if count > 0 and count not in counts:
            counts.append(count)
    return counts


def benchmark(args: argparse.Namespace) -> None:
    """The benchmark (collective over MPI.COMM_WORLD): one calibration, then
    a table per (dtype, op)."""
    world = MPI.COMM_WORLD
    rank0 = world.rank == 0
    say = functools.partial(print, flush=True) if rank0 else (lambda *a, **k: None)
    if args.device == "cuda":
        from ..cuda import set_local_device

        set_local_device()
    comm = init()
    collective = COLLECTIVES[args.collective]
    if not 0 <= args.root < world.size:
        raise SystemExit(f"--root {args.root} is not a rank of {world.size}")

    cal = calibration.calibrate(world, comm)
    model = cal.model()

    def predict_us(algorithm, nbytes: int) -> float:
        return model.predict(algorithm, nbytes, comm.hosts, comm.ring_segment_bytes, collective.core) * 1e6

    requested = [s.strip() for s in args.impl.split(",") if s.strip()] if args.impl else implementations.names(args.collective)
    impls, notes = implementations.make(requested, args.collective, comm, world, args.device)
    if args.device == "cuda":
        notes.insert(0, f"buffers on {_device_name(args.device)}; pyallreduce's CUDA transport: "
                        f"{comm.cuda_transport or 'not loaded yet'}")
    every_table = tables(args)
    total_wrong = 0
    for dtype, op in every_table:
        table_args = argparse.Namespace(**{**vars(args), "datatype": dtype, "op": op, "itemsize": itemsize(dtype)})
        suffix = f"_{dtype}_{op}" if len(every_table) > 1 else ""
        total_wrong += run_table(table_args, world, collective, impls, notes, cal, predict_us, suffix)
    for impl in reversed(impls):
        impl.close()
    comm.free()
    if total_wrong:
        raise SystemExit(1)


def _with_suffix(path: str, suffix: str) -> str:
    """out.json with suffix _float32_sum: out_float32_sum.json."""
    stem, extension = os.path.splitext(path)
    return stem + suffix + extension


def run_table(args, world, collective, impls, notes, cal, predict_us, suffix: str) -> int:
    """One table: every size for one dtype and op, with its summary, JSON and
    plot (their paths with `suffix`). Returns the wrong elements."""
    rank0 = world.rank == 0
    say = functools.partial(print, flush=True) if rank0 else (lambda *a, **k: None)
    op = args.op
    results = report.Results(header(args, world, cal))
    h = results.header
    say(f"# pyallreduce {h['pyallreduce']} bench, {args.collective}: {world.size} ranks on {h['host']} "
        f"({h['machine']}), {h['date']}")
    say(f"# {h['mpi']}; mpi4py {h['mpi4py']}, torch {h['torch']}, numpy {h['numpy']}, python {h['python']}")
    for line in cal.describe():
        say(f"# {line}")
    for note in notes:
        say(f"# {note}")
    say(f"# busbw = algbw * {collective.bus_share}" + (f"; root {args.root}" if args.collective == "broadcast" else ""))
    say(f"# time: {timing.STATISTICS[args.stat]}; {args.iters} iterations, {args.warmup_iters} untimed first, "
        f"{args.run_cycles} cycle(s)")
    runnable = []
    for impl in impls:
        reason = impl.unsupported(args.collective, args.datatype, op)
        if reason:
            results.skips.append(report.Skip(impl.name, reason))
            say(f"# {impl.name} skipped: {reason}")
        else:
            runnable.append(impl)

    counts = row_counts(collective, args, world.size)
    progress = None
    if rank0 and not args.no_progress:
        progress = require("tqdm", "bench", "the benchmark's progress bar (--no-progress goes without)").tqdm(
            total=len(counts) * len(runnable) * args.run_cycles, unit="run", leave=False, dynamic_ncols=True)
    say(report.table_header())
    for count in counts:
        send_count, recv_count = collective.counts(count, world.size)
        allocate = functools.partial(implementations.allocate, dtype=args.datatype, device=args.device)
        send, recv = allocate(send_count), allocate(recv_count)
        data.fill(send.native, world.rank, op)
        views = calls(collective, send, recv, allocate, world.rank)
        for run in range(args.run_cycles):
            for impl in runnable:
                if progress is not None:
                    progress.set_description(f"{count * args.itemsize} B {impl.name}")
                results.measurements.extend(measure(world, impl, collective, views, args, op, run, cal, predict_us))
                if progress is not None:
                    progress.update()
        if progress is not None:
            progress.clear()
        if rank0:
            nbytes = count * args.itemsize
            for impl in runnable:
                say(report.table_row(results, impl.name, nbytes, collective.placements))
            noisy = report.noisy(results, [impl.name for impl in runnable], nbytes)
            if noisy:
                say(f"#   noisy: {noisy}")
    if progress is not None:
        progress.close()

    names = [impl.name for impl in runnable]
    say(report.summary(results, names, collective.placements))
    wrong = sum(m.wrong for m in results.measurements)
    if rank0:
        if args.json:
            results.write_json(_with_suffix(args.json, suffix))
        if args.plot:
            report.plot(results, names, _with_suffix(args.plot, suffix))
    say(f"# result check: {'all correct' if wrong == 0 else f'{wrong} elements WRONG'}")
    return wrong


def main() -> None:
    """``pyallreduce-bench`` and ``python -m pyallreduce.bench``, under mpiexec."""
    args = parse_args()
    # Every rank checks the optional packages it will need before any
    # collective, so a missing one stops all ranks alike.
    if not args.no_progress:
        require("tqdm", "bench", "the benchmark's progress bar (--no-progress goes without)")
    if args.plot:
        require("matplotlib", "bench", "--plot")
    try:
        benchmark(args)
    except Exception:
        # One rank failing must not leave the others waiting in a collective.
        traceback.print_exc()
        abort_mpi_job(f"pyallreduce.bench: rank {MPI.COMM_WORLD.rank} failed; aborting the MPI job")


if __name__ == "__main__":
    main()
