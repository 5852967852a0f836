"""The benchmark's input data and its float64 reference, for every collective.

Rank k's element i is a small integer, ((i + 3k) mod 11) - 5 (for prod: +1 or
-1), so sums, minima, maxima and products are exact in every dtype at any
world size the benchmark meets (|sum| <= 5p); only avg rounds, once. Every
rank's input is its own values at indices 0, 1, ...: an allgather's input is
its block, a broadcast's root sends its own and the others start with theirs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Blocks of this many elements keep the float64 reference small for 256 MiB messages.
_BLOCK = 1 << 20
_EPS = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def rank_values(rank: Any, op: str, indices: np.ndarray) -> np.ndarray:
    """Rank `rank`'s input elements at `indices`, in float64 (`rank` an int
    or an array beside `indices`)."""
    if op == "prod":
        return np.where((indices + rank) % 2 == 0, 1.0, -1.0)
    return ((indices + 3 * rank) % 11 - 5).astype(np.float64)


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
        block = rank_values(rank, op, np.arange(start, stop))
        if isinstance(x, np.ndarray):
            x[start:stop] = block
        else:
            import torch

            x[start:stop] = torch.from_numpy(block).to(x.device)


def _reduced(op: str, world_size: int, indices: np.ndarray) -> np.ndarray:
    inputs = np.stack([rank_values(k, op, indices) for k in range(world_size)])
    return {
        "sum": lambda: inputs.sum(0),
        "avg": lambda: inputs.sum(0) / world_size,
        "min": lambda: inputs.min(0),
        "max": lambda: inputs.max(0),
        "prod": lambda: inputs.prod(0),
    }[op]()


def expected(collective: str, op: str, world_size: int, rank: int, root: int, block: int,
             indices: np.ndarray) -> np.ndarray:
    """The float64 reference of rank `rank`'s result at `indices`, `block`
    the elements per rank of a collective that has blocks.

    A reduce-scatter's result element i is element r*m + i of the reduction
    (m the block length, r the rank); an allgather's is element i % m of rank
    i // m's input, e.g. m = 3: result 7 is rank 2's element 1.
    """
    if collective == "allreduce":
        return _reduced(op, world_size, indices)
    if collective == "reduce_scatter":
        return _reduced(op, world_size, rank * block + indices)
    if collective == "allgather":
        return rank_values(indices // block, op, indices % block)
    return rank_values(root, op, indices)


def count_wrong(result: Any, collective: str, op: str, dtype: str, world_size: int, rank: int, root: int = 0,
                block: int = 0) -> int:
    """How many elements of this rank's result differ from the float64
    reference: exactly for every collective and op but avg, within one
    rounding for avg (integers: rounded toward zero)."""
    values = _as_numpy(result)
    wrong = 0
    for start in range(0, len(values), _BLOCK):
        stop = min(start + _BLOCK, len(values))
        reference = expected(collective, op, world_size, rank, root, block, np.arange(start, stop))
        got = values[start:stop].astype(np.float64)
        if op == "avg" and dtype.startswith("int"):
            reference = np.trunc(reference)
        if op == "avg" and not dtype.startswith("int"):
            bad = np.abs(got - reference) > _EPS[dtype] * np.abs(reference)
        else:
            bad = got != reference
        wrong += int(np.count_nonzero(bad))
    return wrong
