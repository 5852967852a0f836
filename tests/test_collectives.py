"""reduce_scatter, allgather, broadcast and barrier over the in-process
transport: every algorithm at world sizes that are not powers of two, with
NCCL's group semantics and across hosts, their errors, their rules and
their cost model."""

import numpy as np
import pytest

from pyallreduce import COLLECTIVE_ALGORITHMS, _C
from pyallreduce.testing import LocalWorldError, spawn_local
from collective_checks import (block_counts, carry_limit, check_allgather, check_broadcast, check_collective_mismatches,
                               check_reduce_scatter)

WORLD_SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 13]


def broadcast_counts(world_size: int) -> list[int]:
    return sorted({0, 1, world_size - 1, world_size + 1, 1009})


@pytest.mark.parametrize("check, counts", [(check_reduce_scatter, block_counts), (check_allgather, block_counts),
                                           (check_broadcast, broadcast_counts)],
                         ids=["reduce_scatter", "allgather", "broadcast"])
@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("grouped", [False, True])
def test_every_algorithm(check, counts, world_size, grouped):
    sizes = counts(world_size)
    assert all(spawn_local(world_size, lambda comm: check(comm, sizes) > 0, ring_segment_bytes=512, grouped=grouped))


@pytest.mark.parametrize("pieces", [None, 1, 3, 7], ids=lambda pieces: f"pieces={pieces or 'model'}")
@pytest.mark.parametrize("hosts", [[0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 1, 2], [0, 1, 0, 1, 0, 1], [2, 2, 2, 0, 0, 0],
                                   [0, 0, 1, 1, 2, 2, 3, 3]])
def test_across_hosts(hosts, pieces, monkeypatch):
    """Every algorithm across hosts; hierarchical's levels pipelined over
    the model's number of pieces or a given one (more than some blocks have
    elements), with segments small enough that each piece is several."""
    if pieces is not None:
        monkeypatch.setenv("PYALLREDUCE_HIERARCHICAL_PIECES", str(pieces))

    def each_rank(comm):
        return (check_reduce_scatter(comm, [0, 1, 3, 1009], ops=("sum", "avg", "max"), dtypes=("float32", "int64"))
                + check_allgather(comm, [0, 1, 3, 1009]) + check_broadcast(comm, [5]))

    assert all(spawn_local(len(hosts), each_rank, hosts=hosts, ring_segment_bytes=256))


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_mismatches_raise_on_every_rank(world_size):
    assert all(spawn_local(world_size, lambda comm: check_collective_mismatches(comm) > 0))


def test_barrier_waits_for_every_rank():
    import time

    def each_rank(comm):
        if comm.rank == 1:
            time.sleep(0.3)
        started = time.monotonic()
        comm.barrier()
        return time.monotonic() - started

    waited = spawn_local(3, each_rank)
    assert waited[0] > 0.25 and waited[2] > 0.25, waited


def test_barrier_runs_with_the_check_off():
    assert spawn_local(3, lambda comm: comm.barrier(), check=False) == [None] * 3


def test_async_calls_run_in_order():
    def each_rank(comm):
        p, r = comm.size, comm.rank
        x = np.full(2, r, np.float64)
        gathered = np.empty(2 * p)
        reduced = np.empty(2)
        futures = [comm.allgather_async(x, gathered), comm.reduce_scatter_async(np.ones(2 * p), reduced),
                   comm.broadcast_async(x, root=p - 1), comm.barrier_async()]
        for f in futures:
            f.result(timeout=60)
        return gathered.tolist(), reduced.tolist(), x.tolist()

    results = spawn_local(3, each_rank)
    for gathered, reduced, x in results:
        assert gathered == [0, 0, 1, 1, 2, 2] and reduced == [3, 3] and x == [2, 2]


def test_flight_record_names_the_collective():
    def each_rank(comm):
        comm.allgather(np.zeros(2, np.float32), np.zeros(2 * comm.size, np.float32), algorithm="ring")
        return comm.flight_record()[-1]

    record = spawn_local(2, each_rank)[0]
    assert (record["operation"], record["count"], record["op"], record["algorithm"]) == ("allgather", 4, None, "ring")


def test_algorithm_names_per_collective():
    assert COLLECTIVE_ALGORITHMS["reduce_scatter"] == ("auto", "halving_doubling", "ring", "hierarchical")
    assert COLLECTIVE_ALGORITHMS["allgather"] == ("auto", "recursive_doubling", "ring", "hierarchical")
    assert COLLECTIVE_ALGORITHMS["broadcast"] == ("auto", "binomial_tree", "scatter_allgather")

    def each_rank(comm):
        with pytest.raises(ValueError, match="unknown broadcast algorithm 'ring'"):
            comm.choose_algorithm(8, "ring", collective="broadcast")
        with pytest.raises(ValueError, match="unknown collective 'gather'"):
            comm.choose_algorithm(8, collective="gather")

    spawn_local(1, each_rank)


def test_rules_per_collective(monkeypatch):
    monkeypatch.setenv("PYALLREDUCE_ALGO", "allgather:ring:0-max;broadcast:scatter_allgather;ring:0-100")
    chosen = spawn_local(4, lambda comm: [comm.choose_algorithm(8, collective=c)[0]
                                          for c in ("allgather", "broadcast", "allreduce", "reduce_scatter")])[0]
    assert chosen[:3] == ["ring", "scatter_allgather", "ring"]
    assert chosen[3] in COLLECTIVE_ALGORITHMS["reduce_scatter"]
    for bad, message in [("allgather:halving_doubling:0-10", "unknown allgather algorithm 'halving_doubling'"),
                         ("broadcast:binomial_tree:5", "is not of the form")]:
        monkeypatch.setenv("PYALLREDUCE_ALGO", bad)
        with pytest.raises(LocalWorldError, match=message):
            spawn_local(2, lambda comm: None)


def test_cost_model_per_collective():
    model = _C.CostModel.default()
    broadcast = _C.Collective.broadcast
    tree, scatter = _C.Algorithm.binomial_tree, _C.Algorithm.scatter_allgather
    # A small broadcast is latency: lg p messages beat 2(p - 1); a large one is bandwidth.
    assert model.predict(tree, 8, 16, collective=broadcast) < model.predict(scatter, 8, 16, collective=broadcast)
    assert model.predict(scatter, 64 << 20, 16, collective=broadcast) < model.predict(tree, 64 << 20, 16,
                                                                                     collective=broadcast)
    ring, rd = _C.Algorithm.ring, _C.Algorithm.recursive_doubling
    allgather = _C.Collective.allgather
    assert model.predict(rd, 64, 8, collective=allgather) < model.predict(ring, 64, 8, collective=allgather)
    for collective in (allgather, _C.Collective.reduce_scatter, broadcast):
        for algorithm in _C.algorithms_of(collective):
            assert model.predict(algorithm, 0, 1, collective=collective) == 0
            assert model.predict(algorithm, 1 << 20, 6, collective=collective) > model.predict(
                algorithm, 1 << 10, 6, collective=collective)
    with pytest.raises(ValueError, match="not a broadcast algorithm"):
        model.predict(ring, 8, 4, collective=broadcast)
    chosen = spawn_local(8, lambda comm: [comm.choose_algorithm(n, collective="broadcast")[0] for n in (8, 64 << 20)])
    assert chosen[0] == ["binomial_tree", "scatter_allgather"]


def test_the_broadcast_model_counts_the_tree_messages_that_cross_hosts():
    # At 2 hosts x 2 ranks the binomial tree sends the vector across once
    # (0 -> 2, then 0 -> 1 and 2 -> 3 inside); scatter + allgather's ring
    # sends 1.5 times it. Where the network is the cost, the tree wins at
    # every size, which a model of recursive-doubling exchanges (both ranks
    # of a host sending at once) missed.
    network = _C.LinkCost(1e-5, 1 / 0.12e9)
    model = _C.CostModel(_C.LinkCost(5e-7, 1 / 6e9), network, 1 / 8e9)
    broadcast = _C.Collective.broadcast
    tree, scatter = _C.Algorithm.binomial_tree, _C.Algorithm.scatter_allgather
    hosts = [0, 0, 1, 1]
    n = 4 << 20
    assert model.predict(tree, n, hosts, collective=broadcast) == pytest.approx(
        1e-5 + 5e-7 + n / 0.12e9 + n / 6e9, rel=1e-3)
    assert model.predict(tree, n, hosts, collective=broadcast) < model.predict(scatter, n, hosts,
                                                                               collective=broadcast)
    # On one host the tree's levels are lg p messages, as before.
    one_host = model.predict(tree, n, 6, collective=broadcast)
    assert one_host == pytest.approx(3 * (5e-7 + n / 6e9))


@pytest.mark.parametrize("collective", ["allgather", "reduce_scatter"])
def test_hierarchical_blocks_send_a_hosts_share_through_its_link(collective):
    # At 2 hosts x 2 ranks the ring over all 4 ranks puts 3n/4 through a
    # host's link, the hierarchical form n/2; on one host, or with hosts of
    # different sizes, the hierarchical form is the ring.
    network = _C.LinkCost(1e-5, 1 / 0.12e9)
    model = _C.CostModel(_C.LinkCost(5e-7, 1 / 6e9), network, 1 / 8e9)
    kind = getattr(_C.Collective, collective)
    ring, hier = _C.Algorithm.ring, _C.Algorithm.hierarchical
    n = 16 << 20
    flat = model.predict(ring, n, [0, 0, 1, 1], collective=kind)
    assert model.predict(hier, n, [0, 0, 1, 1], collective=kind) < flat / 1.4
    for hosts in (4, [0, 0, 0, 1, 1]):
        assert model.predict(hier, n, hosts, collective=kind) == model.predict(ring, n, hosts, collective=kind)
    chosen = spawn_local(4, lambda comm: comm.choose_algorithm(64 << 20, collective=collective)[0],
                         hosts=[0, 0, 1, 1])
    assert chosen == ["hierarchical"] * 4


def test_small_calls_travel_inside_the_argument_check(monkeypatch, capfd):
    import logging

    logger = logging.getLogger("pyallreduce")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setenv("PYALLREDUCE_DEBUG", "INFO")

    def each_rank(comm):
        p = comm.size
        for m in (8, 1 << 16):  # 3 x 8 floats are carried, 3 x 65536 do not fit the frame
            comm.reduce_scatter(np.ones(p * m, np.float32), np.empty(m, np.float32))
            comm.allgather(np.ones(m, np.float32), np.empty(p * m, np.float32))
            comm.broadcast(np.ones(p * m, np.float32), root=1)

    spawn_local(3, each_rank)
    lines = [line for line in capfd.readouterr().err.splitlines() if "rank 0/3" in line]
    carried = [line for line in lines if "inside the argument check" in line]
    assert len(lines) == 6 and len(carried) == 3, lines
    assert all(" of 24 x float32 " in line for line in carried), carried


@pytest.mark.parametrize("collective", ["allgather", "broadcast", "reduce_scatter"])
def test_counts_either_side_of_the_carried_size_raise_on_every_rank(collective):
    # Rank 2's call is one float per block longer than the largest the check
    # carries, the others' fit: the ranks still meet there and raise together.
    def each_rank(comm):
        p = comm.size
        largest = carry_limit(comm, collective) // (4 * p)
        assert largest > 0
        m = largest + (comm.rank == 2)
        with pytest.raises(ValueError, match="different element counts"):
            if collective == "allgather":
                comm.allgather(np.zeros(m, np.float32), np.empty(p * m, np.float32))
            elif collective == "broadcast":
                comm.broadcast(np.zeros(p * m, np.float32), root=0)
            else:
                comm.reduce_scatter(np.zeros(p * m, np.float32), np.empty(m, np.float32))
        return comm.allreduce(np.ones(1))[0]

    assert spawn_local(3, each_rank) == [3, 3, 3]
