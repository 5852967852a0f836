"""Bad input raises a clear Python exception on every rank, never a hang."""

import threading
import time

import numpy as np
import pytest
import torch
import torch.distributed

import pyallreduce
from pyallreduce.testing import LocalWorldError, spawn_local
from collective_checks import carry_limit


def errors_on_every_rank(world_size, call, **options):
    """Runs call(comm) on each rank; returns each rank's exception (asserts each raised)."""

    def each_rank(comm):
        try:
            call(comm)
        except (TypeError, ValueError) as exc:
            return exc
        return None

    errors = spawn_local(world_size, each_rank, **options)
    assert all(e is not None for e in errors), f"some ranks did not raise: {errors}"
    return errors


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_different_counts(world_size):
    errors = errors_on_every_rank(world_size, lambda c: c.allreduce(torch.zeros(10 + (c.rank == 1))))
    for e in errors:
        assert "different element counts" in str(e) and "smallest 10, largest 11" in str(e)


@pytest.mark.parametrize("algorithm", ["auto", "recursive_doubling"])
def test_different_counts_across_the_carried_size(algorithm):
    """Small calls travel inside the argument check; a rank whose call is one
    float too long for it must still meet the others' check and raise with them."""
    def call(comm):
        largest = carry_limit(comm) // 4
        comm.allreduce(torch.zeros(largest + (comm.rank == 2)), algorithm=algorithm)

    errors = errors_on_every_rank(3, call)
    assert all("different element counts" in str(e) for e in errors)
    largest = spawn_local(3, lambda comm: carry_limit(comm))[0] // 4
    assert all(f"smallest {largest}, largest {largest + 1}" in str(e) for e in errors)


def test_different_dtypes():
    errors = errors_on_every_rank(3, lambda c: c.allreduce(torch.zeros(4, dtype=torch.float64 if c.rank == 2 else torch.float32)))
    assert all("different dtypes" in str(e) and "(float32 and float64)" in str(e) for e in errors)


def test_different_ops():
    errors = errors_on_every_rank(2, lambda c: c.allreduce(torch.zeros(4), op="max" if c.rank else "sum"))
    assert all("different ops" in str(e) for e in errors)


def test_different_algorithms():
    errors = errors_on_every_rank(2, lambda c: c.allreduce(torch.zeros(4), algorithm="ring" if c.rank else "halving_doubling"))
    assert all("different algorithms" in str(e) for e in errors)


@pytest.mark.parametrize(
    "bad_input, message",
    [
        (lambda: torch.zeros(4, 4).t(), "not contiguous"),
        (lambda: torch.zeros(4, dtype=torch.complex64), "dtype torch.complex64"),
        (lambda: np.zeros(4, dtype=np.uint8), "dtype uint8"),
        (lambda: np.zeros(8)[::2], "not C-contiguous"),
        (lambda: np.frombuffer(b"\0" * 32, dtype=np.float32), "read-only"),
        (lambda: "not an array", "must be a torch tensor"),
        (lambda: torch.zeros(4).to_sparse(), "only dense"),
    ],
)
def test_bad_buffer_on_one_rank(bad_input, message):
    def call(comm):
        comm.allreduce(bad_input() if comm.rank == 1 else torch.zeros(4))

    errors = errors_on_every_rank(3, call)
    assert message in str(errors[1])
    for rank in (0, 2):
        assert "rejected on rank 1" in str(errors[rank])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"op": "mean"}, "unknown op 'mean'"),
        ({"op": torch.distributed.ReduceOp.BXOR}, "unknown op 'BXOR'"),
        ({"op": 3}, "op must be a string"),
        ({"algorithm": "tree"}, "unknown allreduce algorithm 'tree'"),
        ({"out": torch.zeros(5)}, "out has 5 elements"),
        ({"out": torch.zeros(4, dtype=torch.float64)}, "out has dtype float64"),
    ],
)
def test_bad_arguments_on_one_rank(kwargs, message):
    errors = errors_on_every_rank(2, lambda c: c.allreduce(torch.zeros(4), **(kwargs if c.rank == 0 else {})))
    assert message in str(errors[0])
    assert "rejected on rank 0" in str(errors[1])


def test_partially_overlapping_out():
    def call(comm):
        buffer = torch.zeros(8)
        comm.allreduce(buffer[:6], out=buffer[2:])

    errors = errors_on_every_rank(2, call)
    assert all("partially overlaps" in str(e) for e in errors)


def test_freed_communicator():
    def each_rank(comm):
        comm.free()
        with pytest.raises(ValueError, match="freed"):
            comm.allreduce(torch.zeros(3))
        with pytest.raises(ValueError, match="freed"):
            comm.rank  # noqa: B018
        return repr(comm)

    assert spawn_local(2, each_rank) == ["<pyallreduce.Communicator (freed)>"] * 2


def test_unchecked_calls_still_reduce():
    def each_rank(comm):
        assert not comm.check
        return comm.allreduce(torch.ones(5))

    assert all(torch.equal(r, torch.full((5,), 3.0)) for r in spawn_local(3, each_rank, check=False))


def test_unchecked_mismatch_cannot_hang_the_local_world():
    """With the check off a count mismatch is the caller's bug; the in-process
    transport still reports it instead of hanging."""

    def each_rank(comm):
        comm.allreduce(torch.ones(5 + comm.rank), algorithm="recursive_doubling")

    with pytest.raises(LocalWorldError):
        spawn_local(2, each_rank, check=False)


def test_a_failing_rank_aborts_the_others():
    def each_rank(comm):
        if comm.rank == 2:
            raise KeyError("boom")
        comm.allreduce(torch.ones(10))  # would wait for rank 2 forever

    with pytest.raises(LocalWorldError, match="rank 2 raised KeyError") as info:
        spawn_local(4, each_rank)
    assert isinstance(info.value.__cause__, KeyError)


def test_world_size_is_validated():
    with pytest.raises(ValueError, match="world_size"):
        spawn_local(0, lambda comm: None)


def test_communicator_needs_an_mpi4py_intracommunicator():
    with pytest.raises(TypeError, match="intracommunicator"):
        pyallreduce.Communicator("COMM_WORLD")


@pytest.mark.parametrize("op, expected", [
    ("SUM", 6.0), ("Avg", 2.0), ("product", 6.0), ("PROD", 6.0),
    (torch.distributed.ReduceOp.SUM, 6.0), (torch.distributed.ReduceOp.AVG, 2.0),
    (torch.distributed.ReduceOp.MIN, 1.0), (torch.distributed.ReduceOp.MAX, 3.0),
    (torch.distributed.ReduceOp.PRODUCT, 6.0), (torch.distributed.ReduceOp(torch.distributed.ReduceOp.MAX), 3.0),
])
def test_ops_in_any_case_and_as_torch_reduce_ops(op, expected):
    def each_rank(comm):
        x = torch.full((5,), float(comm.rank + 1))
        comm.allreduce(x, op=op, algorithm="RING")
        return x.tolist()

    assert spawn_local(3, each_rank) == [[expected] * 5] * 3


@pytest.mark.parametrize("bucket_bytes, error, message", [
    (0, ValueError, "bucket_bytes must be a positive number of bytes"),
    (-5, ValueError, "bucket_bytes must be a positive number of bytes"),
    (2**70, ValueError, "bucket_bytes must be a positive number of bytes"),
    ("25M", TypeError, "bucket_bytes must be an int, not str"),
    (True, TypeError, "bucket_bytes must be an int, not bool"),
])
def test_bad_bucket_bytes_on_one_rank(bucket_bytes, error, message):
    def call(comm):
        comm.allreduce_coalesced([torch.ones(3), torch.ones(5)], bucket_bytes=bucket_bytes if comm.rank == 1 else 64)

    errors = errors_on_every_rank(3, call)
    assert isinstance(errors[1], error) and message in str(errors[1])
    assert all("rejected on rank 1" in str(errors[r]) and "bucket_bytes" in str(errors[r]) for r in (0, 2))


@pytest.mark.parametrize("tensors, message", [(None, "not NoneType"), ("abc", "not str"),
                                              ([torch.ones(3), None], "tensors[1]")])
def test_a_bad_tensor_list_on_one_rank(tensors, message):
    errors = errors_on_every_rank(2, lambda c: c.allreduce_coalesced(tensors if c.rank == 0 else [torch.ones(3)] * 2))
    assert message in str(errors[0])
    assert "rejected on rank 0" in str(errors[1])


def test_a_bad_buffer_given_to_allreduce_async_on_one_rank():
    def call(comm):
        x = np.zeros(8)[::2] if comm.rank == 2 else np.zeros(4)
        comm.allreduce_async(x).result(timeout=60)

    errors = errors_on_every_rank(3, call)
    assert "not C-contiguous" in str(errors[2])
    assert all("rejected on rank 2" in str(errors[r]) for r in (0, 1))


class _OddTensor(torch.Tensor):
    def data_ptr(self):
        return "not an address"


def test_a_tensor_whose_attributes_do_not_convert_on_one_rank():
    def call(comm):
        x = torch.ones(4)
        comm.allreduce(x.as_subclass(_OddTensor) if comm.rank == 0 else x)

    errors = errors_on_every_rank(2, call)
    assert "rejected on rank 0" in str(errors[1])


def test_free_while_another_threads_call_runs_raises_and_the_call_completes():
    partner_may_start = threading.Event()

    def each_rank(comm):
        x = torch.ones(6)
        if comm.rank == 1:
            partner_may_start.wait(60)
            comm.allreduce(x)
            return x.tolist()
        caller = threading.Thread(target=comm.allreduce, args=(x,))
        caller.start()
        time.sleep(1.0)  # the caller is in the call by now, waiting for rank 1
        with pytest.raises(ValueError, match="another thread's call is running"):
            comm._core.free()
        partner_may_start.set()
        caller.join(60)
        return x.tolist()

    assert spawn_local(2, each_rank) == [[2.0] * 6] * 2


def test_a_ring_segment_larger_than_any_vector():
    def each_rank(comm):
        x = torch.arange(10, dtype=torch.float64) + comm.rank
        comm.allreduce(x, algorithm="ring")
        return x.tolist()

    expected = [3 * i + 3.0 for i in range(10)]
    assert spawn_local(3, each_rank, ring_segment_bytes=2**62) == [expected] * 3


def test_an_in_place_allreduce_bumps_the_autograd_version_like_torch_in_place_ops():
    def each_rank(comm):
        leaf = torch.ones(4, requires_grad=True)
        saved = leaf * 2
        loss = (saved * saved).sum()  # saves `saved` for backward
        comm.allreduce(saved.detach())  # a view of the same tensor, written through raw pointers
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
        x, out, listed = torch.ones(3), torch.zeros(3), [torch.ones(2), torch.ones(5)]
        versions = x._version, out._version, [t._version for t in listed]
        comm.allreduce(x, out=out)
        comm.allreduce_coalesced(listed)
        return (x._version - versions[0], out._version - versions[1],
                [t._version - v for t, v in zip(listed, versions[2])])

    assert spawn_local(2, each_rank) == [(0, 1, [1, 1])] * 2
