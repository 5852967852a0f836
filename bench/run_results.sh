#!/usr/bin/env bash
# Produces the measurements in bench/RESULTS.md: the allreduce sweep at 2 and
# 4 ranks, float32 sum, three interleaved runs each, into bench/results/
# (table as .txt, every sample as .json, plot as .png). About 15 minutes on
# the 2-core development machine; keep the machine otherwise idle.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
mkdir -p bench/results
for ranks in ${RANKS_LIST:-2 4}; do
  name="bench/results/allreduce_${ranks}ranks"
  .venv/bin/mpiexec -n "$ranks" .venv/bin/python -m pyallreduce.bench \
    -b 8 -e 256M -f 2 -n 10 -w 2 -R 3 --no-progress --json "$name.json" --plot "$name.png" | tee "$name.txt"
done
