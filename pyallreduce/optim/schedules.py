"""The large-batch learning-rate recipe as torch LR schedulers.

    lr = linear_scaling_rule(0.1, global_batch=8192)          # 0.1 * 8192 / 256 = 3.2
    opt = LARS(model.parameters(), lr=lr)
    sched = warmup_poly_decay(opt, warmup_steps=5 * steps_per_epoch,
                              total_steps=90 * steps_per_epoch)
    for ...: train_step(); sched.step()                       # once per iteration

- Linear scaling rule (Goyal et al.): multiply the learning rate by k when the
  batch grows k-fold; ``linear_scaling_rule`` gives base_lr * batch / 256.
- Gradual warm-up (Goyal et al.): ramp linearly from a fraction of the target
  rate to the target over the first steps (``warmup``, a torch ``LinearLR``).
- Polynomial decay (LARS paper, power 2): lr * (1 - t / T)^2 down to 0 at
  step T (``poly_decay``, a torch ``PolynomialLR``).
- ``warmup_poly_decay`` composes the two with torch's ``SequentialLR``.
Each returns a plain torch scheduler, so they compose further with any other.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LinearLR, LRScheduler, PolynomialLR, SequentialLR

REFERENCE_BATCH = 256


def linear_scaling_rule(base_lr: float, global_batch: int, reference_batch: int = REFERENCE_BATCH) -> float:
    """base_lr * global_batch / reference_batch: the rate for ``global_batch``
    when ``base_lr`` suits ``reference_batch`` (256 in Goyal et al.)."""
    if base_lr < 0 or global_batch <= 0 or reference_batch <= 0:
        raise ValueError("linear_scaling_rule needs base_lr >= 0 and positive batch sizes, "
                         f"got {base_lr}, {global_batch}, {reference_batch}")
    return base_lr * global_batch / reference_batch


def warmup(optimizer: torch.optim.Optimizer, steps: int, start_factor: float = 0.1) -> LinearLR:
    """Linear warm-up from ``start_factor`` x the optimizer's lr to the full
    lr over ``steps`` scheduler steps, then constant. Goyal et al. start at
    the small-batch rate: start_factor = 1 / k for a k-fold larger batch."""
    if steps <= 0 or not 0 < start_factor <= 1:
        raise ValueError(f"warmup needs steps > 0 and 0 < start_factor <= 1, got {steps}, {start_factor}")
    return LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=steps)


def poly_decay(optimizer: torch.optim.Optimizer, steps: int, power: float = 2.0) -> PolynomialLR:
    """lr * (1 - t / steps)^power for t < steps, then 0 (power 2 in the LARS paper)."""
    if steps <= 0 or power <= 0:
        raise ValueError(f"poly_decay needs steps > 0 and power > 0, got {steps}, {power}")
    return PolynomialLR(optimizer, total_iters=steps, power=power)


def warmup_poly_decay(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 0.1,
    power: float = 2.0,
) -> LRScheduler:
    """Warm-up over ``warmup_steps``, then polynomial decay to 0 at ``total_steps``."""
    if not 0 < warmup_steps < total_steps:
        raise ValueError(f"need 0 < warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
    return SequentialLR(
        optimizer,
        [warmup(optimizer, warmup_steps, start_factor), poly_decay(optimizer, total_steps - warmup_steps, power)],
        milestones=[warmup_steps],
    )
