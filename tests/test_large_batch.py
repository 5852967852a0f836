"""The README's main job: python -m pyallreduce.examples.large_batch --quick at 2 ranks."""

import json
import subprocess
import sys

from test_mpi import mpiexec


def test_quick_mode_trains_every_recipe_and_lars_learns_at_the_largest_batch(tmp_path):
    record, plot = tmp_path / "runs.json", tmp_path / "accuracy.png"
    result = subprocess.run(
        [mpiexec(), "-n", "2", sys.executable, "-m", "pyallreduce.examples.large_batch", "--quick",
         "--json", str(record), "--plot", str(plot)],
        capture_output=True, text=True, timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    records = json.loads(record.read_text())["records"]
    runs = {(r["batch"], r["recipe"]) for r in records}
    assert runs == {(b, r) for b in (256, 4096) for r in ("sgd", "sgd_linear", "sgd_linear_warmup", "lars")}
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["seed"] == 0 and r["ranks"] == 2 for r in records)
    assert all(r["params_identical_across_ranks"] for r in records)
    lars_largest = next(r for r in records if r["batch"] == 4096 and r["recipe"] == "lars")
    assert lars_largest["test_accuracy"] > 0.5, lars_largest  # chance is 0.1
    assert all(0.0 < r["sync_share"] < 1.0 for r in records)
    assert "# parameters identical on all ranks after every run: yes" in result.stdout
    assert plot.stat().st_size > 0


def test_the_torch_backend_trains_the_same_model(tmp_path):
    runs = {}
    for backend in ("hook", "pyallreduce"):
        record = tmp_path / f"{backend}.json"
        result = subprocess.run(
            [mpiexec(), "-n", "2", sys.executable, "-m", "pyallreduce.examples.large_batch", "--batches", "4096",
             "--recipes", "lars", "--seeds", "0", "--epochs", "2", "--warmup-epochs", "1", "--backend", backend,
             "--json", str(record)],
            capture_output=True, text=True, timeout=900,
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        (runs[backend],) = json.loads(record.read_text())["records"]
    for run in runs.values():
        assert run["params_identical_across_ranks"] and 0.0 < run["sync_share"] < 1.0, run
    # The hook averages in one step and torch's divides, then sums: the same model up to rounding.
    assert abs(runs["hook"]["final_train_loss"] - runs["pyallreduce"]["final_train_loss"]) < 0.02, runs
