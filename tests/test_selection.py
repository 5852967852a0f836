"""Algorithm selection: PYALLREDUCE_ALGO rules and the cost model."""

import logging
import re

import numpy as np
import pytest
import torch

from pyallreduce import _C
from pyallreduce.testing import LocalWorldError, spawn_local
from collective_checks import carry_limit

RULES = "recursive_doubling:0-4096;halving_doubling:4097-1048576;ring:1048577-max"


def choices(world_size, sizes, check=None):
    return spawn_local(world_size, lambda comm: [comm.choose_algorithm(n) for n in sizes], check=check)[0]


def test_size_range_rules(monkeypatch):
    monkeypatch.setenv("PYALLREDUCE_ALGO", RULES)
    picked = choices(3, [0, 4096, 4097, 1048576, 1048577, 2**40])
    assert [name for name, _ in picked] == [
        "recursive_doubling", "recursive_doubling", "halving_doubling", "halving_doubling", "ring", "ring",
    ]
    assert picked[4][1] == "PYALLREDUCE_ALGO rule 1048577-max"


def test_a_bare_name_applies_to_every_size(monkeypatch):
    monkeypatch.setenv("PYALLREDUCE_ALGO", "halving_doubling")
    assert {name for name, _ in choices(2, [1, 10**9])} == {"halving_doubling"}


def test_uncovered_sizes_fall_back_to_the_cost_model(monkeypatch):
    monkeypatch.setenv("PYALLREDUCE_ALGO", "ring:1000-2000")
    name, reason = choices(4, [1 << 20])[0]
    assert reason.startswith("cost model for 1 host x 4 ranks, constants built-in:")
    # Calls small enough for the argument check to carry run inside it.
    name, reason = choices(4, [10])[0]
    assert name == "recursive_doubling" and re.fullmatch(r"at most \d+ bytes, the cost model's limit for the check",
                                                          reason), reason


def test_the_check_carries_what_the_cost_model_says_it_should():
    # Where messages cost latency alone, carrying a call in the check saves a
    # round and every size that fits the frame is carried; where bytes cost
    # and latency does not, recursive doubling's whole-vector steps lose to
    # the check and halving/doubling from a few bytes on.
    def limits(alpha, beta):
        def each_rank(comm):
            link = _C.LinkCost(alpha, beta)
            comm._core.set_cost_model(_C.CostModel(link, link, beta), "test")
            return carry_limit(comm), comm.choose_algorithm(carry_limit(comm) + 1)[1]
        return spawn_local(8, each_rank)[0]

    latency_bound, after = limits(1e-5, 1e-12)
    assert latency_bound == 16384 and after.startswith("cost model"), (latency_bound, after)
    bandwidth_bound, after = limits(1e-12, 1e-9)
    assert bandwidth_bound < 1024 and after.startswith("cost model"), (bandwidth_bound, after)


def test_without_the_check_nothing_is_carried():
    assert all(reason.startswith("cost model") for _, reason in choices(3, [0, 8, 4096], check=False))


def test_ranks_whose_models_differ_on_carrying_a_call_raise_together():
    def each_rank(comm):
        if comm.rank == 1:
            link = _C.LinkCost(1e-12, 1e-9)
            comm._core.set_cost_model(_C.CostModel(link, link, 1e-9), "test")
        x = np.ones(1024, np.float32)
        carried = carry_limit(comm) >= x.nbytes
        with pytest.raises(ValueError, match="disagree on carrying the same allreduce inside the argument check"):
            comm.allreduce(x, algorithm="recursive_doubling")
        assert x[0] == 1  # nothing was written
        return carried

    assert spawn_local(2, each_rank) == [True, False]


def test_cost_model_prefers_few_messages_small_and_the_ring_large():
    small, large = choices(8, [8, 256 << 20])
    assert small[0] == "recursive_doubling"
    assert large[0] == "ring"
    # At 2 ranks halving/doubling and the ring send the same messages; the
    # ring's pipelining (combining one segment while the next arrives) wins.
    assert choices(2, [64 << 20])[0][0] == "ring"
    for algorithm in (_C.Algorithm.ring, _C.Algorithm.halving_doubling, _C.Algorithm.recursive_doubling):
        model = _C.CostModel.default()
        assert model.predict(algorithm, 1 << 20, 4) > model.predict(algorithm, 1 << 10, 4)


def test_a_rendezvous_message_pays_the_step():
    eager = _C.LinkCost(2e-6, 1e-10)
    eager_only = _C.CostModel(eager, eager, 1e-10)
    stepped = _C.CostModel(_C.LinkCost(2e-6, 1e-10, rendezvous_bytes=8192, rendezvous_s=3e-6), eager, 1e-10)
    rd, ring = _C.Algorithm.recursive_doubling, _C.Algorithm.ring
    assert stepped.predict(rd, 8191, 2) == eager_only.predict(rd, 8191, 2)
    assert stepped.predict(rd, 8192, 2) == pytest.approx(eager_only.predict(rd, 8192, 2) + 3e-6)
    # The ring at 2 ranks sends halves: two exchanges of 8 KiB, two steps.
    assert stepped.predict(ring, 16384, 2) == pytest.approx(eager_only.predict(ring, 16384, 2) + 2 * 3e-6)
    # With the default model and no check to carry it, 8 KiB at 2 ranks goes
    # as two eager halves rather than one rendezvous message; from 16 KiB one
    # message is cheaper again.
    picked = [name for name, _ in choices(2, [4096, 8192, 16384], check=False)]
    assert picked[0] == picked[2] == "recursive_doubling"
    assert picked[1] != "recursive_doubling"


def test_hierarchical_is_a_candidate_only_across_hosts_with_several_ranks_each():
    def picks(hosts, sizes):
        return [name for name, _ in spawn_local(len(hosts), lambda comm: [comm.choose_algorithm(n) for n in sizes],
                                                hosts=hosts)[0]]

    sizes = [8, 1 << 16, 1 << 22, 64 << 20]
    assert "hierarchical" not in picks([0, 0, 0, 0], sizes)  # there it is the ring
    assert "hierarchical" not in picks([0, 1, 2, 3], sizes)  # there it is a flat algorithm
    assert picks([0, 0, 1, 1], sizes)[-1] == "hierarchical"


def test_the_model_charges_messages_that_share_a_link():
    model = _C.CostModel.default()
    ring, hier = _C.Algorithm.ring, _C.Algorithm.hierarchical
    n = 64 << 20
    # Host-major, each host's link carries one ring message per step; placed
    # round-robin, two: the ring takes about twice as long.
    assert model.predict(ring, n, [0, 1, 0, 1]) == pytest.approx(2 * model.predict(ring, n, [0, 0, 1, 1]), rel=0.1)
    # Hierarchical sends a host's share, n(H-1)/H each way, where the flat ring
    # sends 1.5n through each link at 2 x 2.
    assert model.predict(hier, n, [0, 0, 1, 1]) < model.predict(ring, n, [0, 0, 1, 1]) / 1.3
    # On one host, hierarchical is the ring.
    assert model.predict(hier, n, 4) == model.predict(ring, n, 4)
    algorithm, seconds = model.between_hosts(n, [0, 0, 1, 1])
    assert algorithm in (_C.Algorithm.ring, _C.Algorithm.halving_doubling) and seconds > 0


@pytest.mark.parametrize("collective", [_C.Collective.allreduce, _C.Collective.reduce_scatter,
                                        _C.Collective.allgather])
def test_the_model_pipelines_large_hierarchical_calls(collective):
    # Over a link far slower than memory, the pieces cost a few latencies
    # and hide nearly all of the levels inside the hosts.
    network = _C.LinkCost(alpha_s=10e-6, beta_s_per_byte=1 / 0.125e9, rendezvous_bytes=2**62, rendezvous_s=0)
    model = _C.CostModel(_C.CostModel.default().inside, network, _C.CostModel.default().gamma_s_per_byte)
    n = 64 << 20
    pieces, seconds = model.hierarchical_pieces(n, [0, 0, 1, 1], collective=collective)
    assert 1 < pieces <= 64
    if collective != _C.Collective.allreduce:
        assert seconds == model.predict(_C.Algorithm.hierarchical, n, [0, 0, 1, 1], collective=collective)
    # The levels one after the other: the same formula at one piece.
    bound = n / 2 / 0.125e9 * (2 if collective == _C.Collective.allreduce else 1)
    assert bound < seconds < 1.05 * bound
    assert model.hierarchical_pieces(64, [0, 0, 1, 1], collective=collective)[0] == 1
    assert model.hierarchical_pieces(n, [0, 1, 2, 3], collective=collective)[0] == 1


def test_rules_choose_the_algorithm_between_hosts(monkeypatch, capfd, fresh_logger):
    monkeypatch.setenv("PYALLREDUCE_ALGO_BETWEEN_HOSTS", "recursive_doubling:0-4096;halving_doubling:4097-max")
    monkeypatch.setenv("PYALLREDUCE_DEBUG", "INFO")
    spawn_local(4, lambda comm: [comm.allreduce(torch.ones(n), algorithm="hierarchical") for n in (10, 10000)],
                hosts=[0, 0, 1, 1])
    err = capfd.readouterr().err
    assert "-> hierarchical, recursive_doubling between hosts, in 1 piece(s) [requested by the caller]" in err
    assert "-> hierarchical, halving_doubling between hosts, in 1 piece(s) [requested by the caller]" in err
    monkeypatch.setenv("PYALLREDUCE_ALGO_BETWEEN_HOSTS", "hierarchical")
    with pytest.raises(LocalWorldError, match="a flat one, not hierarchical"):
        spawn_local(1, lambda comm: None)


def test_debug_logs_auto_even_after_an_explicit_call_of_the_same_algorithm(monkeypatch, capfd, fresh_logger):
    monkeypatch.setenv("PYALLREDUCE_DEBUG", "INFO")
    spawn_local(2, lambda comm: [comm.allreduce(torch.ones(3000), algorithm=a) for a in ("ring", "auto", "auto")])
    lines = [line for line in capfd.readouterr().err.splitlines() if "rank 0/2" in line]
    assert len(lines) == 2 and "(sum, ring) -> ring" in lines[0] and "(sum, auto) ->" in lines[1], lines


def test_an_explicit_algorithm_wins(monkeypatch):
    monkeypatch.setenv("PYALLREDUCE_ALGO", "ring")
    name, reason = spawn_local(2, lambda comm: comm.choose_algorithm(8, "recursive_doubling"))[0]
    assert (name, reason) == ("recursive_doubling", "requested by the caller")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ring:0-", "not a byte count"),
        ("ring:10-5", "min > max"),
        ("tree:0-10", "unknown allreduce algorithm 'tree'"),
        ("auto:0-10", "concrete algorithm"),
        ("ring", None),
        ("ring 0-10", "is not of the form"),
        ("ring:abc", "not of the form"),
    ],
)
def test_rule_syntax_errors(monkeypatch, spec, message):
    monkeypatch.setenv("PYALLREDUCE_ALGO", spec)
    if message is None:
        spawn_local(1, lambda comm: None)
        return
    with pytest.raises(LocalWorldError) as info:
        spawn_local(1, lambda comm: None)
    assert isinstance(info.value.__cause__, ValueError)
    assert message in str(info.value.__cause__)


@pytest.fixture
def fresh_logger(monkeypatch):
    """The `pyallreduce` logger as an application would find it, restored after."""
    logger = logging.getLogger("pyallreduce")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "handlers", [])
    return logger


@pytest.mark.parametrize("level", ["INFO", "info", "1", "DEBUG"])
def test_debug_info_logs_each_distinct_call_once(monkeypatch, capfd, fresh_logger, level):
    monkeypatch.setenv("PYALLREDUCE_DEBUG", level)

    def each_rank(comm):
        for _ in range(3):
            comm.allreduce(torch.ones(100))

    spawn_local(2, each_rank)
    lines = [line for line in capfd.readouterr().err.splitlines() if "pyallreduce INFO" in line]
    assert len(lines) == 2  # one per rank
    assert re.search(r"allreduce of 100 x float32 \(sum, auto\) -> recursive_doubling inside the argument check "
                     r"\[at most \d+ bytes, the cost model's limit for the check\]", lines[0]), lines[0]


def test_the_pyallreduce_logger_gets_the_choices_without_the_variable(monkeypatch, caplog, fresh_logger):
    monkeypatch.delenv("PYALLREDUCE_DEBUG", raising=False)
    caplog.set_level(logging.INFO, logger="pyallreduce")
    spawn_local(2, lambda comm: comm.allreduce(torch.ones(3000), algorithm="ring"))
    messages = [r.getMessage() for r in caplog.records if r.name == "pyallreduce"]
    assert sorted(m.split(":")[0] for m in messages) == ["rank 0/2", "rank 1/2"]
    assert all("allreduce of 3000 x float32 (sum, ring) -> ring [requested by the caller]" in m for m in messages), messages


def test_no_log_below_info(monkeypatch, capfd, fresh_logger):
    monkeypatch.setenv("PYALLREDUCE_DEBUG", "WARNING")
    spawn_local(2, lambda comm: comm.allreduce(torch.ones(10)))
    assert "allreduce of" not in capfd.readouterr().err


@pytest.mark.parametrize("name, value", [("PYALLREDUCE_CHECK", "maybe"), ("PYALLREDUCE_RING_SEGMENT_BYTES", "-4"), ("PYALLREDUCE_DEBUG", "LOUD")])
def test_bad_environment_values(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        spawn_local(1, lambda comm: None)  # options are read before any rank starts
