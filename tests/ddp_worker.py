"""Run by test_ddp.py under mpiexec [--device cuda]: DDP with pyallreduce's
hook against DDP with torch's built-in allreduce hook on gloo, rank 0
reporting. With --device cuda the models live on GPU 0, shared by the ranks,
and pyallreduce stages the CUDA buckets through host memory over MPI."""

import hashlib
import sys

import abort_on_error
import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

import pyallreduce
import pyallreduce.distributed
from pyallreduce.ddp import HookState, allreduce_hook

world = MPI.COMM_WORLD
DEVICE = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
STEPS = 20
MICRO_BATCHES = 2  # for the no_sync() runs: gradients accumulated over two backward passes per step


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)  # every rank and every run starts from the same parameters
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5)
    ).to(DEVICE)


def batch(step: int, micro: int = 0):
    generator = torch.Generator().manual_seed(1000 * world.rank + 10 * step + micro)
    x = torch.randn(8, 16, generator=generator)
    y = torch.randint(0, 5, (8,), generator=generator)
    return x.to(DEVICE), y.to(DEVICE)


def wrap(hook, state, **ddp_options) -> DDP:
    # A small bucket cap gives several buckets, so their order matters.
    model = DDP(make_net(), bucket_cap_mb=0.01, **ddp_options)
    model.register_comm_hook(state, hook)
    return model


def train(model: DDP, steps: int, accumulate: bool = False) -> list[torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(steps):
        optimizer.zero_grad()
        if accumulate:
            with model.no_sync():
                x, y = batch(step, 0)
                (loss_fn(model(x), y) / MICRO_BATCHES).backward()
            x, y = batch(step, 1)
            (loss_fn(model(x), y) / MICRO_BATCHES).backward()
        else:
            x, y = batch(step)
            loss_fn(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def grads_after_one_backward(model: DDP) -> list[torch.Tensor]:
    x, y = batch(0)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def same_on_every_rank(tensors, what: str) -> None:
    digests = world.allgather(digest(tensors))
    assert len(set(digests)) == 1, f"{what}: ranks differ"


def assert_close(ours, theirs, what: str, rtol: float, atol: float) -> None:
    for index, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.allclose(a, b, rtol=rtol, atol=atol), (
            f"{what}: parameter {index} differs by up to {(a - b).abs().max().item():.3g}"
        )


def main() -> None:
    pyallreduce.distributed.init_process_group("gloo")
    comm = pyallreduce.init(cuda_transport="mpi")
    checks = 0

    # One backward: our gradients against the built-in hook's, to float32
    # rounding (we sum, then divide by the world size; torch divides first).
    ours = grads_after_one_backward(wrap(allreduce_hook, HookState(comm)))
    builtin = grads_after_one_backward(wrap(default_hooks.allreduce_hook, None))
    same_on_every_rank(ours, "gradients after one backward")
    assert_close(ours, builtin, "gradients after one backward", rtol=1e-5, atol=1e-6)
    checks += 1

    # 20 steps in each mode against the built-in hook in the same mode.
    modes = {
        "plain": ({}, False, {}, 1e-4),
        "no_sync accumulation": ({}, True, {}, 1e-4),
        "gradient_as_bucket_view": ({"gradient_as_bucket_view": True}, False, {}, 1e-4),
        "static_graph": ({"static_graph": True}, False, {}, 1e-4),
        "fp16 compression": ({}, False, {"compression": "fp16"}, 1e-2),
        "bf16 compression": ({}, False, {"compression": "bf16"}, 5e-2),
    }
    for name, (ddp_options, accumulate, hook_options, tolerance) in modes.items():
        ours = train(wrap(allreduce_hook, HookState(comm, **hook_options), **ddp_options), STEPS, accumulate)
        builtin = train(wrap(default_hooks.allreduce_hook, None, **ddp_options), STEPS, accumulate)
        same_on_every_rank(ours, name)
        assert_close(ours, builtin, name, rtol=tolerance, atol=tolerance / 10)
        checks += 1

    # A hook that fails on one rank (here: rank 0 sends float16, the others
    # float32) fails backward() on every rank, and nobody hangs.
    state = HookState(comm, compression="fp16" if world.rank == 0 else None)
    model = wrap(allreduce_hook, state)
    x, y = batch(0)
    try:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    except Exception as exc:  # noqa: BLE001 - the test is that it arrives
        assert "different dtypes" in str(exc), exc
    else:
        raise AssertionError("backward() succeeded although the ranks' buckets disagree")
    checks += 1

    world.Barrier()
    dist.destroy_process_group()
    if world.rank == 0:
        print(f"ddp worker: {world.size} ranks, {checks} checks passed", flush=True)


if __name__ == "__main__":
    abort_on_error.run(main)
