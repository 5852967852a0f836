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


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 5, 7, 8])
def test_under_mpiexec(ranks):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("PYALLREDUCE_ALGO", None)
    result = subprocess.run(
        [mpiexec(), "-n", str(ranks), sys.executable, str(WORKER)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # Ranks print concurrently, so their lines may interleave: match, don't split.
    passed = re.findall(r"mpi worker rank (\d+)/\d+: \d+ checks passed", result.stdout)
    assert sorted(map(int, passed)) == list(range(ranks)), output[-6000:]
