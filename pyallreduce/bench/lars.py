"""One LARS step over ResNet-50's parameter shapes: pyallreduce's fused step
against a per-parameter PyTorch loop, a torch._foreach version and (where timm
is installed) timm's Lars, and the memory bandwidth it reaches.

    python -m pyallreduce.bench.lars [-n 20] [-N 5] [--device cpu|cuda] [--json FILE]

The implementations take turns within every run (median over iterations,
then median [range] over runs). Bandwidth: the fused step must read the
weights, gradients and momentum (12 B per float32 parameter) and write the
weights and momentum (8 B), 20 B per parameter in all, with the weights'
norms handed on from the previous step (carry_norms) or not; the achieved rate is
compared with the measured rate of the memory system, `a += b` over the same
tensors on the CPU (3 x 4 B per element moved, as STREAM counts its add), a
device-to-device copy on the GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .._optional import require

require("torch", "torch", "pyallreduce.bench.lars")

import torch  # noqa: E402

from ..optim import LARS  # noqa: E402
from .resnet50 import parameter_shapes  # noqa: E402
from .timing import add_run_cycles, median_range, median_seconds  # noqa: E402

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-5, trust_coefficient=0.001)
FUSED_BYTES_PER_PARAM = 20


def per_parameter_loop(params, grads, buffers):
    """LARS as the common PyTorch implementations write it: one parameter at a
    time, a handful of tensor operations each."""
    lr, momentum, decay, eta = HYPER["lr"], HYPER["momentum"], HYPER["weight_decay"], HYPER["trust_coefficient"]

    def step():
        for p, g, v in zip(params, grads, buffers):
            if p.ndim > 1:
                w_norm, g_norm = torch.norm(p), torch.norm(g)
                ratio = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / (g_norm + decay * w_norm),
                                    torch.ones_like(w_norm))
                d = g.add(p, alpha=decay).mul_(ratio * lr)
            else:
                d = g.mul(lr)
            v.mul_(momentum).add_(d)
            p.sub_(v)

    return step


def foreach_version(params, grads, buffers):
    """The same update with torch._foreach_* over all tensors at once, into a
    scratch list allocated once (so no step pays for fresh pages)."""
    lr, momentum, decay, eta = HYPER["lr"], HYPER["momentum"], HYPER["weight_decay"], HYPER["trust_coefficient"]
    order = [i for i, p in enumerate(params) if p.ndim > 1] + [i for i, p in enumerate(params) if p.ndim <= 1]
    adapted = sum(params[i].ndim > 1 for i in order)
    ps, gs, vs = ([xs[i] for i in order] for xs in (params, grads, buffers))
    ds = [torch.empty_like(g) for g in gs]

    def step():
        w_norms = torch.stack(torch._foreach_norm(ps[:adapted]))
        g_norms = torch.stack(torch._foreach_norm(gs[:adapted]))
        ratios = torch.where((w_norms > 0) & (g_norms > 0), eta * w_norms / (g_norms + decay * w_norms), 1.0)
        torch._foreach_copy_(ds, gs)
        torch._foreach_add_(ds[:adapted], ps[:adapted], alpha=decay)
        torch._foreach_mul_(ds[:adapted], list((lr * ratios).unbind()))
        torch._foreach_mul_(ds[adapted:], lr)
        torch._foreach_mul_(vs, momentum)
        torch._foreach_add_(vs, ds)
        torch._foreach_sub_(ps, vs)

    return step


def fused(params, grads, carry_norms=False):
    weights = [torch.nn.Parameter(p) for p in params]
    for w, g in zip(weights, grads):
        w.grad = g
    return LARS(weights, **HYPER, carry_norms=carry_norms).step


def timm_lars(params, grads):
    from timm.optim import Lars

    weights = [torch.nn.Parameter(p) for p in params]
    for w, g in zip(weights, grads):
        w.grad = g
    return Lars(weights, **HYPER).step


def memory_rate(params, grads):
    """Bytes per second the memory system moves: a += b on the CPU (three
    streams), a device-to-device copy on a GPU (two)."""
    if params[0].is_cuda:
        copies = [p.clone() for p in params]

        def step():
            torch._foreach_copy_(copies, params)

        return step, 2
    return (lambda: torch._foreach_add_(params, grads)), 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--iterations", type=int, default=20)
    parser.add_argument("-w", "--warmup", type=int, default=3)
    add_run_cycles(parser, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="FILE", help="write every run's numbers here")
    args = parser.parse_args()
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    shapes = parameter_shapes()
    count = sum(torch.Size(s).numel() for s in shapes)

    def tensors(scale: float):
        return [(torch.randn(s, generator=generator) * scale).to(device) for s in shapes]

    # Each implementation steps its own copy: they all update in place.
    steps = {
        "pyallreduce fused": fused(tensors(0.05), tensors(0.01)),
        "fused, carried norms": fused(tensors(0.05), tensors(0.01), carry_norms=True),
        "per-parameter loop": per_parameter_loop(tensors(0.05), tensors(0.01), tensors(0.0)),
        "torch._foreach": foreach_version(tensors(0.05), tensors(0.01), tensors(0.0)),
    }
    try:
        steps["timm Lars"] = timm_lars(tensors(0.05), tensors(0.01))
    except ImportError:
        pass
    rate_step, streams = memory_rate(tensors(1.0), tensors(1.0))
    steps["memory rate"] = rate_step

    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.run_cycles):
        for name, step in steps.items():
            times[name].append(median_seconds(step, args.iterations, device=device.type))

    bandwidth = [streams * 4 * count / t for t in times["memory rate"]]
    fused_rate = [FUSED_BYTES_PER_PARAM * count / t for t in times["pyallreduce fused"]]
    share = [100 * f / b for f, b in zip(fused_rate, bandwidth)]
    carried_share = [100 * FUSED_BYTES_PER_PARAM * count / t / b
                     for t, b in zip(times["fused, carried norms"], bandwidth)]
    vs_loop = [f / n for f, n in zip(times["pyallreduce fused"], times["per-parameter loop"])]
    print(f"# one LARS step over ResNet-50's {len(shapes)} tensors, {count:,} float32 parameters on {device}; "
          f"{torch.get_num_threads()} threads; median over {args.iterations} steps, then median [range] over "
          f"{args.run_cycles} runs")
    for name, values in times.items():
        print(f"{name:24s} {median_range([1e3 * t for t in values], ' ms', 8)}")
    print(f"{'memory bandwidth':24s} {median_range([b / 1e9 for b in bandwidth], ' GB/s', 8)}")
    print(f"{'fused step moves':24s} {median_range([r / 1e9 for r in fused_rate], ' GB/s', 8)} "
          f"({FUSED_BYTES_PER_PARAM} B per parameter)")
    target = 80 if device.type == "cuda" else 60
    print(f"{'fused / bandwidth':24s} {median_range(share, ' %', 8)}   (target >= {target} %)")
    print(f"{'carried norms / bandw.':24s} {median_range(carried_share, ' %', 8)}   (target >= {target} %)")
    print(f"{'fused / per-param loop':24s} {median_range(vs_loop, width=8)}   (target <= 0.5)")
    if "timm Lars" in times:
        vs_timm = [t / f for f, t in zip(times["pyallreduce fused"], times["timm Lars"])]
        print(f"{'speed-up over timm Lars':24s} {median_range(vs_timm, width=8)}   (target >= 5 on a GPU)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": str(device), "threads": torch.get_num_threads(), "parameters": count,
            "runs_s": times, "bandwidth_bytes_per_s": bandwidth, "fused_share_of_bandwidth_percent": share,
            "carried_norms_share_of_bandwidth_percent": carried_share,
            "fused_over_per_parameter_loop": vs_loop,
        }, indent=1))


if __name__ == "__main__":
    main()
