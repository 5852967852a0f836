#!/usr/bin/env bash
# The checks that need a GPU, in one call (for a lent GPU machine, e.g.
# `device run "scripts/gpu_checks.sh"`). It builds pyallreduce with that
# machine's Python, MPI and nvcc (sm_80/sm_90), then:
#   1. the CUDA tests: every algorithm on CUDA tensors at 1-4 ranks (threads
#      sharing the GPU, and mpiexec-launched ranks over the staged MPI
#      transport), against the float64 reference, bitwise identical across
#      ranks; cupy arrays; stream order; NCCL at world size 1 (loopback
#      group); DDP's hook on CUDA buckets; the fused CUDA LARS step;
#   2. the reduction kernels' bandwidth against device-to-device copies;
#   3. the allreduce bench on CUDA tensors: 1 rank over NCCL beside torch's
#      NCCL all_reduce, and 4 ranks sharing the GPU over staged MPI;
#   4. the fused LARS step against a per-parameter loop and timm's Lars.
# Logs and JSON go to $OUT (default ./gpu_checks/). Exit status: non-zero if
# any step failed.
set -uo pipefail
out="${OUT:-$PWD/gpu_checks}"
mkdir -p "$out"
python="${PYTHON:-python3}"
mpiexec="$(dirname "$(command -v "$python")")/mpiexec"
[ -x "$mpiexec" ] || mpiexec="$(command -v mpiexec)"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  command -v nvcc && nvcc --version | tail -1
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  "$mpiexec" --version 2>&1 | head -2
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

# pyproject's license fields need setuptools >= 77 (the build runs without
# isolation: that machine has no package index).
if ! "$python" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)"; then
  echo "gpu_checks: setuptools $("$python" -c 'import setuptools; print(setuptools.__version__)') is older than 77;" \
       "carry a newer setuptools wheel (see the device tool's README) and install it first"
  exit 1
fi
if ! "$python" -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1; then
  tail -30 "$out/build.log"
  echo "gpu_checks: the build failed (log in $out/build.log)"
  exit 1
fi
"$python" -c "import pyallreduce, pyallreduce._cuda as c; print(pyallreduce.build_info()); print('nccl', c.nccl_library())" \
  | tee "$out/build_info.txt"

status=0
step() {  # step NAME COMMAND...: runs it, logs to $out/NAME.txt, notes a failure
  local name="$1"; shift
  echo "== $name"
  if ! "$@" > "$out/$name.txt" 2>&1; then status=1; echo "gpu_checks: $name FAILED"; fi
  tail -8 "$out/$name.txt"
}
step tests "$python" -m pytest -q -rs tests/test_cuda.py tests/test_lars.py tests/test_mpi.py tests/test_ddp.py tests/test_readme.py -k "cuda"
step reduce_kernels "$python" -m pyallreduce.bench.cuda_reduce -n 50 -N 5 --json "$out/reduce_kernels.json"
step bench_1rank_nccl env PYALLREDUCE_CUDA_TRANSPORT=nccl "$mpiexec" -n 1 "$python" -m pyallreduce.bench --device cuda \
  -b 8 -e 256M -f 4 -n 20 -N 3 --impl ring,halving_doubling,recursive_doubling,auto,nccl --no-progress \
  --json "$out/bench_1rank_nccl.json"
step bench_4ranks_mpi env PYALLREDUCE_CUDA_TRANSPORT=mpi "$mpiexec" -n 4 "$python" -m pyallreduce.bench --device cuda \
  -b 8 -e 256M -f 4 -n 20 -N 3 --impl ring,halving_doubling,recursive_doubling,auto --no-progress \
  --json "$out/bench_4ranks_mpi.json"
step lars "$python" -m pyallreduce.bench.lars --device cuda -n 50 -N 5 --json "$out/lars_cuda.json"
exit $status
