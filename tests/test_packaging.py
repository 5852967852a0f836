"""What a user gets from an sdist: build it, build a wheel from it (without
the CUDA module), install the wheel into a fresh venv outside the tree beside
MPICH, mpi4py and torch from the package index (the development venv's
versions), and use it from another folder with the development venv off
PATH: the loaded pyallreduce and libmpi must be the fresh venv's.
"""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"pyallreduce.bench", "pyallreduce.examples", "pyallreduce.optim"}


def run(command: list, timeout: float = 300, **kwargs) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """(sdist, wheel, fresh venv's bin folder, a clean environment)."""
    work = tmp_path_factory.mktemp("packaging")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYALLREDUCE_CUDA"] = "0"

    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", work / "dist", ROOT], env=env)
    (sdist,) = (work / "dist").glob("pyallreduce-*.tar.gz")
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--wheel-dir", work / "dist",
         sdist], timeout=600, env=env, cwd=work)
    (wheel,) = (work / "dist").glob("pyallreduce-*.whl")

    fresh = work / "fresh"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", fresh], env=env)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("mpich", "mpi4py", "numpy", "torch")]
    run([fresh / "bin" / "python", "-m", "pip", "install", "--quiet", *pins, wheel], timeout=600, env=env)

    build_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != build_bin]
    env["PATH"] = os.pathsep.join([str(fresh / "bin"), *path])
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return sdist, wheel, fresh / "bin", env, elsewhere


def test_the_sdist_carries_sources_headers_stub_license_and_docs(packaged):
    sdist = packaged[0]
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for required in ("LICENSE", "README.md", "docs/design.md", "setup.py", "pyproject.toml", "MANIFEST.in",
                     "pyallreduce/_C.pyi", "pyallreduce/py.typed", "pyallreduce/optim/lars.py",
                     "pyallreduce/examples/large_batch.py", "pyallreduce/bench/__main__.py",
                     "csrc/algorithms/algorithm.h", "csrc/cuda/reduction_kernels.cuh", "csrc/cuda/lars.cu"):
        assert required in names, required
    tracked = run(["git", "ls-files", "csrc"], cwd=ROOT).split()
    assert set(tracked) <= names, set(tracked) - names
    assert not [n for n in names if n.endswith((".so", ".o"))]


def test_the_wheel_has_every_subpackage_the_stub_and_the_license_but_no_cuda_module(packaged):
    wheel = packaged[1]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert packages == {"pyallreduce"} | SUBPACKAGES
    assert {"pyallreduce/_C.pyi", "pyallreduce/py.typed", "pyallreduce/examples/ddp_train.py",
            "pyallreduce/bench/lars.py"} <= names
    assert any(re.fullmatch(r"pyallreduce-[^/]+\.dist-info/licenses/LICENSE", n) for n in names), names
    assert [n for n in names if n.startswith("pyallreduce/_C.")], "no _C"
    assert not [n for n in names if n.startswith("pyallreduce/_cuda")], "PYALLREDUCE_CUDA=0 shipped _cuda"
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "pyallreduce-bench = pyallreduce.bench.__main__:main" in entry_points


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils)")
def test_the_extension_records_no_absolute_library_path(packaged, tmp_path):
    with zipfile.ZipFile(packaged[1]) as archive:
        (extension,) = [n for n in archive.namelist() if n.startswith("pyallreduce/_C.") and n.endswith(".so")]
        archive.extract(extension, tmp_path)
    dynamic = run(["readelf", "-d", tmp_path / extension])
    paths = re.findall(r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[(.*)\]", dynamic)
    assert all(not p.startswith("/") for entry in paths for p in entry.split(":")), paths


CHECK = r"""
import importlib, importlib.metadata, pkgutil, sys
import pyallreduce
assert pyallreduce.__file__.startswith(sys.prefix), pyallreduce.__file__
assert pyallreduce.__version__ == importlib.metadata.version("pyallreduce")
packages = {m.name for m in pkgutil.walk_packages(pyallreduce.__path__, "pyallreduce.") if m.ispkg}
assert packages == set(sys.argv[1:]), packages
for name in sorted(packages) + ["pyallreduce.ddp", "pyallreduce.distributed", "pyallreduce.testing",
                                "pyallreduce.bench.__main__", "pyallreduce.bench.ddp", "pyallreduce.bench.lars"]:
    importlib.import_module(name)
try:
    importlib.import_module("pyallreduce.examples.large_batch")   # tqdm and mnist1d are not installed
except ModuleNotFoundError as exc:
    assert "pyallreduce[examples]" in str(exc), exc
else:
    raise AssertionError("the example imported without its extra")
assert not pyallreduce.build_info()["cuda_built"]
print("imports ok")
"""

ALLREDUCE = r"""
import sys
import numpy as np
import pyallreduce
libraries = {line.split()[-1] for line in open("/proc/self/maps") if "libmpi" in line}
assert libraries and all(p.startswith(sys.prefix) for p in libraries), libraries
comm = pyallreduce.init()
x = np.full(7, comm.rank + 1.0)
comm.allreduce(x)
assert x.tolist() == [3.0] * 7, x
print(f"allreduce ok on rank {comm.rank}")
"""

LARS_STEP = r"""
import torch
from pyallreduce.optim import LARS
w = torch.nn.Parameter(torch.ones(4, 4))
opt = LARS([w], lr=0.1)
w.grad = torch.ones(4, 4)
opt.step()
assert torch.all(w < 1), w
print("lars ok")
"""


def test_the_installed_wheel_works_from_another_folder(packaged):
    _, _, fresh_bin, env, elsewhere = packaged
    python = fresh_bin / "python"
    assert "imports ok" in run([python, "-c", CHECK, *SUBPACKAGES], env=env, cwd=elsewhere)
    output = run([fresh_bin / "mpiexec", "-n", "2", python, "-c", ALLREDUCE], env=env, cwd=elsewhere)
    assert output.count("allreduce ok") == 2, output
    assert "lars ok" in run([python, "-c", LARS_STEP], env=env, cwd=elsewhere)
    assert "usage: pyallreduce-bench" in run([fresh_bin / "pyallreduce-bench", "--help"], env=env, cwd=elsewhere)
