"""Turning measurements into the nccl-tests style table, the closing summary
with the ratios between implementations, a JSON record and a plot."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field

from .timing import median_range

PLACEMENTS = ("out", "in")


@dataclass
class Measurement:
    """One implementation, one size, one placement, one run."""

    impl: str
    bytes: int
    count: int
    type: str
    redop: str
    placement: str  # "out" (out of place) or "in" (in place)
    run: int
    samples_us: list[float]  # per iteration, the slowest rank's time
    time_us: float  # median of samples_us
    p99_us: float
    algbw: float  # GB/s (1e9)
    busbw: float
    wrong: int  # elements differing from the reference, summed over ranks and check iterations
    model_us: float | None  # the cost model's prediction from this run's calibration
    memory_limit_pct: float  # the memory-bandwidth bound's time as a percentage of time_us
    link_limit_pct: float | None = None  # across hosts, the link bound's time as a percentage of time_us


@dataclass
class Skip:
    impl: str
    reason: str


@dataclass
class Results:
    header: dict
    measurements: list[Measurement] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)

    def median(self, impl: str, nbytes: int, placement: str, attribute: str) -> float | None:
        """Median over runs of one attribute (time_us, busbw, ...)."""
        values = [getattr(m, attribute) for m in self.of(impl, nbytes, placement)]
        return statistics.median(values) if values else None

    def of(self, impl: str, nbytes: int, placement: str) -> list[Measurement]:
        return [m for m in self.measurements if (m.impl, m.bytes, m.placement) == (impl, nbytes, placement)]

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(
                {"header": self.header, "measurements": [asdict(m) for m in self.measurements],
                 "skipped": [asdict(s) for s in self.skips]},
                f, indent=1,
            )


def bus_factor(world_size: int) -> float:
    """busbw = algbw * 2(p-1)/p: the share of the data each rank must send and
    receive in any allreduce (nccl-tests' convention); 1 at p = 1."""
    return 2 * (world_size - 1) / world_size if world_size > 1 else 1.0


# ---- the table ----------------------------------------------------------------
_SIDE = f"{'time':>9} {'p99':>9} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"


def table_header() -> str:
    return "\n".join([
        f"#{'':>50}  {'out-of-place':^40}  {'':>14}  {'in-place':^40}",
        f"# {'size':>11} {'count':>11} {'type':>8} {'redop':>5} {'impl':>18}  {_SIDE}  {'model':>6} {'mem%':>5} {'link%':>5}  {_SIDE}",
        f"# {'(B)':>11} {'(elements)':>11} {'':>8} {'':>5} {'':>18}  {'(us)':>9} {'(us)':>9} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}  {'(us)':>6} {'':>5} {'':>5}  "
        f"{'(us)':>9} {'(us)':>9} {'(GB/s)':>7} {'(GB/s)':>7}",
    ])


def _side(results: Results, impl: str, nbytes: int, placement: str) -> str:
    rows = results.of(impl, nbytes, placement)
    med = lambda a: results.median(impl, nbytes, placement, a)  # noqa: E731
    wrong = sum(m.wrong for m in rows)
    return f"{med('time_us'):>9.1f} {med('p99_us'):>9.1f} {med('algbw'):>7.2f} {med('busbw'):>7.2f} {wrong:>6}"


def table_row(results: Results, impl: str, nbytes: int) -> str:
    first = results.of(impl, nbytes, "out")[0]
    model = results.median(impl, nbytes, "out", "model_us") if first.model_us is not None else None
    model_text = f"{model:>6.1f}" if model is not None else f"{'-':>6}"
    limit = results.median(impl, nbytes, "out", "memory_limit_pct")
    link = results.median(impl, nbytes, "out", "link_limit_pct") if first.link_limit_pct is not None else None
    link_text = f"{link:>5.0f}" if link is not None else f"{'-':>5}"
    return (f"  {nbytes:>11} {first.count:>11} {first.type:>8} {first.redop:>5} {impl:>18}  "
            f"{_side(results, impl, nbytes, 'out')}  {model_text} {limit:>5.0f} {link_text}  "
            f"{_side(results, impl, nbytes, 'in')}")


# ---- the summary ---------------------------------------------------------------
def _per_run_ratio(results: Results, nbytes: int, numerator: str, denominator: list[str]) -> list[float]:
    """Per run: numerator's out-of-place time over the fastest of `denominator`."""
    ratios = []
    for run in sorted({m.run for m in results.measurements}):
        def time_of(impl: str) -> float | None:
            found = [m.time_us for m in results.of(impl, nbytes, "out") if m.run == run]
            return found[0] if found else None

        top = time_of(numerator)
        bottoms = [t for t in map(time_of, denominator) if t is not None]
        if top is not None and bottoms and min(bottoms) > 0:
            ratios.append(top / min(bottoms))
    return ratios


def summary(results: Results, impls: list[str], ours: list[str], peers: list[str]) -> str:
    """Average busbw per implementation (as nccl-tests ends), then per size:
    how many times faster "auto" is than each peer, how close it is to the
    memory-bandwidth bound, and "auto" against the best fixed algorithm. Each
    ratio is a median over runs, with the range across runs in brackets."""
    sizes = sorted({m.bytes for m in results.measurements})
    lines = []
    for impl in impls:
        busbws = [results.median(impl, n, pl, "busbw") for n in sizes for pl in PLACEMENTS]
        busbws = [b for b in busbws if b is not None]
        if busbws:
            lines.append(f"# {impl:>18}: avg busbw {statistics.mean(busbws):7.2f} GB/s, #wrong {sum(m.wrong for m in results.measurements if m.impl == impl)}")
    fixed = [a for a in ours if a != "auto"]
    present_peers = [p for p in peers if any(m.impl == p for m in results.measurements)]
    if "auto" not in impls:
        return "\n".join(lines)
    runs = len({m.run for m in results.measurements})
    lines.append(f"#\n# speed-up of auto (out of place; peer time / auto time, median over {runs} run(s) [range]);")
    across_hosts = any(m.link_limit_pct is not None for m in results.measurements)
    lines.append("# mem%: the memory-bandwidth bound as a share of auto's time; auto/best: auto's time over the best "
                 "fixed algorithm's, best: that algorithm (fastest median)"
                 + ("; link%: the link bound as a share of auto's time" if across_hosts else ""))
    columns = [f"vs {p}" for p in present_peers] + ["mem%"] + (["link%"] if across_hosts else []) + ["auto/best"]
    lines.append(f"# {'size (B)':>11}  " + "  ".join(f"{c:>22}" for c in columns) + f"  {'best':>18}")
    present_fixed = [a for a in fixed if a in impls]
    for n in sizes:
        cells = [median_range([1 / r for r in _per_run_ratio(results, n, "auto", [p])]) for p in present_peers]
        cells.append(median_range([m.memory_limit_pct for m in results.of("auto", n, "out")]))
        if across_hosts:
            cells.append(median_range([m.link_limit_pct for m in results.of("auto", n, "out")
                                       if m.link_limit_pct is not None]))
        cells.append(median_range(_per_run_ratio(results, n, "auto", present_fixed)) if present_fixed else "-")
        times = {a: results.median(a, n, "out", "time_us") for a in present_fixed}
        best = min((t, a) for a, t in times.items() if t is not None)[1] if any(times.values()) else "-"
        lines.append(f"  {n:>11}  " + "  ".join(f"{c:>22}" for c in cells) + f"  {best:>18}")
    return "\n".join(lines)


# ---- the plot ------------------------------------------------------------------
def plot(results: Results, impls: list[str], ours: list[str], path: str) -> None:
    """Ours drawn solid, peers dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({m.bytes for m in results.measurements})
    fig, (bw_axis, time_axis) = plt.subplots(1, 2, figsize=(13, 5))
    for impl in impls:
        points = [(n, results.median(impl, n, "out", "busbw"), results.median(impl, n, "out", "time_us")) for n in sizes]
        points = [pt for pt in points if pt[1] is not None]
        if not points:
            continue
        style = "-" if impl in ours else "--"
        bw_axis.plot([pt[0] for pt in points], [pt[1] for pt in points], style, marker="o", label=impl)
        time_axis.plot([pt[0] for pt in points], [pt[2] for pt in points], style, marker="o", label=impl)
    header = results.header
    for axis, ylabel in ((bw_axis, "busbw (GB/s)"), (time_axis, "time (us, median of slowest rank)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("message size (bytes)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.set_yscale("log")
    bw_axis.legend()
    fig.suptitle(f"allreduce, {header['world_size']} ranks, {header['type']} {header['redop']}, out of place "
                 f"({header['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
