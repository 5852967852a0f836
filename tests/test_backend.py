"""torch.distributed on backend "pyallreduce" under mpiexec: the collectives,
DDP without a hook, torch's comm hooks and FSDP2 against gloo (see
backend_worker.py), and the registration itself."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_mpi import launch

WORKER = Path(__file__).with_name("backend_worker.py")


@pytest.mark.parametrize("ranks", [2, 3])
def test_backend_matches_gloo(ranks):
    result, output = launch(WORKER, ranks)
    assert result.returncode == 0, output[-6000:]
    passed = re.findall(r"backend worker rank (\d+)/\d+: \d+ checks passed", result.stdout)
    assert sorted(map(int, passed)) == list(range(ranks)), output[-6000:]


def test_importing_registers_the_backend():
    code = ("import torch.distributed as dist\n"
            "assert 'pyallreduce' not in dist.Backend.backend_list\n"
            "import pyallreduce.distributed\n"
            "assert 'pyallreduce' in dist.Backend.backend_list\n"
            "assert dist.Backend.default_device_backend_map['cpu'] == 'gloo'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_world_that_is_not_mpis_is_refused(tmp_path):
    # torch's world of 2 on a process MPI launched alone: the backend says how to launch instead.
    code = ("import datetime, torch.distributed as dist\n"
            "import pyallreduce.distributed\n"
            "store = dist.HashStore()\n"
            "try:\n"
            "    dist.init_process_group('pyallreduce', store=store, rank=0, world_size=2,\n"
            "                            timeout=datetime.timedelta(seconds=5))\n"
            "except RuntimeError as exc:\n"
            "    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "is not MPI's" in result.stdout, result.stdout + result.stderr
