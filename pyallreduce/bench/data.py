"""The benchmark's input data and its float64 reference.

Rank k's element i is a small integer, ((i + 3k) mod 11) - 5 (for prod: +1 or
-1), so sums, minima, maxima and products are exact in every dtype at any
world size the benchmark meets (|sum| <= 5p); only avg rounds, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Blocks of this many elements keep the float64 reference small for 256 MiB messages.
_BLOCK = 1 << 20
_EPS = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def rank_values(rank: int, op: str, start: int, stop: int) -> np.ndarray:
    """Rank `rank`'s input elements [start, stop) in float64."""
    i = np.arange(start, stop, dtype=np.int64)
    if op == "prod":
        return np.where((i + rank) % 2 == 0, 1.0, -1.0)
    return ((i + 3 * rank) % 11 - 5).astype(np.float64)


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy view (bfloat16 and CUDA tensors: a float32 or host copy)."""
    if isinstance(x, np.ndarray):
        return x
    import torch

    x = x.cpu()
    return x.to(torch.float32).numpy() if x.dtype == torch.bfloat16 else x.numpy()


def fill(x: Any, rank: int, op: str) -> None:
    """Writes rank `rank`'s input into x (a numpy array or a torch tensor)."""
    for start in range(0, len(x), _BLOCK):
        stop = min(start + _BLOCK, len(x))
        block = rank_values(rank, op, start, stop)
        if isinstance(x, np.ndarray):
            x[start:stop] = block
        else:
            import torch

            x[start:stop] = torch.from_numpy(block).to(x.device)


def count_wrong(result: Any, op: str, dtype: str, world_size: int) -> int:
    """How many elements of an allreduce result differ from the float64
    reference: exactly for sum/min/max/prod, within one rounding for avg
    (integers: rounded toward zero)."""
    values = _as_numpy(result)
    wrong = 0
    for start in range(0, len(values), _BLOCK):
        stop = min(start + _BLOCK, len(values))
        inputs = np.stack([rank_values(k, op, start, stop) for k in range(world_size)])
        reference = {
            "sum": inputs.sum(0),
            "avg": inputs.sum(0) / world_size,
            "min": inputs.min(0),
            "max": inputs.max(0),
            "prod": inputs.prod(0),
        }[op]
        got = values[start:stop].astype(np.float64)
        if op == "avg" and dtype.startswith("int"):
            reference = np.trunc(reference)
        if op == "avg" and not dtype.startswith("int"):
            bad = np.abs(got - reference) > _EPS[dtype] * np.abs(reference)
        else:
            bad = got != reference
        wrong += int(np.count_nonzero(bad))
    return wrong
