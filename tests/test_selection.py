"""Algorithm selection: PYALLREDUCE_ALGO rules and the cost model."""

import logging

import pytest
import torch

from pyallreduce import _C
from pyallreduce.testing import LocalWorldError, spawn_local

RULES = "recursive_doubling:0-4096;halving_doubling:4097-1048576;ring:1048577-max"


def choices(world_size, sizes):
    return spawn_local(world_size, lambda comm: [comm.choose_algorithm(n) for n in sizes])[0]


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
    name, reason = choices(4, [10])[0]
    assert reason.startswith("cost model:")


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
    eager_only = _C.CostModel(2e-6, 1e-10, 1e-10)
    stepped = _C.CostModel(2e-6, 1e-10, 1e-10, rendezvous_bytes=8192, rendezvous_s=3e-6)
    rd, ring = _C.Algorithm.recursive_doubling, _C.Algorithm.ring
    assert stepped.predict(rd, 8191, 2) == eager_only.predict(rd, 8191, 2)
    assert stepped.predict(rd, 8192, 2) == pytest.approx(eager_only.predict(rd, 8192, 2) + 3e-6)
    # The ring at 2 ranks sends halves: two exchanges of 8 KiB, two steps.
    assert stepped.predict(ring, 16384, 2) == pytest.approx(eager_only.predict(ring, 16384, 2) + 2 * 3e-6)
    # With the default model, 8 KiB at 2 ranks goes as two eager halves rather
    # than one rendezvous message; from 16 KiB one message is cheaper again.
    picked = [name for name, _ in choices(2, [4096, 8192, 16384])]
    assert picked[0] == picked[2] == "recursive_doubling"
    assert picked[1] != "recursive_doubling"


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
        ("ring 0-10", "unknown allreduce algorithm"),
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
    assert "allreduce of 100 x float32 (sum) -> recursive_doubling inside the argument check [cost model:" in lines[0]


def test_the_pyallreduce_logger_gets_the_choices_without_the_variable(monkeypatch, caplog, fresh_logger):
    monkeypatch.delenv("PYALLREDUCE_DEBUG", raising=False)
    caplog.set_level(logging.INFO, logger="pyallreduce")
    spawn_local(2, lambda comm: comm.allreduce(torch.ones(3000), algorithm="ring"))
    messages = [r.getMessage() for r in caplog.records if r.name == "pyallreduce"]
    assert sorted(m.split(":")[0] for m in messages) == ["rank 0/2", "rank 1/2"]
    assert all("allreduce of 3000 x float32 (sum) -> ring [requested by the caller]" in m for m in messages), messages


def test_no_log_below_info(monkeypatch, capfd, fresh_logger):
    monkeypatch.setenv("PYALLREDUCE_DEBUG", "WARNING")
    spawn_local(2, lambda comm: comm.allreduce(torch.ones(10)))
    assert "allreduce of" not in capfd.readouterr().err


@pytest.mark.parametrize("name, value", [("PYALLREDUCE_CHECK", "maybe"), ("PYALLREDUCE_RING_SEGMENT_BYTES", "-4"), ("PYALLREDUCE_DEBUG", "LOUD")])
def test_bad_environment_values(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        spawn_local(1, lambda comm: None)  # options are read before any rank starts
