"""Across hosts: MPI jobs over network namespaces that scripts/simcluster.sh
makes on this machine (shared memory inside a host, TCP between hosts), at
2x1, 3x1, 2x2 and an uneven 3+2 layout. Every algorithm, hierarchical
included, against the float64 reference and bitwise identical on every rank
(tests/mpi_worker.py), and DDP with pyallreduce's hook over a gloo group that
pyallreduce.distributed sets up across the hosts. Needs root; skipped, with
the reason, where namespaces cannot be made. The cluster is always taken
down, also when a test fails or times out."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIMCLUSTER = ROOT / "scripts" / "simcluster.sh"
HOSTS = 3
# A hung job fails its call within this (pyallreduce's timeout), and the test
# within JOB_TIMEOUT_S; the job is then killed.
CALL_TIMEOUT_S = 60
JOB_TIMEOUT_S = 420

pytestmark = pytest.mark.cluster


def why_no_cluster() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces (CI runs as root)"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2, util-linux)"
    probe = subprocess.run(["ip", "netns", "add", "pa-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "pa-probe"], capture_output=True)
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = why_no_cluster()
    if reason is not None:
        pytest.skip(reason)
    subprocess.run([str(SIMCLUSTER), "down"], capture_output=True)  # what a killed run left behind
    up = subprocess.run([str(SIMCLUSTER), "up", str(HOSTS)], capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield
    finally:
        down = subprocess.run([str(SIMCLUSTER), "down"], capture_output=True, text=True)
        assert down.returncode == 0, down.stdout + down.stderr


def run_across(layout: str, *command: str) -> subprocess.CompletedProcess:
    """`simcluster.sh run LAYOUT -- python COMMAND...`, killed (with every rank)
    if it outlasts JOB_TIMEOUT_S."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYALLREDUCE_TIMEOUT=str(CALL_TIMEOUT_S))
    env.pop("PYALLREDUCE_ALGO", None)
    job = subprocess.Popen([str(SIMCLUSTER), "run", layout, "--", sys.executable, *command], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True)
    try:
        stdout, stderr = job.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, 9)
        stdout, stderr = job.communicate()
        pytest.fail(f"{layout}: still running after {JOB_TIMEOUT_S} s\n{(stdout + stderr)[-6000:]}")
    return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)


def expected_hosts(layout: str) -> list[int]:
    """Each rank's host for a simcluster layout: "1:3,1:2" -> [0, 0, 0, 1, 1]."""
    hosts = []
    for group in layout.split(","):
        count, ranks = map(int, group.split(":"))
        for _ in range(count):
            hosts += [len(set(hosts))] * ranks
    return hosts


def test_expected_hosts_reads_layouts():
    assert expected_hosts("2:2") == [0, 0, 1, 1]
    assert expected_hosts("1:3,1:2") == [0, 0, 0, 1, 1]
    assert expected_hosts("3:1") == [0, 1, 2]


@pytest.mark.parametrize("layout", ["2:1", "3:1", "2:2", "1:3,1:2"])
def test_every_algorithm_across_hosts(cluster, layout):
    hosts = expected_hosts(layout)
    result = run_across(layout, str(ROOT / "tests" / "mpi_worker.py"), "--hosts", ",".join(map(str, hosts)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    passed = re.findall(r"mpi worker rank (\d+)/\d+: \d+ checks passed", result.stdout)
    assert sorted(map(int, passed)) == list(range(len(hosts))), output[-6000:]


def test_ddp_across_hosts(cluster):
    result = run_across("2:2", str(ROOT / "tests" / "ddp_worker.py"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "ddp worker: 4 ranks, 8 checks passed" in result.stdout, output[-6000:]


def test_rendezvous_across_hosts_whose_names_resolve_to_loopback(cluster, tmp_path):
    """Where /etc/hosts maps each host's own name to 127.0.1.1 (as many
    distributions do), rank 0 advertises an address the others can reach."""
    script = tmp_path / "loopback_names.py"
    script.write_text(
        "import socket, torch, torch.distributed as dist\n"
        "import pyallreduce.distributed\n"
        "socket.gethostbyname = lambda name: '127.0.1.1'\n"
        "pyallreduce.distributed.init_process_group('gloo')\n"
        "x = torch.ones(3)\n"
        "dist.all_reduce(x)\n"
        "assert x.tolist() == [2.0] * 3, x\n"
        "print('rendezvous ok', dist.get_rank(), flush=True)\n")
    result = run_across("2:1", str(script))
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert result.stdout.count("rendezvous ok") == 2, result.stdout + result.stderr
