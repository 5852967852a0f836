"""Every algorithm x op x dtype x world size x count over the in-process
transport, against a float64 reference, with bitwise identity across ranks."""

import array
import contextlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyallreduce.testing import spawn_local
from reference import ALGORITHMS, DTYPES, FLAT_ALGORITHMS, OPS, check_result, counts_for, rank_inputs, result_bytes

WORLD_SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16]
# Small segments make the ring pipeline many segments per chunk even at 1000 elements.
SEGMENT_BYTES = 512


def run_cases(world_size, cases, ring_segment_bytes=SEGMENT_BYTES, grouped=False, device="cpu", cuda_transport=None,
              hosts=None, receive_window=None):
    """Runs each (algorithm, op, inputs, out_of_place) case on every rank of one
    in-process world (grouped: with NCCL's group semantics; device "cuda":
    on CUDA tensors, each rank on a stream of its own; hosts: each rank's
    host; receive_window: the ring's, else the default); checks each against
    the reference and bitwise identity, and that an out-of-place call leaves
    its input alone."""

    def each_rank(comm):
        if receive_window is not None:
            comm._core.ring_receive_window = receive_window
        stream = torch.cuda.Stream() if device == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            results = []
            for algorithm, op, inputs, out_of_place in cases:
                x = inputs[comm.rank].clone().to(device)
                if out_of_place:
                    out = torch.full_like(x, 7)  # stale contents must not leak into the result
                    assert comm.allreduce(x, op=op, algorithm=algorithm, out=out) is out
                    assert result_bytes(x.cpu()) == result_bytes(inputs[comm.rank]), f"{algorithm} wrote to its input"
                    results.append(out)
                else:
                    assert comm.allreduce(x, op=op, algorithm=algorithm) is x
                    results.append(x)
            return [result.cpu() for result in results]

    per_rank = spawn_local(world_size, each_rank, ring_segment_bytes=ring_segment_bytes, grouped=grouped,
                           cuda_transport=cuda_transport, timeout=60, hosts=hosts)
    for index, (algorithm, op, inputs, _) in enumerate(cases):
        rank0 = per_rank[0][index]
        try:
            check_result(rank0, inputs, op)
        except AssertionError as exc:
            raise AssertionError(f"{algorithm}: {exc}") from None
        for rank in range(1, world_size):
            assert result_bytes(per_rank[rank][index]) == result_bytes(rank0), (
                f"{algorithm} {op} {inputs.dtype} count={inputs.shape[1]}: rank {rank} differs from rank 0"
            )


def every_case(world_size):
    """Every algorithm x op x dtype x count of counts_for(world_size), in place
    and out of place on alternate counts, as cases for run_cases."""
    cases = []
    for dtype in DTYPES:
        for op in OPS:
            for index, count in enumerate(counts_for(world_size)):
                inputs = rank_inputs(world_size, dtype, op, count)
                cases += [(algorithm, op, inputs, index % 2 == 1) for algorithm in ALGORITHMS]
    return cases


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_every_algorithm_op_dtype_and_count(world_size):
    run_cases(world_size, every_case(world_size))


@pytest.mark.parametrize("world_size", [2, 3, 4, 5, 7, 9])
def test_every_algorithm_keeps_to_nccl_group_semantics(world_size):
    """In a grouped world a rank's transfers start only at its next wait and
    that wait blocks until all of them are matched, as on an NCCL stream. An
    algorithm posting a receive whose send its partner posts only after a
    later wait deadlocks here (and the world times out). Counts below the
    world size give the ring empty chunks; the 8-byte segments give it many
    segments per chunk."""
    cases = []
    for count in (0, 1, world_size - 1, 13, 1000):
        for dtype in ("float32", "float16"):
            inputs = rank_inputs(world_size, dtype, "sum", count)
            cases += [(algorithm, "sum", inputs, count % 2 == 1) for algorithm in ALGORITHMS]
    run_cases(world_size, cases, ring_segment_bytes=8, grouped=True)


# Hosts as an MPI launch over servers would see them: even, uneven (one host
# smaller or larger than the rest, so that ranks fold in), interleaved
# (ranks placed round-robin), one rank per host, and one host.
LAYOUTS = [
    [0, 0, 1, 1],
    [0, 1, 0, 1],
    [0, 0, 0, 1, 1],
    [0, 1, 1, 1],
    [0, 0, 0, 0, 1],
    [0, 0, 1, 1, 1, 2, 2, 2, 2],
    [0, 0, 1, 1, 2, 2],
    [0, 0, 0, 1, 1, 1, 2, 2, 2],
    [0, 1, 2],
    [0, 0, 0],
]


@pytest.mark.parametrize("between", FLAT_ALGORITHMS)
@pytest.mark.parametrize("hosts", LAYOUTS, ids=lambda hosts: "-".join(map(str, hosts)))
def test_hierarchical_at_every_layout(hosts, between, monkeypatch):
    """algorithm="hierarchical" with each flat algorithm between hosts, every
    op, a float, a half and an integer dtype, every count of counts_for, in
    place and out of place."""
    monkeypatch.setenv("PYALLREDUCE_ALGO_BETWEEN_HOSTS", between)
    world_size = len(hosts)
    cases = []
    for dtype in ("float32", "bfloat16", "int64"):
        for op in OPS:
            for index, count in enumerate(counts_for(world_size)):
                inputs = rank_inputs(world_size, dtype, op, count)
                cases.append(("hierarchical", op, inputs, index % 2 == 1))
    run_cases(world_size, cases, hosts=hosts)


@pytest.mark.parametrize("pieces", [2, 5, 64])
@pytest.mark.parametrize("hosts", [[0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 1, 0, 1, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2],
                                   [0, 1, 2], [0, 0, 0]], ids=lambda hosts: "-".join(map(str, hosts)))
def test_hierarchical_pipelines_its_pieces(hosts, pieces, monkeypatch):
    """The levels pipelined (the ring between hosts): every op on a float and
    an integer dtype, counts from 0 to past the pieces' and the segments'
    sizes, in place and out of place, with small segments so that each
    piece's phases take several steps and the levels' steps interleave."""
    monkeypatch.setenv("PYALLREDUCE_ALGO_BETWEEN_HOSTS", "ring")
    monkeypatch.setenv("PYALLREDUCE_HIERARCHICAL_PIECES", str(pieces))
    world_size = len(hosts)
    cases = []
    for dtype in ("float32", "int64"):
        for op in OPS:
            for index, count in enumerate([0, 1, 3, pieces + 1, 997, 4099]):
                cases.append(("hierarchical", op, rank_inputs(world_size, dtype, op, count), index % 2 == 1))
    run_cases(world_size, cases, ring_segment_bytes=64, hosts=hosts)


@pytest.mark.parametrize("hosts", [[0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 1, 0, 1, 2, 2]], ids=str)
def test_hierarchical_keeps_to_nccl_group_semantics(hosts, monkeypatch):
    """As test_every_algorithm_keeps_to_nccl_group_semantics, across hosts,
    with each flat algorithm between them."""
    world_size = len(hosts)
    for between in FLAT_ALGORITHMS:
        monkeypatch.setenv("PYALLREDUCE_ALGO_BETWEEN_HOSTS", between)
        cases = [("hierarchical", "sum", rank_inputs(world_size, "float32", "sum", count), count % 2 == 1)
                 for count in (0, 1, world_size - 1, 13, 1000)]
        run_cases(world_size, cases, ring_segment_bytes=8, grouped=True, hosts=hosts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    world_size=st.integers(1, 12),
    count=st.integers(0, 3000),
    algorithm=st.sampled_from(ALGORITHMS),
    op=st.sampled_from(OPS),
    dtype=st.sampled_from(DTYPES),
    segment_bytes=st.sampled_from([2, 64, 4096, 1 << 18]),
    receive_window=st.sampled_from([1, 2, 4, 16]),
    seed=st.integers(0, 2**16),
    out_of_place=st.booleans(),
    hosts_seed=st.integers(0, 2**16),
)
def test_random_sizes_and_worlds(world_size, count, algorithm, op, dtype, segment_bytes, receive_window, seed,
                                 out_of_place, hosts_seed):
    inputs = rank_inputs(world_size, dtype, op, count, seed=seed)
    # Each rank on one of 1..world_size hosts, at random.
    rng = np.random.default_rng(hosts_seed)
    hosts = rng.integers(0, rng.integers(1, world_size + 1), size=world_size).tolist()
    run_cases(world_size, [(algorithm, op, inputs, out_of_place)], ring_segment_bytes=segment_bytes, hosts=hosts,
              receive_window=receive_window)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64"])
def test_large_out_of_place_calls_write_around_the_cache(dtype, monkeypatch):
    """From PYALLREDUCE_STREAMING_STORE_BYTES on, out-of-place combines use
    streaming stores. The output here starts one element past a 16-byte
    boundary and the count is odd, so the plain head and tail run too."""
    streaming_bytes = 3 << 20
    monkeypatch.setenv("PYALLREDUCE_STREAMING_STORE_BYTES", str(streaming_bytes))
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    count = streaming_bytes // itemsize + 5
    world_size = 3
    inputs = rank_inputs(world_size, dtype, "sum", count)

    def each_rank(comm):
        assert comm._core.streaming_store_bytes == streaming_bytes
        results = []
        for algorithm in ALGORITHMS:
            storage = torch.full((count + 1,), 7, dtype=inputs.dtype)
            comm.allreduce(inputs[comm.rank], algorithm=algorithm, out=storage[1:])
            results.append(storage[1:])
        return results

    per_rank = spawn_local(world_size, each_rank, ring_segment_bytes=1 << 20)
    for index, algorithm in enumerate(ALGORITHMS):
        check_result(per_rank[0][index], inputs, "sum")
        for rank in range(1, world_size):
            assert result_bytes(per_rank[rank][index]) == result_bytes(per_rank[0][index]), f"{algorithm}: rank {rank}"


def test_numpy_and_buffer_protocol_objects():
    def each_rank(comm):
        a = np.full(7, comm.rank + 1, dtype=np.float64)
        comm.allreduce(a, algorithm="ring")
        b = array.array("i", [comm.rank] * 5)
        comm.allreduce(b, op="max")
        c = np.arange(6, dtype=np.int64).reshape(2, 3) * (comm.rank + 1)
        out = np.zeros((3, 2), dtype=np.int64)  # a different shape with the same count is fine
        comm.allreduce(c, out=out)
        return a, list(b), out

    for a, b, out in spawn_local(4, each_rank):
        assert np.array_equal(a, np.full(7, 10.0))
        assert b == [3] * 5
        assert np.array_equal(out.ravel(), np.arange(6) * 10)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_rounds_like_torch(dtype):
    """With two ranks a sum is one float32 add rounded once: exactly torch's
    (a.float() + b.float()).to(dtype), special values included."""
    torch_dtype = getattr(torch, dtype)
    info = torch.finfo(torch_dtype)
    specials = torch.tensor(
        [0.0, -0.0, info.tiny, info.tiny / 4, info.max, -info.max, float("inf"), float("-inf"), float("nan"), 1.0, 3.0],
        dtype=torch.float32,
    )
    rng = np.random.default_rng(3)
    randoms = torch.from_numpy(rng.standard_normal(20000).astype(np.float32) * np.float32(1e3) ** rng.uniform(-3, 1.6, 20000).astype(np.float32))
    a = torch.cat([specials, specials.flip(0), randoms[:10000]]).to(torch_dtype)
    b = torch.cat([specials.flip(0), specials, randoms[10000:]]).to(torch_dtype)
    expected = (a.float() + b.float()).to(torch_dtype)

    def each_rank(comm):
        x = (a if comm.rank == 0 else b).clone()
        return comm.allreduce(x, algorithm="recursive_doubling")

    for result in spawn_local(2, each_rank):
        assert result_bytes(result) == result_bytes(expected)


def test_min_max_propagate_nan():
    def each_rank(comm):
        x = torch.tensor([float("nan") if comm.rank == 1 else 1.0, 2.0 + comm.rank])
        lo, hi = x.clone(), x.clone()
        comm.allreduce(lo, op="min")
        comm.allreduce(hi, op="max")
        return lo, hi

    for lo, hi in spawn_local(3, each_rank):
        assert torch.isnan(lo[0]) and torch.isnan(hi[0])
        assert lo[1] == 2.0 and hi[1] == 4.0


def test_integer_sum_wraps_around():
    def each_rank(comm):
        return comm.allreduce(torch.tensor([2**31 - 1], dtype=torch.int32))

    assert spawn_local(2, each_rank)[0].item() == -2
