"""The CUDA reduction kernels that the algorithms' reduce steps run, against
the GPU's device-to-device copy bandwidth (needs a GPU).

    python -m pyallreduce.bench.cuda_reduce [-n 50] [-N 5] [--sizes 16M,256M,1G] [--json FILE]

For each dtype and size, out = left + right (reads 2n bytes, writes n) and the
in-place left += right are timed with CUDA events on one stream, beside a
device-to-device copy of the same n bytes (reads n, writes n) in the same run.
Bandwidth counts the bytes each moves; the ratio kernel/copy is the share of
the copy rate a reduce step reaches (target: at least 80%). Median over
iterations, then median [range] over runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .._optional import require

require("torch", "torch", "pyallreduce.bench.cuda_reduce")

import torch  # noqa: E402

from .sizes import parse_size  # noqa: E402
from .timing import add_run_cycles, median_range, median_seconds  # noqa: E402

DTYPES = ("float32", "float16", "bfloat16", "float64")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--iters", type=int, default=50)
    add_run_cycles(parser, default=5)
    parser.add_argument("--sizes", default="16M,256M,1G", help="bytes per operand, comma-separated")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("pyallreduce.bench.cuda_reduce: no GPU visible")
    from .. import _cuda

    stream = torch.cuda.current_stream().cuda_stream
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.iters} iterations x {args.run_cycles} runs")
    print(f"# {'dtype':>8} {'bytes':>12} {'copy GB/s':>10} {'out GB/s':>9} {'out/copy':>15} {'inplace GB/s':>12} {'inplace/copy':>15}")
    rows = []
    for dtype in DTYPES:
        for nbytes in sizes:
            element = torch.empty((), dtype=getattr(torch, dtype)).element_size()
            left = torch.rand(nbytes // element, device="cuda").to(getattr(torch, dtype))
            right, out = torch.rand_like(left, dtype=torch.float32).to(left.dtype), torch.empty_like(left)
            # Each call and the bytes it moves, in units of n.
            calls = {"copy": (lambda: out.copy_(left), 2),
                     "out": (lambda: _cuda.combine(left, right, out, "sum", stream), 3),
                     "inplace": (lambda: _cuda.combine(out, right, out, "sum", stream), 3)}
            runs = {name: [] for name in calls}
            for _ in range(args.run_cycles):  # the three take turns within each run
                for name, (call, moved) in calls.items():
                    runs[name].append(moved * nbytes / median_seconds(call, args.iters, device="cuda") / 1e9)
            copy, ours, inplace = (float(np.median(runs[k])) for k in ("copy", "out", "inplace"))
            out_ratios = [o / c for o, c in zip(runs["out"], runs["copy"])]
            inplace_ratios = [o / c for o, c in zip(runs["inplace"], runs["copy"])]
            row = dict(dtype=dtype, bytes=nbytes, copy_gbps=copy, out_gbps=ours, inplace_gbps=inplace,
                       out_ratio=float(np.median(out_ratios)), out_ratio_range=[min(out_ratios), max(out_ratios)],
                       inplace_ratio=float(np.median(inplace_ratios)),
                       inplace_ratio_range=[min(inplace_ratios), max(inplace_ratios)], runs=runs)
            rows.append(row)
            print(f"  {dtype:>8} {nbytes:>12} {copy:>10.0f} {ours:>9.0f} "
                  f"{median_range(out_ratios, width=6)} {inplace:>12.0f} {median_range(inplace_ratios, width=6)}",
                  flush=True)
    worst = min(min(r["out_ratio"], r["inplace_ratio"]) for r in rows)
    print(f"# lowest share of the copy rate: {worst:.2f} (target >= 0.80: {'met' if worst >= 0.8 else 'MISSED'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
