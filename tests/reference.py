"""Inputs and float64 references shared by the in-process and MPI tests.

Each rank's input is a pure function of (seed, rank, world size, dtype, op,
count), so any rank can rebuild every other rank's input and the reference.
"""

from __future__ import annotations

import numpy as np
import torch

ALGORITHMS = ("ring", "halving_doubling", "recursive_doubling", "hierarchical", "auto")
# hierarchical's flat algorithms between hosts (PYALLREDUCE_ALGO_BETWEEN_HOSTS).
FLAT_ALGORITHMS = ("ring", "halving_doubling", "recursive_doubling")
OPS = ("sum", "avg", "min", "max", "prod")
DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64")
INTEGER_DTYPES = ("int32", "int64")

# Machine epsilon of each float dtype: the bound below scales with it.
_EPS = {"float32": 2.0**-23, "float64": 2.0**-52, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def counts_for(world_size: int) -> list[int]:
    """The element counts every algorithm is checked on at this world size."""
    return sorted({0, 1, 2, max(world_size - 1, 0), world_size, world_size + 1, 1000, 99991})


def rank_inputs(world_size: int, dtype: str, op: str, count: int, seed: int = 0) -> torch.Tensor:
    """Every rank's input as a (world_size, count) tensor; row r is rank r's.

    Values are chosen so no reduction overflows: products of factors in
    [0.5, 1.5] (floats) or {-1, 1, 2} (integers, at most 2^world_size).
    """
    rng = np.random.default_rng([seed, world_size, DTYPES.index(dtype), OPS.index(op), count])
    shape = (world_size, count)
    if dtype in INTEGER_DTYPES:
        values = rng.choice([-1, 1, 2], size=shape) if op == "prod" else rng.integers(-1000, 1000, size=shape)
        return torch.from_numpy(values.astype(dtype))
    values = rng.uniform(0.5, 1.5, size=shape) if op == "prod" else rng.uniform(-1.0, 1.0, size=shape)
    return torch.from_numpy(values).to(getattr(torch, dtype))


def check_result(result: torch.Tensor, inputs: torch.Tensor, op: str) -> None:
    """Raises AssertionError unless `result` is the reduction of the rows of
    `inputs` (all ranks' inputs): exactly for integers and min/max, within a
    rounding bound for float sum/avg/prod, computed in float64."""
    world_size = inputs.shape[0]
    dtype = str(inputs.dtype).removeprefix("torch.")
    assert result.dtype == inputs.dtype and result.shape == inputs.shape[1:], (result.dtype, result.shape)
    if dtype in INTEGER_DTYPES:
        exact = inputs.to(torch.int64)
        if op in ("sum", "avg"):
            total = exact.sum(0)
            # avg rounds toward zero: divide magnitudes, restore the sign.
            expected = total if op == "sum" else torch.sign(total) * (total.abs() // world_size)
        elif op == "prod":
            expected = exact.prod(0)
        else:
            expected = exact.amin(0) if op == "min" else exact.amax(0)
        assert torch.equal(result.to(torch.int64), expected), f"{op} {dtype}: integer result differs"
        return
    wide = inputs.to(torch.float64)
    got = result.to(torch.float64)
    if op in ("min", "max"):
        expected = wide.amin(0) if op == "min" else wide.amax(0)
        assert torch.equal(got, expected), f"{op} {dtype}: min/max must be exact"
        return
    eps = _EPS[dtype]
    if op == "prod":
        expected = wide.prod(0)
        bound = (world_size + 1) * eps * expected.abs()
    else:
        expected = wide.sum(0)
        # Each of the world_size - 1 combines rounds once to the dtype, on a
        # partial sum no larger than the sum of magnitudes.
        bound = (world_size + 1) * eps * wide.abs().sum(0)
        if op == "avg":
            expected = expected / world_size
            bound = bound / world_size + eps * expected.abs()
    error = (got - expected).abs()
    worst = int(error.sub(bound).argmax()) if error.numel() else 0
    assert bool((error <= bound).all()), (
        f"{op} {dtype} p={world_size}: element {worst} is {float(got[worst])}, "
        f"float64 reference {float(expected[worst])}, bound {float(bound[worst])}"
    )


def result_bytes(result: torch.Tensor) -> bytes:
    """The raw bytes of a result, for bitwise comparison across ranks."""
    if result.numel() == 0:
        return b""  # an empty tensor's stride cannot be reinterpreted as bytes
    return result.contiguous().view(torch.uint8).numpy().tobytes()
