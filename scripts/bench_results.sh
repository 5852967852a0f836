#!/usr/bin/env bash
# Produces the measurements of one machine that bench/RESULTS.md reads, into
# bench/results/ (table as .txt, every sample as .json, plot as .png); the
# simulated clusters' are scripts/bench_cluster.sh's. First what the machine
# is (machine.txt) and, per world size, pyallreduce.tune's constants for it
# (tune.json, which the runs' "auto" then uses; what it printed in
# tune_<N>ranks.txt). Then the allreduce
# sweep, float32 sum, three interleaved runs each. At 2 and 4 ranks every implementation runs;
# at 3 ranks only ours, to check "auto" against the fixed algorithms. It runs
# for half an hour or more at 2 cores; keep the machine otherwise
# idle. RANKS_LIST picks the world sizes (default "2 3 4"). Then the other
# collectives at 2 ranks, every power of two from 8 B to 64 MiB, every implementation (COLLECTIVES
# picks them, default "reduce_scatter allgather broadcast"; each set empty
# skips its sweeps). Then torch's layer at 2 ranks: dist.all_reduce on the
# pyallreduce backend beside comm.allreduce and MPI at 8 B (200 iterations:
# a few microseconds are the question) and 64 MiB (TORCH_LAYER=0 skips it).
# Last, DDP's gradient sync on ResNet-50's shapes at 2 ranks and the fused
# LARS step (TRAINING=0 skips them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
mkdir -p bench/results
export PYALLREDUCE_TUNE_FILE="$root/bench/results/tune.json"
{
  date -u '+%Y-%m-%d %H:%M UTC'
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L2|L3)'
  grep MemTotal /proc/meminfo
  echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee bench/results/machine.txt
for ranks in ${RANKS_LIST-2 3 4}; do
  .venv/bin/mpiexec -n "$ranks" .venv/bin/python -m pyallreduce.tune | tee "bench/results/tune_${ranks}ranks.txt"
  name="bench/results/allreduce_${ranks}ranks"
  impls=()
  if [ "$ranks" = 3 ]; then impls=(--impl ring,halving_doubling,recursive_doubling,auto); fi
  .venv/bin/mpiexec -n "$ranks" .venv/bin/python -m pyallreduce.bench \
    -b 8 -e 256M -f 2 -n 10 -w 2 -N 3 "${impls[@]}" --no-progress --json "$name.json" --plot "$name.png" | tee "$name.txt"
done
for collective in ${COLLECTIVES-reduce_scatter allgather broadcast}; do
  name="bench/results/${collective}_2ranks"
  .venv/bin/mpiexec -n 2 .venv/bin/python -m pyallreduce.bench --collective "$collective" \
    -b 8 -e 64M -f 2 -n 10 -w 2 -N 3 --no-progress --json "$name.json" --plot "$name.png" | tee "$name.txt"
done
if [ "${TORCH_LAYER-1}" != 0 ]; then
  for size in 8:200 64M:20; do
    name="bench/results/torch_layer_${size%%:*}_2ranks"
    .venv/bin/mpiexec -n 2 .venv/bin/python -m pyallreduce.bench --impl auto,torch_pyallreduce,mpi \
      -b "${size%%:*}" -e "${size%%:*}" -n "${size##*:}" -w 5 -N 3 --no-progress --json "$name.json" | tee "$name.txt"
  done
fi
if [ "${TRAINING-1}" != 0 ]; then
  .venv/bin/mpiexec -n 2 .venv/bin/python -m pyallreduce.bench.ddp -n 10 -w 3 -N 3 \
    --json bench/results/ddp_2ranks.json | tee bench/results/ddp_2ranks.txt
  .venv/bin/python -m pyallreduce.bench.lars -n 20 -N 5 --json bench/results/lars_cpu.json | tee bench/results/lars_cpu.txt
fi
