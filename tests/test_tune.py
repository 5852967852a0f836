"""pyallreduce.tune: the cost model's constants measured per level, kept per
layout in a file that algorithm="auto" reads, and the model's predictions for
layouts of any size."""

import json
import os
import subprocess
import sys

import pytest

from pyallreduce import _C, tune
from test_mpi import mpiexec


def test_an_entry_is_kept_per_layout(tmp_path):
    path = tmp_path / "tune.json"
    measured = tune.Tuning(tune.Link(3e-6, 1e-10, 8192, 2e-6), tune.Link(5e-5, 8e-9), 1e-10, "measured")
    tune.save([0, 0, 1, 1], measured, "here", path)
    again = tune.load([5, 5, 9, 9], path)  # any host numbers: the layout is the ranks per host
    assert (again.inside, again.between, again.gamma_s_per_byte) == (measured.inside, measured.between, 1e-10)
    assert again.source.startswith(f"measured {again.source.split()[1]} on here")
    assert tune.load([0, 0, 0, 0], path).source == "built-in"  # another layout
    assert tune.layout_key([0, 0, 0, 1, 1]) == "2 hosts (3, 2 ranks)"
    assert json.loads(path.read_text())["layouts"].keys() == {"2 hosts x 2 ranks"}


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "layouts": {}}',
                                     '{"version": 1, "layouts": {"1 host x 2 ranks": {"inside": 3}}}'])
def test_a_bad_file_is_named(tmp_path, content):
    path = tmp_path / "tune.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=str(path)):
        tune.load([0, 0], path)


def test_predict_shows_where_the_algorithms_cross_over():
    output = subprocess.run([sys.executable, "-m", "pyallreduce.tune", "--predict", "--hosts", "32",
                             "--ranks-per-host", "8", "--link", "10gbit"], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYALLREDUCE_TUNE_FILE=os.devnull + ".none")).stdout
    assert "# 32 hosts x 8 ranks; constants built-in, --link" in output, output
    assert "between hosts: alpha 10.00 us, 1.25 GB/s" in output, output
    fastest = [line.split()[-1] if "(" not in line else line.split()[-4] for line in output.splitlines()
               if not line.startswith("#") and not line.lstrip().startswith("bytes")]
    # Latency-bound small calls want the fewest messages; mid sizes, a host's
    # share across the network. At the largest, the ring's host-major order
    # sends nearly as few bytes through each link as hierarchical does at 32
    # hosts (2n(p-1)/p with p = 256, against 2n(H-1)/H), and hierarchical's
    # pipeline hides its steps inside the hosts: the two are within a few
    # percent, hierarchical ahead by the bytes it saves.
    assert fastest[0] == "recursive_doubling" and "hierarchical" in fastest, output
    largest = [line.split() for line in output.splitlines() if line.lstrip().startswith("2147483648")][0]
    ring_s, hierarchical_s = float(largest[5]), float(largest[7])
    assert hierarchical_s < ring_s < 1.05 * hierarchical_s, output


def test_measured_constants_reach_auto_on_every_rank(tmp_path):
    """Under mpiexec: tune measures and saves; a communicator then chooses
    with those constants, and says so, streams from the size tune found and
    pipelines the ring as tune found fastest (unless their variables say
    otherwise, or the program gives a segment size)."""
    path = tmp_path / "tune.json"
    env = dict(os.environ, PYALLREDUCE_TUNE_FILE=str(path), OMP_NUM_THREADS="1")
    measured = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "pyallreduce.tune"], capture_output=True,
                              text=True, timeout=300, env=env)
    assert measured.returncode == 0, measured.stdout + measured.stderr
    assert f"saved for 1 host x 2 ranks in {path}" in measured.stdout, measured.stdout
    entry = json.loads(path.read_text())["layouts"]["1 host x 2 ranks"]
    streaming, segment, window, shm = (entry[key] for key in ("streaming_store_bytes", "ring_segment_bytes",
                                                               "ring_receive_window", "shm_message_bytes"))
    assert streaming in (*tune.STREAMING_SEARCH_BYTES, tune.NEVER_STREAM_BYTES)
    assert shm in (0, *tune.SHM_SEARCH_BYTES), entry
    assert "shared-memory pipes / MPI: 1 KiB " in measured.stdout, measured.stdout
    assert segment in tune.RING_SEGMENT_SEARCH_BYTES and window in tune.RING_WINDOW_SEARCH, entry
    assert "ring pipeline: segments of " in measured.stdout and "by receive window" in measured.stdout

    def run_script(segment_argument="", **variables):
        # One print from rank 0: lines printed by both ranks can interleave.
        script = ("import pyallreduce\n"
                  f"comm = pyallreduce.init({segment_argument})\n"
                  "name, reason = comm.choose_algorithm(1 << 20)\n"
                  "from mpi4py import MPI\n"
                  "lines = MPI.COMM_WORLD.gather(f\"{comm.rank} {reason.split(':')[0]}; streams from \"\n"
                  "                              f\"{comm._core.streaming_store_bytes}; segments of \"\n"
                  "                              f\"{comm.ring_segment_bytes}; window {comm._core.ring_receive_window}; \"\n"
                  "                              f\"pipes to {comm.shared_memory_message_bytes}\")\n"
                  "if comm.rank == 0:\n"
                  "    print('\\n'.join(lines), flush=True)\n")
        result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", script], capture_output=True, text=True,
                                timeout=300, env=dict(env, **variables))
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    used = run_script()
    for rank in (0, 1):
        assert f"{rank} cost model for 1 host x 2 ranks, constants measured " in used, used
        assert f"streams from {streaming}; segments of {segment}; window {window}; pipes to {shm}\n" in used + "\n", used
        assert str(path) in used
    overridden = run_script(PYALLREDUCE_STREAMING_STORE_BYTES="12345", PYALLREDUCE_RING_SEGMENT_BYTES="4096",
                            PYALLREDUCE_RING_RECEIVE_WINDOW="3", PYALLREDUCE_SHM_MESSAGE_BYTES="5000")
    assert overridden.count("streams from 12345; segments of 4096; window 3; pipes to 5000") == 2, overridden
    given = run_script("ring_segment_bytes=8192")
    assert given.count(f"segments of 8192; window {window}") == 2, given


def test_a_tune_file_rank_0_cannot_read_raises_on_every_rank(tmp_path):
    path = tmp_path / "tune.json"
    path.write_text("{not json")
    script = ("import sys\n"
              "import pyallreduce\n"
              "try:\n"
              "    pyallreduce.init()\n"
              "except ValueError as exc:\n"
              "    sys.stdout.write(f'raised {exc}\\n')\n")
    result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYALLREDUCE_TUNE_FILE=str(path)))
    assert result.stdout.count("raised") == 2 and "cannot be read" in result.stdout, result.stdout + result.stderr


def test_the_model_is_the_built_in_one_without_a_file():
    built_in = tune.Tuning.built_in()
    assert built_in.inside == tune.Link.of(_C.CostModel.default().inside)
    assert built_in.source == "built-in"
