#!/usr/bin/env bash
# The checks that need a GPU, in one call (for a lent GPU machine, e.g.
# `device run "scripts/gpu_checks.sh"`): builds pyallreduce with that
# machine's Python, MPI and nvcc (for sm_80/sm_90), runs the CUDA tests of the
# fused LARS step and times it against a per-parameter loop and timm's Lars.
# Logs go to $OUT (default ./gpu_checks/).
set -uo pipefail
out="${OUT:-$PWD/gpu_checks}"
mkdir -p "$out"
python="${PYTHON:-python3}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  command -v nvcc && nvcc --version | tail -1
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

if ! "$python" -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1; then
  tail -30 "$out/build.log"
  echo "gpu_checks: the build failed (log in $out/build.log)"
  exit 1
fi
"$python" -c "import pyallreduce; print(pyallreduce.build_info())" | tee "$out/build_info.txt"

status=0
"$python" -m pytest -q tests/test_lars.py -k "cuda" 2>&1 | tee "$out/test_lars_cuda.txt" | tail -15 || status=1
"$python" bench/lars_bench.py --device cuda -n 50 -R 5 --json "$out/lars_cuda.json" 2>&1 | tee "$out/lars_cuda.txt" || status=1
exit $status
