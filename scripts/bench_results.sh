#!/usr/bin/env bash
# Produces the allreduce measurements in bench/RESULTS.md: the sweep, float32
# sum, three interleaved runs each, into bench/results/ (table as .txt, every
# sample as .json, plot as .png). At 2 and 4 ranks every implementation runs;
# at 3 ranks only ours, to check "auto" against the fixed algorithms. It runs
# for half an hour or more at 2 cores; keep the machine otherwise
# idle. RANKS_LIST picks the world sizes (default "2 3 4"). Then the other
# collectives at 2 ranks, every power of two from 8 B to 64 MiB, every implementation (COLLECTIVES
# picks them, default "reduce_scatter allgather broadcast"; each set empty
# skips its sweeps). Then torch's layer at 2 ranks: dist.all_reduce on the
# pyallreduce backend beside comm.allreduce and MPI at 8 B (200 iterations:
# a few microseconds are the question) and 64 MiB (TORCH_LAYER=0 skips it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
mkdir -p bench/results
for ranks in ${RANKS_LIST-2 3 4}; do
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
