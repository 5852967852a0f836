"""torch.distributed from MPI ranks (pyallreduce.distributed, init(torch_backend=...)), the
refusal of torchrun, and the errors that name a missing optional dependency's extra."""

import os
import subprocess
import sys

import pytest

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


def test_init_refuses_torchrun_too():
    env = dict(os.environ, TORCHELASTIC_RUN_ID="test", WORLD_SIZE="4", RANK="0")
    result = subprocess.run([mpiexec(), "-n", "1", sys.executable, "-c", "import pyallreduce; pyallreduce.init()"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "pyallreduce needs an MPI launch" in result.stderr, result.stderr


ONE_INIT = """
import torch, torch.distributed as dist
import pyallreduce
comm = pyallreduce.init(torch_backend="gloo")
assert (dist.get_rank(), dist.get_world_size()) == (comm.rank, comm.size)
x = torch.ones(3)
dist.all_reduce(x)
comm.allreduce(x, op=dist.ReduceOp.SUM)
assert x.tolist() == [4.0] * 3, x
if comm.rank == 0:
    print("one init ok", flush=True)
"""


def test_one_init_gives_the_communicator_and_torch_distributed():
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", ONE_INIT], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "one init ok" in result.stdout


MISSING = """
import sys

import pytest
sys.modules[{module!r}] = None   # as if it were not installed
try:
    import {importing}
except ModuleNotFoundError as exc:
    print(exc)
"""


@pytest.mark.parametrize("importing, module, extra", [
    ("pyallreduce.ddp", "torch", "pyallreduce[torch]"),
    ("pyallreduce.optim", "torch", "pyallreduce[torch]"),
    ("pyallreduce.examples.large_batch", "mnist1d", "pyallreduce[examples]"),
    ("pyallreduce.examples.ddp_train", "tqdm", "pyallreduce[examples]"),
])
def test_a_missing_optional_dependency_names_its_extra(importing, module, extra):
    result = subprocess.run([sys.executable, "-c", MISSING.format(module=module, importing=importing)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"needs {module}, which is not installed" in result.stdout and extra in result.stdout, result.stdout


def test_the_bench_runs_without_tqdm_when_asked_for_no_progress():
    script = ("import sys; sys.modules['tqdm'] = None; from pyallreduce.bench.__main__ import main; "
              "sys.argv = ['pyallreduce-bench', '-b', '8', '-e', '64', '-n', '1', '-w', '0', '--impl', 'auto', "
              "'--no-progress']; main()")
    result = subprocess.run([mpiexec(), "-n", "1", sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# result check: all correct" in result.stdout


def test_a_loopback_host_name_across_hosts_picks_an_address_the_others_share_a_network_with():
    from pyallreduce.distributed import interface_addresses, rendezvous_address

    mine = [("172.17.0.1", "255.255.0.0"), ("10.213.47.1", "255.255.255.0")]
    theirs = [[("10.213.47.2", "255.255.255.0")], [("10.213.47.3", "255.255.255.0")]]
    assert rendezvous_address("127.0.1.1", 3, mine, theirs) == "10.213.47.1"
    assert rendezvous_address("10.0.0.5", 3, mine, theirs) == "10.0.0.5"  # resolves elsewhere: kept
    assert rendezvous_address("127.0.0.1", 1, mine, theirs) == "127.0.0.1"  # one host: loopback is right
    assert rendezvous_address("127.0.1.1", 2, mine, [[("192.168.9.9", "255.255.255.0")]]) == "172.17.0.1"
    with pytest.raises(RuntimeError, match="loopback address, but the ranks span 2 hosts.*MASTER_ADDR"):
        rendezvous_address("127.0.1.1", 2, [], theirs)
    assert all(not address.startswith("127.") for address, _ in interface_addresses())
