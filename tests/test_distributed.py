"""pyallreduce.distributed.init_process_group: torch.distributed from MPI ranks."""

import os
import subprocess
import sys

from test_mpi import mpiexec

SCRIPT = """
import os, torch, torch.distributed as dist
from mpi4py import MPI
import pyallreduce.distributed
local_rank = pyallreduce.distributed.init_process_group("gloo")
x = torch.full((3,), float(dist.get_rank() + 1))
dist.all_reduce(x)
assert x.tolist() == [3.0] * 3, x
assert (dist.get_rank(), dist.get_world_size()) == (MPI.COMM_WORLD.rank, MPI.COMM_WORLD.size)
assert os.environ["LOCAL_RANK"] == str(local_rank) == str(MPI.COMM_WORLD.rank)  # one node
# One line from rank 0: lines printed by both ranks can interleave.
ranks = MPI.COMM_WORLD.gather(dist.get_rank())
if MPI.COMM_WORLD.rank == 0:
    print("ok", sorted(ranks), flush=True)
"""


def test_gloo_group_from_mpi_ranks():
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok [0, 1]" in result.stdout, result.stdout


def test_torchrun_is_refused_plainly():
    env = dict(os.environ, TORCHELASTIC_RUN_ID="test", WORLD_SIZE="4", RANK="0")
    script = "import pyallreduce.distributed as d; d.init_process_group('gloo')"
    result = subprocess.run([mpiexec(), "-n", "1", sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode != 0
    assert "pyallreduce needs an MPI launch" in result.stderr, result.stderr
