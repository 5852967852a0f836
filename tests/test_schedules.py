"""The large-batch learning-rate recipe: linear scaling, warm-up, polynomial decay."""

import pytest
import torch

from pyallreduce.optim import LARS, linear_scaling_rule, poly_decay, warmup, warmup_poly_decay


def optimizer(lr=1.0):
    return LARS([torch.nn.Parameter(torch.ones(2, 2))], lr=lr)


def rates(opt, scheduler, steps):
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return seen


def test_linear_scaling_rule():
    assert linear_scaling_rule(0.1, 8192) == pytest.approx(3.2)
    assert linear_scaling_rule(0.1, 256) == pytest.approx(0.1)
    assert linear_scaling_rule(0.2, 64, reference_batch=128) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        linear_scaling_rule(0.1, 0)


def test_warmup_ramps_linearly_then_holds():
    opt = optimizer(2.0)
    assert rates(opt, warmup(opt, steps=4, start_factor=0.2), 7) == pytest.approx(
        [0.4, 0.8, 1.2, 1.6, 2.0, 2.0, 2.0])


def test_poly_decay_is_quadratic_to_zero():
    opt = optimizer(1.0)
    assert rates(opt, poly_decay(opt, steps=4), 6) == pytest.approx(
        [1.0, (3 / 4) ** 2, (2 / 4) ** 2, (1 / 4) ** 2, 0.0, 0.0])


def test_warmup_then_poly_decay():
    opt = optimizer(1.0)
    expected = [0.1, 0.4, 0.7] + [(1 - t / 7) ** 2 for t in range(7)] + [0.0]
    assert rates(opt, warmup_poly_decay(opt, warmup_steps=3, total_steps=10), 11) == pytest.approx(expected)


@pytest.mark.parametrize("make", [
    lambda opt: warmup(opt, steps=0),
    lambda opt: warmup(opt, steps=3, start_factor=0.0),
    lambda opt: poly_decay(opt, steps=0),
    lambda opt: warmup_poly_decay(opt, warmup_steps=5, total_steps=5),
])
def test_bad_schedules_raise(make):
    with pytest.raises(ValueError):
        make(optimizer())
