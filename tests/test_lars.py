"""pyallreduce.optim.LARS against Algorithm 1 of the LARS paper written here in
float64 numpy, on every path: the fused C++ step (float32 and float64, one and
two threads), the plain PyTorch step, float16 master weights, and the fused
CUDA step where a GPU is present."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pyallreduce import _C
from pyallreduce.optim import LARS, lars_step_torch

# Empty, scalar-like and prime-sized tensors; in float64 (1200, 1301) is a
# tile of its own (1.56M elements x 3 arrays x 8 B > a 32 MiB cache), the
# others share tiles, and with two threads tensors are split between them.
SHAPES = [(0,), (1,), (7,), (0, 5), (13, 17), (300, 301), (1200, 1301), (64, 3, 3, 3), (97,), (5000, 31)]


class ReferenceLars:
    """Algorithm 1 in float64: trust ratio, weight decay, momentum with
    correction, nesterov, clip, and the skip rule for 1-D tensors."""

    def __init__(self, weights, *, lr, momentum, weight_decay, trust_coefficient, eps, nesterov, trust_clip, skip):
        self.w = [np.array(w, dtype=np.float64) for w in weights]
        self.v = [np.zeros_like(w) for w in self.w]
        self.momentum, self.weight_decay = momentum, weight_decay
        self.trust_coefficient, self.eps = trust_coefficient, eps
        self.nesterov, self.trust_clip, self.skip = nesterov, trust_clip, skip
        self.last_lr = None
        self.lr = lr

    def step(self, grads):
        correction = 1.0 if self.last_lr is None else self.lr / self.last_lr
        self.last_lr = self.lr
        for i, (w, g) in enumerate(zip(self.w, grads)):
            g = np.asarray(g, dtype=np.float64)
            adapt = w.ndim > 1 if self.skip is None else not self.skip
            if adapt:
                w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
                rate = self.lr
                if w_norm > 0 and g_norm > 0:
                    local_lr = self.trust_coefficient * w_norm / (g_norm + self.weight_decay * w_norm + self.eps)
                    # LARC's clip (apex): the gradient is scaled by min(local_lr / lr, 1)
                    # before the optimizer's step of lr, so the rate is min(local_lr, lr).
                    rate = min(local_lr, self.lr) if self.trust_clip else self.lr * local_lr
                d = rate * (g + self.weight_decay * w)
            else:
                d = self.lr * g
            if self.momentum == 0:
                self.w[i] = w - d
                continue
            self.v[i] = self.momentum * correction * self.v[i] + d
            self.w[i] = w - (self.momentum * self.v[i] + d if self.nesterov else self.v[i])


def make_weights(shapes, dtype, seed, zero=()):
    generator = torch.Generator().manual_seed(seed)
    weights = []
    for i, shape in enumerate(shapes):
        w = torch.zeros(shape, dtype=dtype) if i in zero else torch.randn(shape, generator=generator, dtype=dtype)
        weights.append(torch.nn.Parameter(w))
    return weights


def gradients(shapes, dtype, seed, step, zero=()):
    generator = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.zeros(s, dtype=dtype) if i in zero else torch.randn(s, generator=generator, dtype=dtype)
            for i, s in enumerate(shapes)]


CONFIGS = {
    "plain": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02, eps=0.0),
    "nesterov_eps": dict(lr=0.3, momentum=0.8, weight_decay=5e-4, trust_coefficient=0.01, eps=1e-3, nesterov=True),
    # Trust ratios near 5, above lr: LARC's clip makes the rate lr.
    "clip": dict(lr=0.05, momentum=0.9, weight_decay=1e-4, trust_coefficient=5.0, trust_clip=True),
    # Trust ratios near 0.2, below lr: the rate is the ratio itself, not lr * ratio.
    "clip_below_lr": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.2, trust_clip=True),
    "no_momentum": dict(lr=0.2, momentum=0.0, weight_decay=1e-3, trust_coefficient=0.01),
    "adapt_everything": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02, skip_adaptation=False),
    "adapt_nothing": dict(lr=0.01, momentum=0.9, weight_decay=1e-3, skip_adaptation=True),
}


def reference_for(weights, config):
    full = dict(lr=0.0, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=0.0, nesterov=False,
                trust_clip=False, skip_adaptation=None) | config
    full["skip"] = full.pop("skip_adaptation")
    return ReferenceLars([w.detach().numpy() for w in weights], **full)


def run_both(weights, config, steps, dtype, lr_at=None, zero_grads=()):
    """Steps LARS and the reference side by side; lr_at(step) changes the lr."""
    optimizer = LARS(weights, **config)
    reference = reference_for(weights, config)
    shapes = [tuple(w.shape) for w in weights]
    for step in range(steps):
        if lr_at is not None:
            optimizer.param_groups[0]["lr"] = reference.lr = lr_at(step)
        grads = gradients(shapes, dtype, 1, step, zero_grads)
        for w, g in zip(weights, grads):
            w.grad = g
        optimizer.step()
        reference.step([g.numpy() for g in grads])
    return reference


def assert_matches(weights, reference, rtol, atol_scale):
    for w, expected in zip(weights, reference.w):
        got = w.detach().double().numpy()
        scale = float(np.abs(expected).max()) if expected.size else 0.0
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol_scale * scale)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("config", CONFIGS, ids=list(CONFIGS))
def test_fused_cpu_float64_matches_algorithm_1_over_50_steps(config, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    weights = make_weights(SHAPES, torch.float64, seed=3, zero={2, 5})
    reference = run_both(weights, CONFIGS[config], 50, torch.float64, zero_grads={4})
    assert_matches(weights, reference, rtol=1e-6, atol_scale=1e-12)


def check_each_step(weights, config, grad_dtype, steps=50):
    """Steps LARS on float32 weights (or float32 master weights of half ones),
    each step against the float64 reference started from the same state:
    every step agrees to 1e-6 (float32 rounding itself is 6e-8)."""
    optimizer = LARS(weights, **config)
    shapes = [tuple(w.shape) for w in weights]
    for step in range(steps):
        masters = [optimizer.state[w].get("master_weight", w).detach().float().cpu() for w in weights]
        reference = reference_for(masters, config)
        if step:
            reference.last_lr = reference.lr
            if config.get("momentum", 0.9):
                reference.v = [optimizer.state[w]["momentum_buffer"].double().cpu().numpy() for w in weights]
        grads = [g.to(grad_dtype) for g in gradients(shapes, torch.float32, 2, step, zero={6})]
        for w, g in zip(weights, grads):
            w.grad = g.to(w.device)
        optimizer.step()
        reference.step([g.double().numpy() for g in grads])
        masters = [optimizer.state[w].get("master_weight", w) for w in weights]
        assert_matches(masters, reference, rtol=1e-6, atol_scale=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("config", ["plain", "nesterov_eps", "clip", "clip_below_lr"])
def test_fused_cpu_float32_step_matches_algorithm_1(config, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    check_each_step(make_weights(SHAPES, torch.float32, seed=4, zero={3}), CONFIGS[config], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fused_step_gives_the_same_bits_whatever_the_threads_tiles_and_alignment(dtype):
    """Ranks whose thread counts or tile sizes differ must keep identical
    replicas: the norms are summed in fixed blocks and lanes, not per thread."""
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.001, eps=1e-9, nesterov=False,
                 trust_clip=False)
    weights = make_weights(SHAPES, dtype, seed=21)
    grads = gradients([tuple(w.shape) for w in weights], dtype, 22, 0)

    def stepped(threads, tile_bytes, offset):
        # Each tensor copied to `offset` elements into its own storage, so its
        # data starts at another alignment.
        def placed(t):
            storage = torch.zeros(t.numel() + offset, dtype=dtype)
            storage[offset:] = t.detach().reshape(-1)
            return storage[offset:]

        w, g = [placed(t) for t in weights], [placed(t) for t in grads]
        v = [torch.full_like(t, 0.5) for t in w]
        for _ in range(3):
            _C.lars_step(w, g, v, [t.numel() > 1 for t in w], [1.0] * len(w), **hyper, threads=threads,
                         tile_bytes=tile_bytes)
        return [t.clone() for t in w + v]

    expected = stepped(1, 0, 0)
    for threads, tile_bytes, offset in [(2, 0, 0), (3, 4096, 0), (5, 1 << 20, 1), (2, 1, 3), (1, 64 << 20, 1)]:
        got = stepped(threads, tile_bytes, offset)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), (threads, tile_bytes, offset)


def test_the_weights_norms_the_step_hands_on_are_the_ones_the_next_step_would_sum():
    """What lars_step returns as known_w_squares is, bit for bit, the sum of
    squares the next step computes itself; the step uses what it is given."""
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.001, eps=1e-9, nesterov=False,
                 trust_clip=False)
    weights = [w.detach() for w in make_weights(SHAPES, torch.float64, seed=31)]
    grads = gradients([tuple(w.shape) for w in weights], torch.float64, 32, 0)
    adapt = [w.ndim > 1 for w in weights]

    def step(w, v, known=None, threads=2, tile_bytes=0):
        return _C.lars_step(w, grads, v, adapt, [1.0] * len(w), **hyper, threads=threads, tile_bytes=tile_bytes,
                            known_w_squares=known)

    fresh_w, fresh_v = [w.clone() for w in weights], [torch.full_like(w, 0.5) for w in weights]
    carried_w, carried_v = [w.clone() for w in weights], [torch.full_like(w, 0.5) for w in weights]
    known = None
    for threads, tile_bytes in [(1, 0), (2, 4096), (3, 1 << 20)]:
        step(fresh_w, fresh_v, threads=threads, tile_bytes=tile_bytes)
        known = step(carried_w, carried_v, known, threads=threads, tile_bytes=tile_bytes)
        assert all(torch.equal(a, b) for a, b in zip(carried_w + carried_v, fresh_w + fresh_v))
        for w, a, sums in zip(carried_w, adapt, known):
            if not a:
                assert np.isnan(sums)
            elif w.numel():
                assert sums == pytest.approx(float((w.double() ** 2).sum()), rel=1e-12)
    # A norm four times too large doubles the trust ratio: the step takes it as given.
    wrong = [x * 4 if not np.isnan(x) else x for x in known]
    step(carried_w, carried_v, wrong)
    step(fresh_w, fresh_v)
    differ = [not torch.equal(a, b) for a, b in zip(carried_w, fresh_w)]
    assert differ == [a and w.numel() > 1 for a, w in zip(adapt, weights)]
    with pytest.raises(ValueError, match="known_w_squares\\[2\\] is negative"):
        step(carried_w, carried_v, [0.0, 0.0, -1.0] + [np.nan] * (len(weights) - 3))
    with pytest.raises(ValueError, match="differ in length"):
        step(carried_w, carried_v, [np.nan])


@pytest.mark.parametrize("write", ["none", "in_place", "replaced_data", "untracked_then_load_state_dict",
                                   "untracked"])
def test_carried_norms_give_the_same_steps_and_follow_what_torch_sees_written(write):
    """LARS(carry_norms=True) steps as LARS without it, bit for bit, also when
    the weights are written between steps in a way torch counts, or when
    load_state_dict follows; a write torch does not count (through .data)
    goes unseen, as documented, which shows the carried norms are used."""
    config = dict(CONFIGS["plain"], nesterov=False)
    models = [make_weights(SHAPES, torch.float32, seed=41) for _ in range(2)]
    optimizers = [LARS(models[0], **config), LARS(models[1], **config, carry_norms=True)]
    shapes = [tuple(w.shape) for w in models[0]]
    for step in range(6):
        saved = copy.deepcopy(optimizers[0].state_dict())
        for weights, optimizer in zip(models, optimizers):
            for w, g in zip(weights, gradients(shapes, torch.float32, 42, step)):
                w.grad = g
            if step == 3 and write != "none":
                with torch.no_grad():
                    if write == "in_place":
                        for w in weights:
                            w.mul_(1.5)
                    elif write == "replaced_data":
                        for w in weights:
                            w.data = w.detach() * 1.5
                    else:
                        for w in weights:
                            w.data.mul_(1.5)
                        if write == "untracked_then_load_state_dict":
                            optimizer.load_state_dict(copy.deepcopy(saved))
            optimizer.step()
        same = all(torch.equal(a, b) for a, b in zip(*models))
        assert same == (write != "untracked" or step < 3), (write, step)
    assert optimizers[1]._known_w_squares and not optimizers[0]._known_w_squares


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", ["nesterov_eps", "no_momentum"])
def test_half_parameters_on_the_cpu_match_algorithm_1(config, dtype):
    """Half-precision gradients with float32 master weights take the torch path on the CPU."""
    weights = [torch.nn.Parameter(w.detach().to(dtype)) for w in make_weights(SHAPES[:8], torch.float32, seed=13)]
    check_each_step(weights, CONFIGS[config], dtype, steps=10)


def test_the_torch_path_matches_algorithm_1():
    """Non-contiguous parameters take lars_step_torch."""
    storage = make_weights([(2 * s[0], *s[1:]) if s and s[0] else s for s in SHAPES[4:8]], torch.float64, seed=5)
    weights = [torch.nn.Parameter(t.detach()[::2]) if t.numel() else t for t in storage]
    assert not all(w.is_contiguous() for w in weights)
    reference = run_both(weights, CONFIGS["nesterov_eps"], 50, torch.float64)
    assert_matches(weights, reference, rtol=1e-6, atol_scale=1e-12)


def test_momentum_correction_follows_lr_changes():
    weights = make_weights(SHAPES[4:8], torch.float64, seed=6)
    reference = run_both(weights, CONFIGS["plain"], 50, torch.float64, lr_at=lambda step: 0.1 + 0.02 * (step % 7))
    assert_matches(weights, reference, rtol=1e-6, atol_scale=1e-12)


def test_momentum_correction_changes_the_result():
    """The correction is really applied: without it the weights differ."""
    weights = make_weights([(20, 30)], torch.float64, seed=7)
    reference = run_both(weights, CONFIGS["plain"], 5, torch.float64, lr_at=lambda step: 0.1 * (step + 1))
    uncorrected = reference_for(make_weights([(20, 30)], torch.float64, seed=7), CONFIGS["plain"])
    for step in range(5):
        uncorrected.lr, uncorrected.last_lr = 0.1 * (step + 1), None
        uncorrected.step([g.numpy() for g in gradients([(20, 30)], torch.float64, 1, step)])
    assert not np.allclose(reference.w[0], uncorrected.w[0], rtol=1e-6)
    assert_matches(weights, reference, rtol=1e-6, atol_scale=1e-12)


def test_float16_parameters_step_through_float32_master_weights():
    weights = make_weights([(33, 40), (40,)], torch.float16, seed=8)
    optimizer = LARS(weights, **CONFIGS["plain"])
    reference = reference_for([w.float() for w in weights], CONFIGS["plain"])
    for step in range(20):
        grads = gradients([(33, 40), (40,)], torch.float16, 3, step)
        for w, g in zip(weights, grads):
            w.grad = g
        optimizer.step()
        reference.step([g.float().numpy() for g in grads])
    for w, expected in zip(weights, reference.w):
        assert optimizer.state[w]["master_weight"].dtype == torch.float32
        np.testing.assert_allclose(optimizer.state[w]["master_weight"].double().numpy(), expected, rtol=1e-5,
                                   atol=1e-6)
        torch.testing.assert_close(w, optimizer.state[w]["master_weight"].half())


def test_state_dict_round_trip_continues_bitwise():
    def train(optimizer, weights, steps, first):
        for step in range(first, first + steps):
            for w, g in zip(weights, gradients(SHAPES[4:8], torch.float32, 9, step)):
                w.grad = g
            optimizer.step()
            optimizer.param_groups[0]["lr"] *= 0.9  # exercises the saved momentum_lr

    straight = make_weights(SHAPES[4:8], torch.float32, seed=10)
    optimizer = LARS(straight, **CONFIGS["nesterov_eps"])
    train(optimizer, straight, 20, 0)

    resumed = make_weights(SHAPES[4:8], torch.float32, seed=10)
    first = LARS(resumed, **CONFIGS["nesterov_eps"])
    train(first, resumed, 10, 0)
    saved = copy.deepcopy(first.state_dict())
    assert set(saved["state"][0]) == {"momentum_buffer", "momentum_lr"}
    second = LARS(resumed, lr=123.0)
    second.load_state_dict(saved)
    train(second, resumed, 10, 10)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_one_dimensional_parameters_skip_adaptation_by_default():
    """A bias with the paper's tiny trust coefficient would barely move if it
    adapted; skipping, it takes the plain step lr * g."""
    bias = torch.nn.Parameter(torch.ones(5))
    matrix = torch.nn.Parameter(torch.ones(5, 5))
    optimizer = LARS([bias, matrix], lr=0.1, momentum=0.0, weight_decay=0.5)
    bias.grad, matrix.grad = torch.ones(5), torch.ones(5, 5)
    optimizer.step()
    torch.testing.assert_close(bias.detach(), torch.full((5,), 0.9))
    ratio = 0.001 * 5.0 / (5.0 + 0.5 * 5.0)
    torch.testing.assert_close(matrix.detach(), torch.full((5, 5), 1 - 0.1 * ratio * 1.5))


def test_groups_override_the_skip_rule():
    bias = torch.nn.Parameter(torch.ones(4))
    optimizer = LARS([{"params": [bias], "skip_adaptation": False}], lr=0.1, momentum=0.0, weight_decay=0.0)
    bias.grad = torch.ones(4)
    optimizer.step()
    torch.testing.assert_close(bias.detach(), torch.full((4,), 1 - 0.1 * 0.001))


def test_parameters_without_gradients_are_left_alone():
    a, b = torch.nn.Parameter(torch.ones(3, 3)), torch.nn.Parameter(torch.ones(3, 3))
    optimizer = LARS([a, b], lr=1.0)
    a.grad = torch.ones(3, 3)
    optimizer.step()
    assert torch.equal(b.detach(), torch.ones(3, 3)) and b not in optimizer.state
    assert not torch.equal(a.detach(), torch.ones(3, 3))


@pytest.mark.parametrize("bad, message", [
    (dict(lr=-0.1), "lr must be >= 0"),
    (dict(momentum=-0.5), "momentum must be in"),
    (dict(momentum=1.0), "momentum must be in"),
    (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
    (dict(trust_coefficient=0.0), "trust_coefficient must be > 0"),
    (dict(eps=-1.0), "eps must be >= 0"),
    (dict(momentum=0.0, nesterov=True), "nesterov needs momentum"),
    (dict(skip_adaptation="yes"), "skip_adaptation must be"),
])
def test_bad_hyperparameters_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        LARS([torch.nn.Parameter(torch.ones(2, 2))], **({"lr": 0.1} | bad))


def test_a_negative_lr_set_later_raises_at_step():
    w = torch.nn.Parameter(torch.ones(2, 2))
    optimizer = LARS([w], lr=0.1)
    w.grad = torch.ones(2, 2)
    optimizer.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optimizer.step()
    assert torch.equal(w.detach(), torch.ones(2, 2))


def test_sparse_gradients_raise():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = LARS(embedding.parameters(), lr=0.1)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()


def test_mixed_devices_in_a_group_raise():
    cpu = torch.nn.Parameter(torch.ones(2, 2))
    meta = torch.nn.Parameter(torch.ones(2, 2, device="meta"))
    cpu.grad, meta.grad = torch.ones(2, 2), torch.ones(2, 2, device="meta")
    optimizer = LARS([cpu, meta], lr=0.1)
    with pytest.raises(ValueError, match="on one device"):
        optimizer.step()
    assert torch.equal(cpu.detach(), torch.ones(2, 2))


def test_the_fused_binding_rejects_mismatched_lists():
    w, g = torch.ones(4), torch.ones(5)
    args = dict(lr=0.1, momentum=0.0, weight_decay=0.0, trust_coefficient=0.001, eps=0.0, nesterov=False,
                trust_clip=False, threads=1)
    with pytest.raises(ValueError, match="grads\\[0\\] has 5 elements"):
        _C.lars_step([w], [g], None, [True], [1.0], **args)
    with pytest.raises(ValueError, match="grads\\[0\\] is float64"):
        _C.lars_step([w], [g[:4].double()], None, [True], [1.0], **args)
    with pytest.raises(ValueError, match="differ in length"):
        _C.lars_step([w], [], None, [True], [1.0], **args)
    with pytest.raises(ValueError, match="float32 or float64"):
        _C.lars_step([w.half()], [w.half()], None, [True], [1.0], **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", ["plain", "nesterov_eps", "clip", "clip_below_lr", "no_momentum"])
def test_cuda_step_matches_algorithm_1(config, dtype):
    """The fused CUDA step (the torch path where it is not built), with
    half-precision parameters and gradients on float32 master weights."""
    weights = [torch.nn.Parameter(w.detach().to("cuda", dtype))
               for w in make_weights(SHAPES, torch.float32, seed=11, zero={3})]
    check_each_step(weights, CONFIGS[config], dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_is_bitwise_repeatable():
    """The norms are summed in a fixed order, so two runs give the same bits
    (as every rank of a data-parallel job must)."""
    def run():
        weights = [torch.nn.Parameter(w.detach().cuda()) for w in make_weights(SHAPES, torch.float32, seed=12)]
        optimizer = LARS(weights, **CONFIGS["plain"])
        for step in range(5):
            for w, g in zip(weights, gradients(SHAPES, torch.float32, 5, step)):
                w.grad = g.cuda()
            optimizer.step()
        return [w.detach().cpu() for w in weights]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_lars_step_torch_is_exported_and_in_place():
    w, g, v = torch.ones(3, 3), torch.ones(3, 3), torch.zeros(3, 3)
    lars_step_torch([w], [g], [v], [True], [1.0], lr=1.0, momentum=0.9, weight_decay=0.0,
                    trust_coefficient=0.001, eps=0.0, nesterov=False, trust_clip=False)
    torch.testing.assert_close(w, torch.full((3, 3), 1 - 0.001))
    torch.testing.assert_close(v, torch.full((3, 3), 0.001))


def test_the_cuda_kernels_are_built_wherever_nvcc_is():
    """CI has nvcc but no GPU: the CUDA module must still build and load."""
    import os
    import shutil

    from pyallreduce import build_info

    if shutil.which("nvcc") is None or os.environ.get("PYALLREDUCE_CUDA") == "0":
        pytest.skip("no nvcc here")
    assert build_info()["cuda_built"]
    from pyallreduce import _cuda

    # 100,000 elements take two blocks of 65,536, 5 take one, 0 none: two sums each.
    assert _cuda.lars_workspace_elements([100_000, 0, 5]) == 6
    with pytest.raises(ValueError, match="not a CUDA tensor"):
        _cuda.lars_step([torch.ones(3)], [torch.ones(3)], None, [True], [1.0], lr=0.1, momentum=0.9,
                        weight_decay=0.0, trust_coefficient=0.001, eps=0.0, nesterov=False, trust_clip=False,
                        workspace=torch.ones(2, dtype=torch.float64), stream=0)


@pytest.mark.parametrize("contiguous", [True, False], ids=["fused", "torch path"])
def test_a_nan_gradient_makes_its_whole_tensor_nan_on_every_path(contiguous):
    """The trust ratio of a gradient with a NaN is NaN, so every element of
    that tensor steps to NaN, the other tensors not at all."""
    storage = [torch.ones(4, 6), torch.ones(3, 5)]
    weights = [torch.nn.Parameter(t if contiguous else t.t()) for t in storage]
    for w in weights:
        w.grad = torch.full_like(w, 0.5)
    weights[0].grad[1, 2] = float("nan")
    LARS(weights, lr=0.1, momentum=0.9, weight_decay=1e-4).step()
    assert torch.isnan(weights[0]).all()
    assert not torch.isnan(weights[1]).any()


@pytest.mark.parametrize("nesterov", [False, True])
def test_a_step_at_lr_0_keeps_the_momentum_as_torch_sgd_does(nesterov):
    # Without adaptation or weight decay LARS is SGD with momentum; across a
    # schedule that passes through lr 0, it must stay SGD's trajectory.
    torch.manual_seed(0)
    start = torch.randn(6, 5, dtype=torch.float64)
    ours = start.clone().requires_grad_()
    theirs = start.clone().requires_grad_()
    lars = LARS([ours], lr=0.1, momentum=0.9, weight_decay=0.0, skip_adaptation=True, nesterov=nesterov)
    sgd = torch.optim.SGD([theirs], lr=0.1, momentum=0.9, nesterov=nesterov)
    for lr in [0.1, 0.2, 0.0, 0.0, 0.15, 0.05]:
        grad = torch.randn(6, 5, dtype=torch.float64)
        for optimizer, weight in ((lars, ours), (sgd, theirs)):
            for group in optimizer.param_groups:
                group["lr"] = lr
            weight.grad = grad.clone()
            optimizer.step()
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
