"""pyallreduce.ddp.allreduce_hook in DistributedDataParallel under mpiexec."""

from pathlib import Path

import pytest

from test_mpi import has_gpu, launch

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.parametrize(
    "ranks, device",
    [(n, "cpu") for n in (2, 3, 4)]
    + [pytest.param(n, "cuda", marks=pytest.mark.skipif(not has_gpu(), reason="needs a GPU")) for n in (2, 3)],
)
def test_ddp_hook_matches_the_builtin_hook(ranks, device):
    result, output = launch(WORKER, ranks, "--device", device)
    assert result.returncode == 0, output[-6000:]
    assert f"ddp worker: {ranks} ranks, 8 checks passed" in result.stdout, output[-6000:]
