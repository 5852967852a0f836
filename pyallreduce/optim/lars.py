"""LARS: layer-wise adaptive rate scaling (You, Gitman and Ginsburg, 2017), fused.

    opt = pyallreduce.optim.LARS(model.parameters(), lr=2.0, momentum=0.9, weight_decay=5e-4)

Each step updates every tensor of a parameter group in one call: the fused C++
step for contiguous CPU float32/float64 tensors, the fused CUDA step
(pyallreduce._cuda, where it was built) for float32 CUDA weights (float16 and
bfloat16 parameters step through float32 master weights, so they qualify) with
float32/float16/bfloat16 gradients, and otherwise :func:`lars_step_torch`, the
same update in plain PyTorch. The CUDA step runs on the current stream and
never waits for the device.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Iterable
from typing import Any, Callable

import torch

from .. import _C

_FUSED_CPU_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each tensor is scaled by its trust ratio.

    For each parameter tensor w with gradient g and momentum buffer v
    (Algorithm 1 of the LARS paper, momentum in the "lr inside" form):

        local_lr = trust_coefficient * |w| / (|g| + weight_decay * |w| + eps)
                   (1 where |w| or |g| is 0; min(local_lr / lr, 1) with trust_clip)
        v = momentum * v + lr * local_lr * (g + weight_decay * w)
        w = w - v                  (nesterov: w - (momentum * v + lr * local_lr * (g + weight_decay * w)))

    Tensors that skip adaptation (by default those with one dimension:
    biases and BatchNorm's weights) take a plain momentum step without weight
    decay: v = momentum * v + lr * g.

    When the learning rate changes between steps (a schedule), v is first
    scaled by lr_new / lr_old, Goyal et al.'s momentum correction (remark 2),
    which keeps the update the same as in the "v = m*v + g; w -= lr*v" form.
    A step at lr 0 leaves the parameters and keeps the momentum, as
    torch.optim.SGD does: the gradient is folded into v at the last nonzero
    lr, which the next step's correction then scales from.

    A gradient with a NaN has a NaN norm and so a NaN trust ratio: its whole
    tensor steps to NaN, on the fused paths and the torch path alike.

    float16/bfloat16 parameters are updated through float32 master weights
    kept in the optimizer state ("master_weight"), and their momentum is
    float32. The momentum buffer is stored under "momentum_buffer", as
    torch.optim.SGD does, with the lr it was last updated with under
    "momentum_lr".

    Args:
        params: parameters or parameter groups. A group may set any of the
            keyword arguments below, and ``skip_adaptation``: None (default:
            tensors with one dimension skip), True (all of the group's tensors
            skip) or False (none do).
        lr: the global learning rate, >= 0.
        momentum: in [0, 1).
        weight_decay: L2 factor, >= 0; not applied to skipping tensors.
        trust_coefficient: eta of the paper, > 0.
        eps: added to the trust ratio's denominator, >= 0.
        nesterov: Nesterov momentum (needs momentum > 0).
        trust_clip: LARC's clip mode: the effective rate is
            min(local_lr, lr) instead of lr * local_lr.
        carry_norms: on the fused CPU step, keep each weight tensor's norm
            as the step leaves it, so that the next step reads only the
            gradient for its norms (one read of w less for tensors too large
            to stay in the cache between the norms and the update; the same
            bits either way). The norm is used only while the tensor's version
            counter says nothing has written it since, which in-place torch
            operations and load_state_dict do; writes that torch does not
            count (through ``.data``, numpy, or a collective writing the
            tensor's memory, such as pyallreduce's ``comm.broadcast``) must be
            followed by ``torch.autograd.graph.increment_version(p)``, or
            leave this off (the default).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        nesterov: bool = False,
        trust_clip: bool = False,
        skip_adaptation: bool | None = None,
        carry_norms: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, nesterov=nesterov, trust_clip=trust_clip, skip_adaptation=skip_adaptation)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_hyperparameters(group)
        # With carry_norms, for each parameter the fused CPU step took: the sum
        # of squares of its weights that step left, and the weights'
        # (data_ptr, _version) then. While those still match, the next step
        # takes the sum as known. Not part of the state_dict: it describes
        # these tensors, not a checkpoint.
        self._carry_norms = carry_norms
        self._known_w_squares: dict[torch.Tensor, tuple[float, int, int]] = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._known_w_squares.clear()
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _check_hyperparameters(group)
            params = [p for p in group["params"] if p.grad is not None]
            _check_tensors(params)
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        lr, momentum = float(group["lr"]), float(group["momentum"])
        skip = group["skip_adaptation"]
        if lr == 0 and momentum != 0:
            self._momentum_at_zero_lr(group, params)
            return
        weights, grads, buffers, adapt, corrections = [], [], [], [], []
        for p in params:
            state = self.state[p]
            if p.dtype in _HALF_DTYPES and "master_weight" not in state:
                state["master_weight"] = p.detach().float()
            weights.append(state.get("master_weight", p))
            grads.append(p.grad)
            adapt.append(p.ndim > 1 if skip is None else not skip)
            correction = 1.0
            if momentum != 0:
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(weights[-1], memory_format=torch.contiguous_format)
                elif state.get("momentum_lr"):
                    correction = lr / state["momentum_lr"]
                state["momentum_lr"] = lr
                buffers.append(state["momentum_buffer"])
            corrections.append(correction)
        hyper = dict(lr=lr, momentum=momentum, weight_decay=float(group["weight_decay"]),
                     trust_coefficient=float(group["trust_coefficient"]), eps=float(group["eps"]),
                     nesterov=bool(group["nesterov"]), trust_clip=bool(group["trust_clip"]))
        known = ([self._carried_w_squares(p, w) for p, w in zip(params, weights)] if self._carry_norms
                 else [math.nan] * len(params))
        left = _fused_step(weights, grads, buffers if momentum != 0 else None, adapt, corrections, hyper, known)
        for p, w, w_squares in zip(params, weights, left):
            if w is p:
                torch.autograd.graph.increment_version(p)  # the fused steps write through raw pointers
            else:
                p.copy_(w)
            if not self._carry_norms:
                continue
            if math.isnan(w_squares):
                self._known_w_squares.pop(p, None)
            else:
                self._known_w_squares[p] = (w_squares, w.data_ptr(), w._version)

    def _carried_w_squares(self, p: torch.Tensor, w: torch.Tensor) -> float:
        """The sum of squares of w that the last step left, if nothing has
        written w since; else NaN."""
        value, ptr, version = self._known_w_squares.get(p, (math.nan, -1, -1))
        return value if (ptr, version) == (w.data_ptr(), w._version) else math.nan

    def _momentum_at_zero_lr(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """torch's SGD at lr 0 leaves the parameters and still folds the
        gradient into its momentum. v here is the last lr times torch's, so
        the fold runs at that lr, into a throwaway copy of each parameter,
        and that lr stays the one the next step corrects from. A parameter
        with no momentum yet keeps none (its step at lr 0 is zero)."""
        for p in params:
            state = self.state[p]
            last_lr = state.get("momentum_lr")
            if not last_lr:
                continue
            skip = group["skip_adaptation"]
            lars_step_torch([state.get("master_weight", p).detach().clone()], [p.grad], [state["momentum_buffer"]],
                            [p.ndim > 1 if skip is None else not skip], [1.0], lr=float(last_lr),
                            momentum=float(group["momentum"]), weight_decay=float(group["weight_decay"]),
                            trust_coefficient=float(group["trust_coefficient"]), eps=float(group["eps"]),
                            nesterov=bool(group["nesterov"]), trust_clip=bool(group["trust_clip"]))


def lars_step_torch(
    weights: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor] | None,
    adapt: list[bool],
    momentum_corrections: list[float],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    nesterov: bool,
    trust_clip: bool,
) -> None:
    """The LARS update of :class:`LARS`, tensor by tensor in plain PyTorch, in
    place: the path for tensors no fused step takes. Norms are taken in
    float64; nothing waits for the device (the trust ratio stays a tensor)."""
    for i, (w, g) in enumerate(zip(weights, grads)):
        g = g.to(w.dtype)
        if adapt[i]:
            w_norm = torch.linalg.vector_norm(w, dtype=torch.float64)
            g_norm = torch.linalg.vector_norm(g, dtype=torch.float64)
            ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
            if trust_clip and lr > 0:
                ratio = ratio.clamp(max=lr) / lr  # LARC's clip: the rate lr * ratio is min(ratio, lr)
            # 1 where a norm is 0; a NaN norm keeps the ratio NaN, as in the fused steps.
            ratio = torch.where((w_norm == 0) | (g_norm == 0), torch.ones_like(ratio), ratio)
            step = g.add(w, alpha=weight_decay).mul_((lr * ratio).to(w.dtype))
        else:
            step = g.mul(lr)
        if momentum_buffers is None:
            w.sub_(step)
            continue
        v = momentum_buffers[i]
        v.mul_(momentum * momentum_corrections[i]).add_(step)
        w.sub_(v.mul(momentum).add_(step) if nesterov else v)


def _fused_step(weights, grads, momentum_buffers, adapt, corrections, hyper, known_w_squares) -> list[float]:
    """Sends each tensor to the fused step that can take it: C++ for
    contiguous CPU float32/float64, CUDA (when built) for contiguous float32
    CUDA weights, and lars_step_torch for the rest. known_w_squares: as
    _C.lars_step takes them, per tensor. Returns what the C++ step returned for
    its tensors (the sums of squares it left), NaN for the others."""
    left = [math.nan] * len(weights)
    by_path: dict[tuple[str, torch.device, torch.dtype, torch.dtype], list[int]] = {}
    for i, (w, g) in enumerate(zip(weights, grads)):
        contiguous = w.is_contiguous() and g.is_contiguous()
        if w.device.type == "cpu" and w.dtype in _FUSED_CPU_DTYPES and g.dtype == w.dtype and contiguous:
            path = "cpu"
        elif w.device.type == "cuda" and w.dtype == torch.float32 and contiguous and _cuda_kernels() is not None:
            path = "cuda"
        else:
            path = "torch"
        by_path.setdefault((path, w.device, w.dtype, g.dtype), []).append(i)
    for (path, device, _, _), indices in by_path.items():
        args = (
            [weights[i] for i in indices],
            [grads[i] for i in indices],
            None if momentum_buffers is None else [momentum_buffers[i] for i in indices],
            [adapt[i] for i in indices],
            [corrections[i] for i in indices],
        )
        if path == "cpu":
            sums = _C.lars_step(*args, **hyper, threads=torch.get_num_threads(),
                                known_w_squares=[known_w_squares[i] for i in indices])
            for i, w_squares in zip(indices, sums):
                left[i] = w_squares
        elif path == "cuda":
            kernels = _cuda_kernels()
            workspace = torch.empty(kernels.lars_workspace_elements([w.numel() for w in args[0]]),
                                    dtype=torch.float64, device=device)
            with torch.cuda.device(device):
                kernels.lars_step(*args, **hyper, workspace=workspace,
                                  stream=torch.cuda.current_stream(device).cuda_stream)
        else:
            lars_step_torch(*args, **hyper)
    return left


@functools.cache
def _cuda_kernels():
    """The module pyallreduce._cuda when the CUDA kernels were built, else None
    (looked up once: it is asked per CUDA tensor on every step)."""
    if importlib.util.find_spec("pyallreduce._cuda") is None:
        return None
    from .. import _cuda

    return _cuda


def _check_hyperparameters(group: dict[str, Any]) -> None:
    checks = [
        ("lr", group["lr"] >= 0, ">= 0"),
        ("momentum", 0 <= group["momentum"] < 1, "in [0, 1)"),
        ("weight_decay", group["weight_decay"] >= 0, ">= 0"),
        ("trust_coefficient", group["trust_coefficient"] > 0, "> 0"),
        ("eps", group["eps"] >= 0, ">= 0"),
    ]
    for name, ok, wanted in checks:
        if not ok:
            raise ValueError(f"LARS: {name} must be {wanted}, got {group[name]}")
    if group["nesterov"] and group["momentum"] == 0:
        raise ValueError("LARS: nesterov needs momentum > 0")
    if group["skip_adaptation"] not in (None, True, False):
        raise ValueError(f"LARS: skip_adaptation must be None, True or False, got {group['skip_adaptation']!r}")


def _check_tensors(params: list[torch.Tensor]) -> None:
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(f"LARS: a parameter group's tensors must be on one device, found {sorted(map(str, devices))}")
    for p in params:
        if p.grad.is_sparse:
            raise RuntimeError("LARS does not support sparse gradients")
        if not p.is_floating_point():
            raise TypeError(f"LARS updates floating-point parameters, not {p.dtype}")
        if p.grad.shape != p.shape:
            raise ValueError(f"LARS: a gradient of shape {tuple(p.grad.shape)} for a parameter of {tuple(p.shape)}")
