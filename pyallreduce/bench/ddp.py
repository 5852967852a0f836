"""Gradient synchronization benchmark on ResNet-50's parameter shapes.

    mpiexec -n 2 python -m pyallreduce.bench.ddp [-n 10] [-w 3] [-N 3] [--json FILE]

Two comparisons, each measured side by side in one run (the configurations
take turns within every run; medians over iterations, then the median and
[range] over runs):

1. One DDP iteration (forward, backward, gradient sync) of a model with
   ResNet-50's 161 parameter tensors (25.6M float32), with pyallreduce's hook,
   without a hook on a process group of backend "pyallreduce" (the torch
   backend), with torch's default allreduce hook on gloo, and without DDP
   (compute only).
   The sync overhead is an iteration's time minus the compute-only time.
   The model's forward is one cheap product per parameter, so backward fills
   the gradient buckets one after another, as a network's does, without
   spending seconds on convolutions.
2. The same 161 gradients reduced by comm.allreduce_coalesced against one
   MPI_Allreduce per tensor (mpi4py, in place).

--timeline N adds, after the runs, N more iterations with pyallreduce's hook
that print on rank 0 when each bucket was handed to the hook and when its
allreduce completed, counted from the start of the iteration: where the sync
overhead goes.
"""

from __future__ import annotations

import argparse
import json
import time

from .._optional import require

require("torch", "torch", "pyallreduce.bench.ddp")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from mpi4py import MPI  # noqa: E402
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from .. import distributed, init  # noqa: E402
from ..ddp import HookState, allreduce_hook  # noqa: E402
from .resnet50 import parameter_shapes  # noqa: E402
from .timing import add_run_cycles, median_range, median_seconds  # noqa: E402


class ShapesModel(torch.nn.Module):
    """ResNet-50's parameters; the loss is sum_i w_i * sum(p_i^2) for the
    input weights w, so each gradient is 2 * w_i * p_i."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.01) for shape in parameter_shapes()
        )

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return sum(w[i] * p.square().sum() for i, p in enumerate(self.weights))


def ddp_step(model: torch.nn.Module, w: torch.Tensor):
    def step() -> None:
        model.zero_grad(set_to_none=False)
        model(w).backward()

    return step


def print_timeline(comm, w: torch.Tensor, world: MPI.Comm, iterations: int) -> None:
    """Runs a DDP model whose hook is pyallreduce's, timed: prints each
    bucket's hand-over and completion times for ``iterations`` iterations (rank 0)."""
    events: list[tuple[int, int, float, float]] = []

    def timed_hook(state, bucket):  # unannotated: DDP checks annotations, and these would be strings here
        handed = time.perf_counter()
        index, nbytes = bucket.index(), bucket.buffer().numel() * bucket.buffer().element_size()

        def completed(future: torch.futures.Future) -> torch.Tensor:
            events.append((index, nbytes, handed, time.perf_counter()))
            return future.value()

        return allreduce_hook(state, bucket).then(completed)

    timed = DDP(ShapesModel())
    timed.register_comm_hook(HookState(comm), timed_hook)
    for i in range(iterations + 2):  # the first two rebuild DDP's buckets
        events.clear()
        world.Barrier()
        start = time.perf_counter()
        ddp_step(timed, w)()
        total = time.perf_counter() - start
        if i >= 2 and world.rank == 0:
            print(f"timeline: iteration {i - 1} took {1e3 * total:.1f} ms")
            for index, nbytes, handed, done in events:
                print(f"  bucket {index}: {nbytes / 2**20:5.1f} MiB handed over at {1e3 * (handed - start):6.1f} ms, "
                      f"reduced at {1e3 * (done - start):6.1f} ms ({1e3 * (done - handed):5.1f} ms later)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--iterations", type=int, default=10)
    parser.add_argument("-w", "--warmup", type=int, default=3)
    add_run_cycles(parser, default=3)
    parser.add_argument("--json", metavar="FILE", help="write every run's numbers here")
    parser.add_argument("--timeline", type=int, default=0, metavar="N",
                        help="then print when each bucket was handed over and reduced, for N iterations")
    args = parser.parse_args()

    world = MPI.COMM_WORLD
    torch.set_num_threads(1)
    distributed.init_process_group("gloo")
    comm = init()
    w = torch.linspace(1.0, 2.0, len(parameter_shapes()))

    compute_only = ShapesModel()
    ours = DDP(ShapesModel())
    ours.register_comm_hook(HookState(comm), allreduce_hook)
    backend = DDP(ShapesModel(), process_group=dist.new_group(backend="pyallreduce"))
    gloo = DDP(ShapesModel())
    gloo.register_comm_hook(None, default_hooks.allreduce_hook)
    gradients = [p.detach().clone() for p in compute_only.weights]
    arrays = [g.numpy() for g in gradients]

    def per_tensor_mpi() -> None:
        for array in arrays:
            world.Allreduce(MPI.IN_PLACE, array)

    configurations = {
        "iteration, pyallreduce hook": ddp_step(ours, w),
        "iteration, pyallreduce backend": ddp_step(backend, w),
        "iteration, gloo default hook": ddp_step(gloo, w),
        "iteration, compute only": ddp_step(compute_only, w),
        "allreduce_coalesced": lambda: comm.allreduce_coalesced(gradients),
        "MPI_Allreduce per tensor": per_tensor_mpi,
    }
    results: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(args.run_cycles):
        for name, step in configurations.items():
            results[name].append(1e3 * median_seconds(step, args.iterations, warmup=args.warmup, world=world))

    compute = results["iteration, compute only"]
    overhead_ours = [a - c for a, c in zip(results["iteration, pyallreduce hook"], compute)]
    overhead_gloo = [a - c for a, c in zip(results["iteration, gloo default hook"], compute)]
    overhead_backend = [a - c for a, c in zip(results["iteration, pyallreduce backend"], compute)]
    overhead_ratio = [o / g for o, g in zip(overhead_ours, overhead_gloo)]
    backend_ratio = [o / g for o, g in zip(overhead_backend, overhead_gloo)]
    coalesced_speedup = [m / c for m, c in zip(results["MPI_Allreduce per tensor"], results["allreduce_coalesced"])]
    if world.rank == 0:
        print(f"# ResNet-50 shapes: {len(gradients)} tensors, {sum(g.numel() for g in gradients):,} float32; "
              f"{world.size} ranks; median over {args.iterations} iterations, then median [range] over {args.run_cycles} runs")
        for name, runs in results.items():
            print(f"{name:34s} {median_range(runs, ' ms', 9)}")
        print(f"{'sync overhead, pyallreduce hook':34s} {median_range(overhead_ours, ' ms', 9)}")
        print(f"{'sync overhead, pyallreduce backend':34s} {median_range(overhead_backend, ' ms', 9)}")
        print(f"{'sync overhead, gloo default hook':34s} {median_range(overhead_gloo, ' ms', 9)}")
        print(f"{'overhead ours / gloo':34s} {median_range(overhead_ratio, width=9)}   (target <= 0.5)")
        print(f"{'overhead backend / gloo':34s} {median_range(backend_ratio, width=9)}   (target <= 0.5)")
        print(f"{'coalesced speed-up vs per-tensor':34s} {median_range(coalesced_speedup, width=9)}   (target >= 3)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": world.size, "runs_ms": results, "overhead_ratio": overhead_ratio,
                           "backend_overhead_ratio": backend_ratio,
                           "coalesced_speedup": coalesced_speedup}, f, indent=1)
    if args.timeline:
        print_timeline(comm, w, world, args.timeline)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
