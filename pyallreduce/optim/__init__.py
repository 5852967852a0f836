"""The optimizer side of large-batch training: a fused LARS step and the
learning-rate recipe (linear scaling, gradual warm-up, polynomial decay)."""

from .._optional import require

require("torch", "torch", "pyallreduce.optim")

from .lars import LARS, lars_step_torch
from .schedules import linear_scaling_rule, poly_decay, warmup, warmup_poly_decay

__all__ = ["LARS", "lars_step_torch", "linear_scaling_rule", "poly_decay", "warmup", "warmup_poly_decay"]
