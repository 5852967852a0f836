"""pyallreduce.ddp.allreduce_hook in DistributedDataParallel under mpiexec."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_mpi import has_gpu, mpiexec

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.parametrize(
    "ranks, device",
    [(n, "cpu") for n in (2, 3, 4)]
    + [pytest.param(n, "cuda", marks=pytest.mark.skipif(not has_gpu(), reason="needs a GPU")) for n in (2, 3)],
)
def test_ddp_hook_matches_the_builtin_hook(ranks, device):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("PYALLREDUCE_ALGO", None)
    result = subprocess.run(
        [mpiexec(), "-n", str(ranks), sys.executable, str(WORKER), "--device", device],
        capture_output=True, text=True, timeout=600, env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert f"ddp worker: {ranks} ranks, 8 checks passed" in result.stdout, output[-6000:]
