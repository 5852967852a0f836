"""allreduce_coalesced and the asynchronous calls, over the in-process transport."""

import pytest
import torch

from pyallreduce.testing import spawn_local
from reference import check_result, rank_inputs, result_bytes

# Sizes chosen against the bucket sizes below: empty tensors, primes, one
# larger than every bucket but the last.
COUNTS = [0, 1, 7, 1000, 0, 13, 99991, 5, 2, 0]


def per_tensor_inputs(world_size, dtype, op, seed=0):
    return [rank_inputs(world_size, dtype, op, count, seed=seed + i) for i, count in enumerate(COUNTS)]


def raised(call):
    """The exception `call` raises, or None: each rank reports its own."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the tests look at it
        return exc
    return None


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("bucket_bytes", [1, 64, 4096, 1 << 20])
@pytest.mark.parametrize("dtype, op", [("float32", "sum"), ("float16", "avg"), ("int64", "max")])
def test_coalesced_equals_the_reference_per_tensor(world_size, bucket_bytes, dtype, op):
    inputs = per_tensor_inputs(world_size, dtype, op)

    def each_rank(comm):
        tensors = [x[comm.rank].clone() for x in inputs]
        assert comm.allreduce_coalesced(tensors, op=op, bucket_bytes=bucket_bytes) == tensors
        return tensors

    per_rank = spawn_local(world_size, each_rank)
    for index, reference_inputs in enumerate(inputs):
        check_result(per_rank[0][index], reference_inputs, op)
        for rank in range(1, world_size):
            assert result_bytes(per_rank[rank][index]) == result_bytes(per_rank[0][index]), (index, rank)


def test_an_empty_list_is_a_collective_no_op():
    assert spawn_local(3, lambda comm: comm.allreduce_coalesced([])) == [[], [], []]


def test_mixed_dtypes_are_refused_on_every_rank():
    def each_rank(comm):
        second = torch.ones(3, dtype=torch.float64 if comm.rank == 0 else torch.float32)
        return raised(lambda: comm.allreduce_coalesced([torch.ones(3), second]))

    mine, theirs = spawn_local(2, each_rank)
    assert isinstance(mine, TypeError) and "tensors[1] is float64 but tensors[0] is float32" in str(mine)
    assert isinstance(theirs, ValueError) and "rejected on rank 0" in str(theirs)


@pytest.mark.parametrize("layouts", [([3, 5], [5, 3]), ([8], [4, 4]), ([2, 2], [2, 2, 0])])
def test_differently_shaped_lists_are_refused_on_every_rank(layouts):
    def each_rank(comm):
        tensors = [torch.ones(n) for n in layouts[comm.rank]]
        return raised(lambda: comm.allreduce_coalesced(tensors, bucket_bytes=1 << 20))

    for error in spawn_local(2, each_rank):
        assert isinstance(error, ValueError) and "tensor lists of different sizes" in str(error), error


def test_different_bucket_sizes_are_refused():
    def each_rank(comm):
        return raised(lambda: comm.allreduce_coalesced([torch.ones(4)] * 3, bucket_bytes=16 * (comm.rank + 1)))

    assert all("different bucket_bytes" in str(error) for error in spawn_local(2, each_rank))


def test_async_calls_complete_in_order_and_a_later_sync_call_waits_for_them():
    def each_rank(comm):
        xs = [torch.full((1000,), float(comm.rank + i)) for i in range(6)]
        futures = [comm.allreduce_async(x) for x in xs[:3]]
        futures.append(comm.allreduce_coalesced_async(xs[3:5], bucket_bytes=1 << 20))
        finished = []
        for index, future in enumerate(futures):
            future.add_done_callback(lambda _, index=index: finished.append(index))
        comm.allreduce(xs[5])  # queued behind the four above on every rank
        assert [f.result() for f in futures[:3]] == xs[:3]
        assert futures[3].result() == xs[3:5]
        return finished, [x[0].item() for x in xs]

    (finished, values), _ = spawn_local(2, each_rank)
    assert finished == [0, 1, 2, 3]
    assert values == [1.0 + 2 * i for i in range(6)]  # rank 0's i plus rank 1's i + 1


def test_an_async_error_reaches_every_rank_through_the_future():
    def each_rank(comm):
        future = comm.allreduce_async(torch.ones(10 + comm.rank))
        return raised(future.result)

    for error in spawn_local(3, each_rank):
        assert isinstance(error, ValueError) and "different element counts" in str(error), error


def test_spans_are_packed_below_the_size_the_cost_model_says_it_pays():
    """allreduce_coalesced packs a span only while the latency fusing saves
    (the model's fixed cost of a call) exceeds copying it in and out: the
    limit is a power of two, and grows with the latency."""
    from pyallreduce import _C, tune

    def each_rank(comm):
        limit = comm._core.packing_limit()
        model = tune.Tuning.built_in().model()
        inside = model.inside
        slower = _C.LinkCost(inside.alpha_s * 16, inside.beta_s_per_byte, inside.rendezvous_bytes,
                             inside.rendezvous_s)
        comm._core.set_cost_model(_C.CostModel(slower, model.between, model.gamma_s_per_byte), "16 alphas")
        return limit, comm._core.packing_limit()

    for limit, with_slower_messages in spawn_local(3, each_rank):
        assert limit >= 256 and limit & (limit - 1) == 0, limit
        assert with_slower_messages >= 4 * limit, (limit, with_slower_messages)
