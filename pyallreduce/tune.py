"""The cost model's constants, measured where the job runs.

    mpiexec -n 4 python -m pyallreduce.tune          # measure, and save for this layout
    python -m pyallreduce.tune --predict --hosts 32 --ranks-per-host 8 --link 10gbit

Measured first: the largest message that goes faster through the
shared-memory pipes than through MPI inside a host, from recursive-doubling
allreduces of 1 KiB to 1 MiB timed both ways in turn. Then, per level,
over pyallreduce's own transport (so inside a host through the pipes up to
that size): between two ranks of one host, and between ranks of two hosts,
alpha (half an 8-byte ping-pong), beta (a 16 MiB ping-pong, per byte)
and the rendezvous step (the largest jump in one-way time from one message
size to the next that the extra bytes do not explain); gamma from a float32
a += b on every rank at once; the size from which out-of-place calls are
faster storing their outputs around the cache (streaming stores), from ring
allreduces of 1 MiB to 64 MiB timed both ways in turn; and the ring's
pipeline, the segment size and then the number of receives posted ahead
that make a 64 MiB ring allreduce fastest. The file
(``PYALLREDUCE_TUNE_FILE``, default ``~/.cache/pyallreduce/tune.json``) keeps
one entry per layout ("2 hosts x 4 ranks"): every communicator over MPI
whose layout has an entry uses it for ``algorithm="auto"``, its streaming
stores, its ring pipeline and its pipes' limit, rank 0's copy on every rank
(each unless set by its variable, or the segment by ``ring_segment_bytes=``).
Where the layout has none, ``auto`` uses the built-in constants
(``_C.CostModel.default()``: shared memory measured on one host, a
conservative guess for the network), streaming stores start at a quarter of
the last-level cache, the ring pipelines 1 MiB segments four receives
ahead, and the pipes carry messages up to their capacity (64 KiB); a level
the layout lacks (between hosts, on one host) keeps its built-in constants.

``--predict`` prints the model's time per algorithm for a layout of any size,
from the file's entry for it if there is one, else the built-in constants,
with ``--link`` setting the bandwidth between hosts: where halving/doubling
or hierarchical overtakes the ring, on clusters larger than this one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from . import _C
from ._options import cache_dir

PING_PONG_SMALL_BYTES = 8
PING_PONG_LARGE_BYTES = 16 << 20
# Where MPI libraries switch from eager sends to rendezvous: from 1 KiB (shared
# memory) to a few MiB (UCX over TCP). Only sizes whose bytes cost at most
# RENDEZVOUS_SEARCH_ALPHAS alphas are searched: beyond, a handshake is lost in
# the transfer time, and the one-way time rises with the caches instead.
RENDEZVOUS_SEARCH_BYTES = [1 << k for k in range(10, 23)]
RENDEZVOUS_SEARCH_ALPHAS = 4
NO_RENDEZVOUS_BYTES = 2**63 - 1
GAMMA_TEST_BYTES = 64 << 20
STREAMING_SEARCH_BYTES = [1 << k for k in range(20, 27)]
# Each size is timed both ways over about this many bytes, and at least
# STREAMING_REPEATS times: small sizes differ by little, and a few calls are
# a coin toss on a busy machine.
STREAMING_SAMPLE_BYTES = 512 << 20
STREAMING_REPEATS = 5
NEVER_STREAM_BYTES = 2**63 - 1
# The ring's pipeline is searched on an in-place allreduce this large: even
# at 64 ranks each chunk is a MiB, several segments of most sizes searched.
RING_PIPELINE_TEST_BYTES = 64 << 20
RING_SEGMENT_SEARCH_BYTES = [1 << k for k in range(16, 25, 2)]  # 64 KiB .. 16 MiB
RING_WINDOW_SEARCH = [1, 2, 4, 8, 16]
RING_PIPELINE_REPEATS = 5
# The shared-memory pipes' limit is searched over these sizes, each timed
# over about SHM_SAMPLE_BYTES per sample, SHM_REPEATS samples each way.
SHM_SEARCH_BYTES = [1 << k for k in range(10, 21)]  # 1 KiB .. 1 MiB
SHM_SAMPLE_BYTES = 4 << 20
SHM_REPEATS = 7
FILE_VERSION = 1


@dataclass(frozen=True)
class Link:
    """What a message costs on one level, as _C.LinkCost."""

    alpha_s: float
    beta_s_per_byte: float
    rendezvous_bytes: int = NO_RENDEZVOUS_BYTES
    rendezvous_s: float = 0.0

    def cost(self) -> _C.LinkCost:
        return _C.LinkCost(self.alpha_s, self.beta_s_per_byte, self.rendezvous_bytes, self.rendezvous_s)

    @classmethod
    def of(cls, cost: _C.LinkCost) -> Link:
        return cls(cost.alpha_s, cost.beta_s_per_byte, cost.rendezvous_bytes, cost.rendezvous_s)

    def describe(self) -> str:
        rendezvous = ("eager at every size" if self.rendezvous_bytes >= NO_RENDEZVOUS_BYTES
                      else f"rendezvous from {self.rendezvous_bytes} B, +{self.rendezvous_s * 1e6:.2f} us")
        rate = 1e-9 / self.beta_s_per_byte if self.beta_s_per_byte else float("inf")
        return f"alpha {self.alpha_s * 1e6:.2f} us, {rate:.2f} GB/s, {rendezvous}"


@dataclass(frozen=True)
class Tuning:
    """The cost model's constants for one layout, and where they came from."""

    inside: Link
    between: Link
    gamma_s_per_byte: float
    source: str  # "measured on ...", or "built-in"
    # Out-of-place calls from this size stream their outputs; None: the
    # built-in rule (a quarter of the last-level cache).
    streaming_store_bytes: int | None = None
    # The ring's segment size and receive window; None: built in.
    ring_segment_bytes: int | None = None
    ring_receive_window: int | None = None
    # The largest message through the shared-memory pipes; None: built in
    # (a pipe's capacity).
    shm_message_bytes: int | None = None

    def model(self) -> _C.CostModel:
        return _C.CostModel(self.inside.cost(), self.between.cost(), self.gamma_s_per_byte)

    @classmethod
    def built_in(cls) -> Tuning:
        model = _C.CostModel.default()
        return cls(Link.of(model.inside), Link.of(model.between), model.gamma_s_per_byte, "built-in")


def layout_key(hosts: list[int]) -> str:
    """The file's key for a layout: the number of ranks on each host, as
    "2 hosts x 4 ranks" or "2 hosts (3, 2 ranks)" (_C's own description)."""
    return _C.describe_layout(hosts)


def tune_file() -> Path:
    explicit = os.environ.get("PYALLREDUCE_TUNE_FILE", "").strip()
    if explicit:
        return Path(explicit)
    return cache_dir() / "tune.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": FILE_VERSION, "layouts": {}}
    except (OSError, ValueError) as exc:
        raise ValueError(f"pyallreduce tune file {path} cannot be read ({exc}); remove it or set "
                         "PYALLREDUCE_TUNE_FILE to another") from None
    if not isinstance(content, dict) or content.get("version") != FILE_VERSION or not isinstance(
            content.get("layouts"), dict):
        raise ValueError(f"pyallreduce tune file {path} is not a version {FILE_VERSION} tune file; run "
                         "python -m pyallreduce.tune again, or set PYALLREDUCE_TUNE_FILE to another")
    return content


def load(hosts: list[int], path: Path | None = None) -> Tuning:
    """The tuning for the layout ``hosts`` (each rank's host) from the file,
    or the built-in constants where it has none."""
    path = tune_file() if path is None else path
    entry = _read(path)["layouts"].get(layout_key(hosts))
    if entry is None:
        return Tuning.built_in()
    def optional_int(key: str) -> int | None:
        value = entry.get(key)
        return None if value is None else int(value)

    try:
        return Tuning(Link(**entry["inside"]), Link(**entry["between"]), float(entry["gamma_s_per_byte"]),
                      f"measured {entry['measured']} on {entry['machine']} ({path})",
                      optional_int("streaming_store_bytes"), optional_int("ring_segment_bytes"),
                      optional_int("ring_receive_window"), optional_int("shm_message_bytes"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"pyallreduce tune file {path}: the entry for {layout_key(hosts)} is malformed ({exc}); "
                         "run python -m pyallreduce.tune again") from None


def save(hosts: list[int], tuning: Tuning, machine: str, path: Path | None = None) -> Path:
    path = tune_file() if path is None else path
    content = _read(path)
    content["layouts"][layout_key(hosts)] = {
        "inside": asdict(tuning.inside),
        "between": asdict(tuning.between),
        "gamma_s_per_byte": tuning.gamma_s_per_byte,
        "streaming_store_bytes": tuning.streaming_store_bytes,
        "ring_segment_bytes": tuning.ring_segment_bytes,
        "ring_receive_window": tuning.ring_receive_window,
        "shm_message_bytes": tuning.shm_message_bytes,
        "measured": datetime.date.today().isoformat(),
        "machine": machine,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(content, indent=1) + "\n")
    temporary.replace(path)  # whole, even if another job writes at the same time
    return path


def _half_ping_pong(world: Any, comm: Any, a: int, b: int, nbytes: int, repeats: int) -> float:
    """Median one-way time between ranks a and b over ``comm``'s own
    transport, the path its algorithms' messages take (shared-memory pipes
    or MPI); the other ranks wait (collective over ``world``)."""
    world.Barrier()
    samples = comm._core.ping_pong(a, b, nbytes, repeats)
    return float(statistics.median(world.bcast(samples, root=a)))


def _repeats(nbytes: int) -> int:
    """Enough ping-pongs for a stable median, at most about a second's worth on a slow link."""
    return 300 if nbytes <= 64 << 10 else 30


def measure_link(world: Any, comm: Any, a: int, b: int) -> Link:
    """Alpha, beta and the rendezvous step between ranks a and b over
    ``comm`` (collective)."""
    alpha = _half_ping_pong(world, comm, a, b, PING_PONG_SMALL_BYTES, repeats=2000)
    large = _half_ping_pong(world, comm, a, b, PING_PONG_LARGE_BYTES, repeats=10)
    beta = max(large - alpha, 0.0) / PING_PONG_LARGE_BYTES
    # The step is the largest rise in one-way time from one size to the next
    # that its extra bytes do not explain. Example: if 4 KiB takes 1.6 us and
    # 8 KiB 4.4 us, the rise is 2.8 us, of which the extra 4 KiB at beta
    # explains, say, 0.3, so messages from 8 KiB on pay 2.5 us more. A rise
    # under alpha / 2 is noise, and then there is no step.
    sizes = [n for n in RENDEZVOUS_SEARCH_BYTES if n * beta <= RENDEZVOUS_SEARCH_ALPHAS * alpha]
    sizes = sizes if len(sizes) >= 2 else RENDEZVOUS_SEARCH_BYTES[:2]
    times = [_half_ping_pong(world, comm, a, b, n, _repeats(n)) for n in sizes]
    rises = [later - earlier - (larger - smaller) * beta
             for earlier, later, smaller, larger in zip(times, times[1:], sizes, sizes[1:])]
    steepest = max(range(len(rises)), key=rises.__getitem__)
    if rises[steepest] < alpha / 2:
        return Link(alpha, beta)
    return Link(alpha, beta, sizes[steepest + 1], rises[steepest])


def measure_gamma(world: Any) -> float:
    """Seconds per byte of a float32 a += b over 64 MiB on every rank at
    once: the median of the slowest rank's (collective)."""
    import numpy as np
    from mpi4py import MPI

    a = np.ones(GAMMA_TEST_BYTES // 4, np.float32)
    b = np.ones_like(a)
    samples = []
    for _ in range(7):
        world.Barrier()
        start = time.perf_counter()
        a += b
        samples.append(time.perf_counter() - start)
    slowest = np.empty(len(samples))
    world.Allreduce(np.array(samples), slowest, op=MPI.MAX)
    return float(statistics.median(slowest[1:])) / GAMMA_TEST_BYTES  # the first touches fresh pages


def measure_streaming(world: Any, comm: Any) -> tuple[int, list[tuple[int, float, float]]]:
    """The least size from which out-of-place ring allreduces over ``comm``
    are faster with streaming stores, at that size and every larger one
    searched (collective): each size timed with them on and off in turn
    (see STREAMING_SAMPLE_BYTES). NEVER_STREAM_BYTES where they do not pay
    at the largest size. Also each size's (bytes, seconds streaming, seconds
    without)."""
    import numpy as np

    core = comm._core
    kept = core.streaming_store_bytes
    timings = []
    try:
        for nbytes in STREAMING_SEARCH_BYTES:
            x = np.ones(nbytes // 4, np.float32)
            out = np.empty_like(x)

            def stream(on: bool) -> None:
                core.streaming_store_bytes = 1 if on else NEVER_STREAM_BYTES

            seconds = _time_in_turn(world, (True, False), stream,
                                    lambda: comm.allreduce(x, algorithm="ring", out=out),
                                    max(STREAMING_REPEATS, STREAMING_SAMPLE_BYTES // nbytes))
            timings.append((nbytes, seconds[True], seconds[False]))
    finally:
        core.streaming_store_bytes = kept
    threshold = NEVER_STREAM_BYTES
    for nbytes, streamed, plain in reversed(timings):
        if streamed >= plain:
            break
        threshold = nbytes
    return threshold, timings


def _size_text(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def measure_shm_limit(world: Any, comm: Any) -> tuple[int | None, dict[int, tuple[float, float]]]:
    """The largest message the shared-memory pipes should carry: the largest
    size searched (SHM_SEARCH_BYTES) at which a recursive-doubling
    allreduce over the ranks of each host, all hosts at once, ran faster
    with its messages through the pipes than through MPI, the two timed in
    turn (collective); 0 where MPI was faster at every size. (Where the two
    are close, at the small sizes, either may win a run; the largest win
    marks where the pipes' second copy starts to cost more than MPI's
    handshake.) Also each size's (seconds through the pipes, through MPI).
    None, and nothing timed, where ``comm`` has no pipes (every rank alone on
    its host, the pipes turned off, or /dev/shm too small): then nothing is
    saved and the setting stays as it is. Rank 0's host decides."""
    import numpy as np
    from mpi4py import MPI

    has_pipes = world.allreduce(comm._core.shared_memory_absent == "", op=MPI.LAND)
    if not has_pipes:
        return None, {}
    from ._communicator import Communicator

    host = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
    by_size: dict[int, tuple[float, float]] = {}
    # Without the argument check, whose frame would travel beside the data.
    with Communicator(host, check=False) as local:
        core = local._core
        for nbytes in SHM_SEARCH_BYTES:
            x = np.zeros(nbytes // 4, np.float32)
            calls = max(1, SHM_SAMPLE_BYTES // nbytes)

            def through(pipes: bool) -> None:  # alike on every rank, between calls
                core.shared_memory_message_bytes = nbytes if pipes else 0

            def call() -> None:
                for _ in range(calls):
                    local.allreduce(x, algorithm="recursive_doubling")

            seconds = _time_in_turn(world, (True, False), through, call, SHM_REPEATS)
            by_size[nbytes] = (seconds[True] / calls, seconds[False] / calls)
    host.Free()
    by_size = world.bcast(by_size, root=0)
    return max((nbytes for nbytes, (pipes, mpi) in by_size.items() if pipes < mpi), default=0), by_size


def measure_ring_pipeline(world: Any, comm: Any) -> tuple[int, int, dict[int, float], dict[int, float]]:
    """The ring's fastest segment size, then its fastest receive window at
    that size, on in-place allreduces of RING_PIPELINE_TEST_BYTES over
    ``comm`` (collective); also the seconds per call of each segment size
    and of each window searched."""
    import numpy as np

    core = comm._core
    kept = core.ring_segment_bytes, core.ring_receive_window
    x = np.zeros(RING_PIPELINE_TEST_BYTES // 4, np.float32)  # zeros: sums that stay normal numbers

    def call() -> None:
        comm.allreduce(x, algorithm="ring")

    def segment(nbytes: int) -> None:
        core.ring_segment_bytes = nbytes

    def window(receives: int) -> None:
        core.ring_receive_window = receives

    try:
        by_segment = _time_in_turn(world, RING_SEGMENT_SEARCH_BYTES, segment, call, RING_PIPELINE_REPEATS)
        fastest_segment = min(by_segment, key=by_segment.__getitem__)
        core.ring_segment_bytes = fastest_segment
        by_window = _time_in_turn(world, RING_WINDOW_SEARCH, window, call, RING_PIPELINE_REPEATS)
    finally:
        core.ring_segment_bytes, core.ring_receive_window = kept
    return fastest_segment, min(by_window, key=by_window.__getitem__), by_segment, by_window


def _time_in_turn(world: Any, settings: Any, apply: Any, call: Any, repeats: int) -> dict[Any, float]:
    """Seconds per ``call()`` under each of ``settings`` (made current by
    ``apply(setting)``), the settings taking turns ``repeats`` times after
    an untimed round (it touches fresh pages), so that a busy spell of the
    machine falls on all of them: the slowest rank's median (collective)."""
    from mpi4py import MPI

    times: dict[Any, list[float]] = {setting: [] for setting in settings}
    for round_ in range(repeats + 1):
        for setting in settings:
            apply(setting)
            world.Barrier()
            start = time.perf_counter()
            call()
            if round_ > 0:
                times[setting].append(time.perf_counter() - start)
    return {setting: world.allreduce(statistics.median(samples), op=MPI.MAX) for setting, samples in times.items()}


def measure(world: Any, comm: Any) -> Tuning:
    """Every constant of the cost model ``comm``'s layout has a level for,
    over its transport (collective over ``world``, of which ``comm`` is a
    duplicate); the others stay built in."""
    hosts = comm.hosts
    built_in = Tuning.built_in()
    by_host: dict[int, list[int]] = {}
    for rank, host in enumerate(hosts):
        by_host.setdefault(host, []).append(rank)
    shared = next((ranks for ranks in by_host.values() if len(ranks) > 1), None)
    inside = measure_link(world, comm, shared[0], shared[1]) if shared else built_in.inside
    # Each host's first rank: with several hosts, between two of them.
    firsts = [ranks[0] for ranks in by_host.values()]
    between = measure_link(world, comm, firsts[0], firsts[1]) if len(firsts) > 1 else built_in.between
    machine = f"{socket.gethostname()}, {len(by_host)} host(s)"
    return Tuning(inside, between, measure_gamma(world), f"measured {datetime.date.today()} on {machine}")


def print_constants(tuning: Tuning) -> None:
    print(f"#   inside a host: {tuning.inside.describe()}")
    print(f"#   between hosts: {tuning.between.describe()}")
    print(f"#   combine: {1e-9 / tuning.gamma_s_per_byte:.1f} GB/s")
    streaming = tuning.streaming_store_bytes
    print("#   streaming stores: " + (f"out-of-place calls from {_C.streaming_vector_bytes()} B (a quarter of the "
                                       "last-level cache, built in)" if streaming is None
                                       else "never" if streaming >= NEVER_STREAM_BYTES
                                       else f"out-of-place calls from {streaming} B"))
    segment = tuning.ring_segment_bytes
    window = tuning.ring_receive_window
    built_in = _C.CommunicatorOptions()
    print(f"#   ring pipeline: segments of {built_in.ring_segment_bytes if segment is None else segment} B"
          f"{' (built in)' if segment is None else ''}, {built_in.ring_receive_window if window is None else window} "
          f"receives ahead{' (built in)' if window is None else ''}")
    shm = tuning.shm_message_bytes
    print("#   shared-memory pipes: " + ("messages up to their capacity (built in)" if shm is None
                                         else "none" if shm == 0 else f"messages up to {shm} B"))


def link_rate_bytes_per_s(text: str) -> float:
    """A link rate such as "1gbit", "100mbit" or "25gbit" in bytes per second."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}
    lowered = text.strip().lower()
    for unit, scale in units.items():
        if lowered.endswith(unit):
            try:
                return float(lowered[: -len(unit)]) * scale / 8
            except ValueError:
                break
    raise argparse.ArgumentTypeError(f"link rate {text!r}: expected N[k|m|g]bit, e.g. 10gbit")


def predict_table(tuning: Tuning, hosts: list[int], sizes: list[int], segment: int) -> list[str]:
    """The model's time per algorithm at each size, and the fastest."""
    model = tuning.model()
    algorithms = list(_C.algorithms_of(_C.Collective.allreduce))
    layout = sorted(set(hosts))
    if len(layout) == 1 or len(hosts) == len(layout):
        algorithms = [a for a in algorithms if a != _C.Algorithm.hierarchical]  # there it is a flat one
    lines = [f"{'bytes':>12} " + " ".join(f"{a.name:>18}" for a in algorithms) + "  fastest"]
    for n in sizes:
        times = [model.predict(a, n, hosts, segment) for a in algorithms]
        best = min(range(len(times)), key=times.__getitem__)
        name = algorithms[best].name
        if algorithms[best] == _C.Algorithm.hierarchical:
            name += f" ({model.between_hosts(n, hosts, segment)[0].name} between hosts)"
        lines.append(f"{n:>12} " + " ".join(f"{t * 1e6:>15.1f} us" for t in times) + f"  {name}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pyallreduce.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--predict", action="store_true",
                        help="print the model's predictions for --hosts x --ranks-per-host instead of measuring")
    parser.add_argument("--hosts", type=int, default=2, help="--predict: hosts (default 2)")
    parser.add_argument("--ranks-per-host", type=int, default=1, help="--predict: ranks on each host (default 1)")
    parser.add_argument("--link", type=link_rate_bytes_per_s, default=None,
                        help="--predict: the bandwidth between hosts, e.g. 1gbit (default: the tuned or built-in)")
    parser.add_argument("--file", type=Path, default=None, help="the tune file (default: PYALLREDUCE_TUNE_FILE or "
                        "~/.cache/pyallreduce/tune.json)")
    parser.add_argument("--no-save", action="store_true", help="measure and print, but leave the file alone")
    args = parser.parse_args(argv)

    if args.predict:
        if args.hosts < 1 or args.ranks_per_host < 1 or args.hosts * args.ranks_per_host > 1 << 20:
            parser.error("--hosts and --ranks-per-host must be at least 1, and at most 2^20 ranks in all")
        hosts = [h for h in range(args.hosts) for _ in range(args.ranks_per_host)]
        tuning = load(hosts, args.file)
        if args.link is not None:
            between = Link(tuning.between.alpha_s, 1 / args.link, tuning.between.rendezvous_bytes,
                           tuning.between.rendezvous_s)
            tuning = replace(tuning, between=between, source=tuning.source + ", --link")
        print(f"# {layout_key(hosts)}; constants {tuning.source}")
        print_constants(tuning)
        sizes = [8 << (2 * k) for k in range(15)]  # 8 B .. 2 GiB
        segment = tuning.ring_segment_bytes or _C.CommunicatorOptions().ring_segment_bytes
        for line in predict_table(tuning, hosts, sizes, segment):
            print(line)
        return

    from mpi4py import MPI

    import pyallreduce

    world = MPI.COMM_WORLD
    with pyallreduce.Communicator(world) as comm:
        hosts = comm.hosts
        shm, by_size = measure_shm_limit(world, comm)
        if shm is not None:
            comm._core.shared_memory_message_bytes = shm
        streaming, timings = measure_streaming(world, comm)
        segment, window, by_segment, by_window = measure_ring_pipeline(world, comm)
        tuning = replace(measure(world, comm), streaming_store_bytes=streaming, ring_segment_bytes=segment,
                         ring_receive_window=window, shm_message_bytes=shm)
    if world.rank == 0:
        print(f"# {layout_key(hosts)}; {tuning.source}")
        print_constants(tuning)
        print("#   out-of-place ring allreduce, streaming / plain stores: " + ", ".join(
            f"{nbytes >> 20} MiB {streamed / plain:.2f}" for nbytes, streamed, plain in timings))
        print(f"#   in-place ring allreduce of {RING_PIPELINE_TEST_BYTES >> 20} MiB, time / the fastest, by segment: "
              + ", ".join(f"{nbytes >> 10} KiB {seconds / min(by_segment.values()):.2f}"
                          for nbytes, seconds in by_segment.items()))
        print(f"#   ... by receive window, {segment >> 10} KiB segments: " + ", ".join(
            f"{receives} {seconds / min(by_window.values()):.2f}" for receives, seconds in by_window.items()))
        if by_size:
            print("#   recursive-doubling allreduce inside a host, shared-memory pipes / MPI: " + ", ".join(
                f"{_size_text(nbytes)} {pipes / mpi:.2f}" for nbytes, (pipes, mpi) in by_size.items()))
        if not args.no_save:
            print(f"# saved for {layout_key(hosts)} in {save(hosts, tuning, tuning.source.split(' on ', 1)[1], args.file)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
