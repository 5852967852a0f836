"""The same checks over the real MPI transport: pytest launches mpiexec."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("mpi_worker.py")


def mpiexec() -> str:
    beside_python = Path(sys.executable).parent / "mpiexec"
    found = str(beside_python) if beside_python.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpiexec not found: install an MPI (pip install mpich)")
    return found


def launch(worker: Path, ranks: int, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """Runs `mpiexec -n ranks python worker args...` (one thread per rank,
    PYALLREDUCE_ALGO unset) in `cwd`; returns the process and its stdout + stderr."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("PYALLREDUCE_ALGO", None)
    result = subprocess.run(
        [mpiexec(), "-n", str(ranks), sys.executable, str(worker), *args],
        capture_output=True, text=True, timeout=600, env=env, cwd=cwd,
    )
    return result, result.stdout + result.stderr


def has_gpu() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("pyallreduce._cuda") is not None and torch.cuda.is_available()


@pytest.mark.parametrize(
    "ranks, device",
    [(n, "cpu") for n in (1, 2, 3, 4, 5)]
    + [pytest.param(n, "cuda", marks=pytest.mark.skipif(not has_gpu(), reason="needs a GPU")) for n in (1, 2, 3, 4)],
)
def test_under_mpiexec(ranks, device):
    result, output = launch(WORKER, ranks, "--device", device)
    assert result.returncode == 0, output[-6000:]
    # Ranks print concurrently, so their lines may interleave: match, don't split.
    passed = re.findall(r"mpi worker rank (\d+)/\d+: \d+ checks passed", result.stdout)
    assert sorted(map(int, passed)) == list(range(ranks)), output[-6000:]
