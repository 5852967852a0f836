"""What this installation was built with and can reach."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

from . import _C
from ._version import __version__


def nccl_library_candidates() -> list[str]:
    """Where libnccl.so.2 may be besides the loader's search path: the
    nvidia-nccl-cu12/cu13 wheels (which torch's CUDA builds install)."""
    spec = importlib.util.find_spec("nvidia")
    roots = spec.submodule_search_locations if spec and spec.submodule_search_locations else []
    return [str(p) for root in roots for p in sorted(Path(root).glob("nccl/lib/libnccl.so*"))]


def _nccl_loadable() -> bool:
    """Whether libnccl.so.2 loads: from the system or the nvidia-nccl-cu* wheels."""
    for candidate in ["libnccl.so.2", *nccl_library_candidates()]:
        try:
            ctypes.CDLL(candidate)
            return True
        except OSError:
            continue
    return False


def build_info() -> dict:
    """A description of this build, for bug reports and benchmark records.

    Keys: ``version``; ``mpi_built_against`` (the MPI headers compiled with);
    ``mpi_library_version`` (the MPI library loaded now); ``mpi4py_version``;
    ``cuda_built`` (whether the CUDA extension was compiled); ``nccl_available``
    (whether libnccl.so.2 can be loaded).
    """
    import mpi4py

    return {
        "version": __version__,
        "mpi_built_against": _C.mpi_built_against(),
        "mpi_library_version": _C.mpi_library_version().strip(),
        "mpi4py_version": mpi4py.__version__,
        "cuda_built": importlib.util.find_spec("pyallreduce._cuda") is not None,
        "nccl_available": _nccl_loadable(),
    }
