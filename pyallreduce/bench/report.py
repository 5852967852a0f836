"""Turning measurements into the nccl-tests style table, the closing summary
with the ratios between implementations, a JSON record and a plot.

    python -m pyallreduce.bench.report RESULTS.json...   # a saved run's summary again
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass, field

from .implementations import BACKEND, PEERS
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

    @classmethod
    def read_json(cls, path: str) -> Results:
        """What write_json wrote."""
        with open(path) as f:
            content = json.load(f)
        return cls(content["header"], [Measurement(**m) for m in content["measurements"]],
                   [Skip(**s) for s in content["skipped"]])

    def impls(self) -> list[str]:
        """The implementations measured, in the order they first ran."""
        return list(dict.fromkeys(m.impl for m in self.measurements))

    def placements(self) -> list[str]:
        return [p for p in PLACEMENTS if any(m.placement == p for m in self.measurements)]


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
    if not rows:  # a collective without this placement
        return f"{'-':>9} {'-':>9} {'-':>7} {'-':>7} {'-':>6}"
    med = lambda a: results.median(impl, nbytes, placement, a)  # noqa: E731
    wrong = sum(m.wrong for m in rows)
    return f"{med('time_us'):>9.1f} {med('p99_us'):>9.1f} {med('algbw'):>7.2f} {med('busbw'):>7.2f} {wrong:>6}"


def table_row(results: Results, impl: str, nbytes: int, placements: tuple[str, ...]) -> str:
    """One size of one implementation; the model, mem% and link% of its
    first placement."""
    main = placements[0]
    first = results.of(impl, nbytes, main)[0]
    model = results.median(impl, nbytes, main, "model_us") if first.model_us is not None else None
    model_text = f"{model:>6.1f}" if model is not None else f"{'-':>6}"
    limit = results.median(impl, nbytes, main, "memory_limit_pct")
    link = results.median(impl, nbytes, main, "link_limit_pct") if first.link_limit_pct is not None else None
    link_text = f"{link:>5.0f}" if link is not None else f"{'-':>5}"
    return (f"  {nbytes:>11} {first.count:>11} {first.type:>8} {first.redop:>5} {impl:>18}  "
            f"{_side(results, impl, nbytes, 'out')}  {model_text} {limit:>5.0f} {link_text}  "
            f"{_side(results, impl, nbytes, 'in')}")


# A row is noisy where its time spreads by more than this share of its median:
# across cycles (max - min), or with one cycle, between the median and the 99th
# percentile of the iterations (twice that share, as a tail is expected).
NOISY_SPREAD = 0.2


def noisy(results: Results, impls: list[str], nbytes: int) -> str:
    """The implementations whose times at this size spread too much to
    trust, as "ring in place 35% across cycles, ...", or ""."""
    flagged = []
    for impl in impls:
        for placement in PLACEMENTS:
            rows = results.of(impl, nbytes, placement)
            if not rows:
                continue
            times = [m.time_us for m in rows]
            middle = statistics.median(times)
            if len(rows) > 1:
                spread, limit, what = max(times) - min(times), NOISY_SPREAD, "across cycles"
            else:
                spread, limit, what = rows[0].p99_us - middle, 2 * NOISY_SPREAD, "p99 over median"
            if middle > 0 and spread / middle > limit:
                where = "out of place" if placement == "out" else "in place"
                flagged.append(f"{impl} {where} {100 * spread / middle:.0f}% {what}")
    return ", ".join(flagged)


# ---- the summary ---------------------------------------------------------------
def _per_run_times(results: Results, nbytes: int, impl: str, placement: str) -> dict[int, float]:
    return {m.run: m.time_us for m in results.of(impl, nbytes, placement)}


def _per_run_ratio(results: Results, nbytes: int, numerator: str, denominator: list[str], placement: str) -> list[float]:
    """Per run: numerator's time over the fastest of `denominator`."""
    tops = _per_run_times(results, nbytes, numerator, placement)
    bottoms = [_per_run_times(results, nbytes, d, placement) for d in denominator]
    ratios = []
    for run, top in sorted(tops.items()):
        fastest = min((b[run] for b in bottoms if run in b), default=None)
        if fastest:
            ratios.append(top / fastest)
    return ratios


def _per_run_difference(results: Results, nbytes: int, minuend: str, subtrahend: str, placement: str) -> list[float]:
    first = _per_run_times(results, nbytes, minuend, placement)
    second = _per_run_times(results, nbytes, subtrahend, placement)
    return [first[run] - second[run] for run in sorted(first) if run in second]


def summary(results: Results, impls: list[str], placements: tuple[str, ...] | list[str]) -> str:
    """Average busbw per implementation (as nccl-tests ends), then for each
    of ``placements`` ("out", "in") and each size: how many times faster
    "auto" is than each peer, how close it is to the
    memory-bandwidth bound, "auto" against the best fixed algorithm, and what
    torch's layer adds to auto (pyallreduce's backend under
    torch.distributed, less auto's time, in us and as a share). torch's
    layer is compared in place where the collective has that form: torch has
    no out-of-place all_reduce, so its out-of-place time holds a copy of the
    input that no backend could avoid. Each figure is a median over runs,
    with the range across runs in brackets."""
    sizes = sorted({m.bytes for m in results.measurements})
    lines = []
    for impl in impls:
        busbws = [results.median(impl, n, pl, "busbw") for n in sizes for pl in PLACEMENTS]
        busbws = [b for b in busbws if b is not None]
        if busbws:
            lines.append(f"# {impl:>18}: avg busbw {statistics.mean(busbws):7.2f} GB/s, #wrong {sum(m.wrong for m in results.measurements if m.impl == impl)}")
    if "auto" not in impls:
        return "\n".join(lines)
    lines.extend(_speed_ups(results, impls, placement) for placement in placements)
    return "\n".join(lines)


def _speed_ups(results: Results, impls: list[str], placement: str) -> str:
    """summary's table for one placement."""
    sizes = sorted({m.bytes for m in results.measurements})
    lines = []
    peers = [i for i in impls if i in PEERS]
    fixed = [i for i in impls if i not in (*PEERS, BACKEND, "auto")]
    backend = BACKEND in impls
    torch_placement = "in" if any(m.placement == "in" for m in results.measurements) else placement
    runs = len({m.run for m in results.measurements})
    where = "out of place" if placement == "out" else "in place"
    lines.append(f"#\n# speed-up of auto ({where}; peer time / auto time, median over {runs} cycle(s) [range]);")
    across_hosts = any(m.link_limit_pct is not None for m in results.measurements)
    lines.append("# mem%: the memory-bandwidth bound as a share of auto's time; auto/best: auto's time over the best "
                 "fixed algorithm's, best: that algorithm (fastest median)"
                 + ("; link%: the link bound as a share of auto's time" if across_hosts else "")
                 + (f"; torch +us, torch/auto: {BACKEND}'s time less auto's, and over auto's"
                    f"{' (in place)' if torch_placement != placement else ''}" if backend else ""))
    columns = ([f"vs {p}" for p in peers] + ["mem%"] + (["link%"] if across_hosts else []) + ["auto/best"]
               + (["torch +us", "torch/auto"] if backend else []))
    lines.append(f"# {'size (B)':>11}  " + "  ".join(f"{c:>22}" for c in columns) + f"  {'best':>18}")
    for n in sizes:
        cells = [median_range([1 / r for r in _per_run_ratio(results, n, "auto", [p], placement)]) for p in peers]
        cells.append(median_range([m.memory_limit_pct for m in results.of("auto", n, placement)]))
        if across_hosts:
            cells.append(median_range([m.link_limit_pct for m in results.of("auto", n, placement)
                                       if m.link_limit_pct is not None]))
        cells.append(median_range(_per_run_ratio(results, n, "auto", fixed, placement)) if fixed else "-")
        if backend:
            cells.append(median_range(_per_run_difference(results, n, BACKEND, "auto", torch_placement)))
            cells.append(median_range(_per_run_ratio(results, n, BACKEND, ["auto"], torch_placement)))
        times = {a: results.median(a, n, placement, "time_us") for a in fixed}
        best = min((t, a) for a, t in times.items() if t is not None)[1] if any(times.values()) else "-"
        lines.append(f"  {n:>11}  " + "  ".join(f"{c:>22}" for c in cells) + f"  {best:>18}")
    return "\n".join(lines)


# ---- the plot ------------------------------------------------------------------
def _bytes_label(nbytes: float, _position: object = None) -> str:
    """8 B, 64 KiB, 256 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes:g} B"


def plot(results: Results, impls: list[str], path: str) -> None:
    """busbw and time against size, out of place beside in place (where the
    collective has both); ours drawn solid, peers dashed, and the memory
    bound (across hosts the link bound, where it is the larger) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    sizes = sorted({m.bytes for m in results.measurements})
    placements = [pl for pl in PLACEMENTS if any(m.placement == pl for m in results.measurements)]
    fig, axes = plt.subplots(2, len(placements), figsize=(7 * len(placements), 9), squeeze=False)
    header = results.header
    for column, placement in enumerate(placements):
        bw_axis, time_axis = axes[0][column], axes[1][column]
        for impl in impls:
            points = [(n, results.median(impl, n, placement, "busbw"), results.median(impl, n, placement, "time_us"))
                      for n in sizes]
            points = [pt for pt in points if pt[1] is not None]
            if not points:
                continue
            style = "--" if impl in PEERS else "-"
            bw_axis.plot([pt[0] for pt in points], [pt[1] for pt in points], style, marker="o", markersize=3,
                         label=impl)
            time_axis.plot([pt[0] for pt in points], [pt[2] for pt in points], style, marker="o", markersize=3,
                           label=impl)
        bound = _bound_points(results, sizes, placement)
        if bound:
            label = "link bound" if any(m.link_limit_pct for m in results.measurements) else "memory bound"
            time_axis.plot([n for n, _, _ in bound], [t for _, t, _ in bound], ":", color="black", label=label)
            bw_axis.plot([n for n, _, _ in bound], [b for _, _, b in bound], ":", color="black", label=label)
        where = "out of place" if placement == "out" else "in place"
        for axis, ylabel in ((bw_axis, "busbw (GB/s)"), (time_axis, "time (us)")):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.xaxis.set_major_locator(LogLocator(base=4))
            axis.xaxis.set_major_formatter(FuncFormatter(_bytes_label))
            axis.tick_params(axis="x", labelrotation=45)
            axis.set_xlabel("message size")
            axis.set_ylabel(ylabel)
            axis.set_title(where)
            axis.grid(True, which="both", alpha=0.3)
        bw_axis.legend(fontsize=8)
    fig.suptitle(f"{header['collective']}, {header['world_size']} ranks, {header['type']} {header['redop']} "
                 f"({header['date']}; time: {header['args'].get('stat', 'median')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _bound_points(results: Results, sizes: list[int], placement: str) -> list[tuple[int, float, float]]:
    """Per size, (bytes, the bound's time in us, the busbw it allows): the
    larger of the memory and link bounds, from any implementation's
    measurement (each holds the bound as a share of its own time)."""
    points = []
    for n in sizes:
        rows = [m for m in results.measurements if m.bytes == n and m.placement == placement and m.time_us > 0]
        if not rows:
            continue
        m = rows[0]
        bound_us = max(m.memory_limit_pct, m.link_limit_pct or 0.0) / 100 * m.time_us
        if bound_us > 0:
            points.append((n, bound_us, m.busbw * m.time_us / bound_us))
    return points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pyallreduce.bench.report",
                                     description="Print the closing summary of saved benchmark runs again.")
    parser.add_argument("json", nargs="+", help="files written by the benchmark's --json")
    for path in parser.parse_args(argv).json:
        results = Results.read_json(path)
        header = results.header
        print(f"# {path}: {header['collective']}, {header['world_size']} ranks on {header['host']} "
              f"({header['machine']}), {header['date']}")
        print(summary(results, results.impls(), results.placements()))


if __name__ == "__main__":
    main()
