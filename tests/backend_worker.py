"""Run by test_backend.py under mpiexec: torch.distributed on backend
"pyallreduce" (the default group), checked against the same calls on a gloo
group over the same ranks: the collectives (sync and async), the errors,
DDP without a hook, torch's own comm hooks (allreduce, fp16 compression,
PowerSGD), FSDP2 (fully_shard) and a group of some ranks. Prints one line
per rank on success."""

import abort_on_error
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

import pyallreduce.distributed

STEPS = 10


def check_collectives(gloo) -> int:
    """Every collective on pyallreduce equals the same call on gloo."""
    r, p = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(r)
    checks = 0
    for op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG, dist.ReduceOp.MIN, dist.ReduceOp.MAX, dist.ReduceOp.PRODUCT):
        for dtype in (torch.float32, torch.float64, torch.int64):
            x = (torch.rand(37, generator=generator) * 4).to(dtype) + 1
            ours, theirs = x.clone(), x.clone()
            dist.all_reduce(ours, op=op)
            if op == dist.ReduceOp.AVG:  # gloo has no AVG
                dist.all_reduce(theirs, group=gloo)
                theirs = theirs / p if dtype.is_floating_point else torch.div(theirs, p, rounding_mode="trunc")
            else:
                dist.all_reduce(theirs, op=op, group=gloo)
            torch.testing.assert_close(ours, theirs.to(dtype), rtol=1e-6, atol=0)
            checks += 1
    # async_op: Work.wait() and get_future().
    x = torch.full((5,), float(r + 1))
    work = dist.all_reduce(x, async_op=True)
    work.wait()
    assert x[0] == p * (p + 1) / 2
    assert work.is_completed() and work.is_success() and work.result()[0] is x
    future = dist.all_reduce(torch.ones(3), async_op=True).get_future()
    assert future.wait()[0][0] == p
    # A non-contiguous tensor is reduced where it lies.
    grid = torch.arange(12.0).reshape(3, 4).t()
    dist.all_reduce(grid)
    assert torch.equal(grid, torch.arange(12.0).reshape(3, 4).t() * p)
    for root in range(p):
        y = torch.arange(7.0) + r
        dist.broadcast(y, src=root)
        assert torch.equal(y, torch.arange(7.0) + root)
    outputs = [torch.empty(2, 3) for _ in range(p)]
    dist.all_gather(outputs, torch.full((2, 3), float(r)))
    assert [int(o[1, 2]) for o in outputs] == list(range(p))
    gathered = torch.empty(3 * p)
    dist.all_gather_into_tensor(gathered, torch.full((3,), float(r)))
    assert torch.equal(gathered, torch.arange(p, dtype=torch.float32).repeat_interleave(3))
    block = torch.empty(2)
    dist.reduce_scatter_tensor(block, torch.arange(2.0 * p) + r)
    assert torch.equal(block, (torch.arange(2.0 * p) * p + p * (p - 1) / 2)[2 * r:2 * r + 2])
    dist.reduce_scatter(block, [torch.full((2,), float(k + r)) for k in range(p)], op=dist.ReduceOp.MAX)
    assert block[0] == r + p - 1
    tensors = [torch.ones(3), torch.ones(2, 2)]
    dist.all_reduce_coalesced(tensors)
    assert tensors[1][1, 1] == p
    dist.barrier()
    return checks + 8


def check_errors() -> int:
    """What the backend does not do raises at once, naming it."""
    for call, fragment in [
        (lambda: dist.send(torch.ones(1), dst=(dist.get_rank() + 1) % dist.get_world_size()),
         "does not provide send"),
        (lambda: dist.all_reduce(torch.ones(1), op=dist._make_nccl_premul_sum(2.0)), "PREMUL_SUM"),
    ]:
        try:
            call()
        except (NotImplementedError, ValueError, RuntimeError) as exc:
            assert fragment in str(exc), (fragment, str(exc))
        else:
            raise AssertionError(f"expected an error with {fragment!r}")
    return 2


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 5))


def train(model: torch.nn.Module) -> tuple[list[float], list[torch.Tensor]]:
    """Losses and the last step's gradients of STEPS steps of SGD."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(1000 * dist.get_rank() + step)
        x, y = torch.randn(8, 16, generator=generator), torch.randint(0, 5, (8,), generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, [p.grad.detach().clone() for p in model.parameters()]


def identical_on_every_rank(tensors: list[torch.Tensor]) -> bool:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    everyone = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, flat)
    return all(torch.equal(flat.view(torch.int32), other.view(torch.int32)) for other in everyone)


def check_ddp(gloo) -> int:
    """DDP on pyallreduce (no hook, and torch's hooks) against DDP on gloo."""
    # Small buckets give several per step, so their order matters. PowerSGD
    # runs with DDP's default buckets: each bucket's callback waits inside
    # gloo's worker threads for another allreduce, and with more buckets
    # than gloo has threads, gloo deadlocks.
    # fp16 compression sums in float16 (eps 2^-10), in another order than
    # gloo's ring at 3 ranks and more: its tolerance is float16's.
    cases = [("no hook", None, None, 0.01, 1e-5), ("allreduce_hook", default_hooks.allreduce_hook, "group", 0.01, 1e-5),
             ("fp16_compress_hook", default_hooks.fp16_compress_hook, "group", 0.01, 1e-3),
             ("powerSGD_hook", powerSGD_hook.powerSGD_hook, "powersgd", 25, 1e-5)]
    for name, hook, state_kind, bucket_cap_mb, rtol in cases:
        results = []
        for group in (None, gloo):  # None: the default group, pyallreduce
            model = DDP(make_net(), bucket_cap_mb=bucket_cap_mb, process_group=group)
            if hook is not None:
                state = group if state_kind == "group" else powerSGD_hook.PowerSGDState(
                    process_group=group, matrix_approximation_rank=1, start_powerSGD_iter=2, random_seed=0)
                model.register_comm_hook(state, hook)
            results.append(train(model))
        (our_losses, our_grads), (gloo_losses, gloo_grads) = results
        def message(text: str, name: str = name) -> str:
            return f"{name}: {text}"

        torch.testing.assert_close(our_losses, gloo_losses, rtol=rtol, atol=rtol / 10, msg=message)
        for ours, theirs in zip(our_grads, gloo_grads, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol / 10, msg=message)
        assert identical_on_every_rank(our_grads), f"{name}: gradients differ between ranks"
    return len(cases)


def check_fsdp(gloo) -> int:
    """FSDP2 over pyallreduce (its all-gathers and reduce-scatters) trains
    with the same losses as over gloo."""
    losses = []
    for group in (dist.group.WORLD, gloo):
        model = make_net()
        mesh = DeviceMesh.from_group(group, "cpu")
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        losses.append(train(model)[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    return 1


def check_subgroup() -> int:
    """A group of the first and last ranks, on pyallreduce too."""
    p = dist.get_world_size()
    members = sorted({0, p - 1})
    group = dist.new_group(members, backend="pyallreduce")
    if dist.get_rank() in members:
        x = torch.ones(4)
        dist.all_reduce(x, group=group)
        assert x[0] == len(members), x
    dist.barrier()
    return 1


def main() -> None:
    pyallreduce.distributed.init_process_group("pyallreduce")
    assert dist.get_backend() == "pyallreduce"
    gloo = dist.new_group(backend="gloo")
    checks = check_collectives(gloo) + check_errors() + check_ddp(gloo) + check_fsdp(gloo) + check_subgroup()
    print(f"backend worker rank {dist.get_rank()}/{dist.get_world_size()}: {checks} checks passed", flush=True)


if __name__ == "__main__":
    abort_on_error.run(main)
