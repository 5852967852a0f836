"""What this installation was built with and can reach."""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
from pathlib import Path

from . import _C


def _nccl_loadable() -> bool:
    """Whether libnccl.so.2 loads: from the nvidia-nccl-cu* wheels or the system."""
    candidates = ["libnccl.so.2"]
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec and spec.submodule_search_locations else []:
        candidates += [str(p) for p in Path(root).glob("nccl/lib/libnccl.so*")]
    for candidate in candidates:
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
        "version": importlib.metadata.version("pyallreduce"),
        "mpi_built_against": _C.mpi_built_against(),
        "mpi_library_version": _C.mpi_library_version().strip(),
        "mpi4py_version": mpi4py.__version__,
        "cuda_built": importlib.util.find_spec("pyallreduce._cuda") is not None,
        "nccl_available": _nccl_loadable(),
    }
