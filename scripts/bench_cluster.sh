#!/usr/bin/env bash
# Produces the across-hosts measurements in bench/RESULTS.md: for each link
# (unshaped, and every host's link shaped to 1 Gbit) and each layout (2x1,
# 4x1, 2x2 over simulated hosts, scripts/simcluster.sh), pyallreduce.tune
# measures the cost model's constants for the layout (into
# bench/results/tune_<link>.json, which auto then reads), and the benchmark
# runs every algorithm and every peer, float32 sum, three interleaved runs,
# into bench/results/cluster_<layout>_<link>.{txt,json,png}; where hosts have
# several ranks, the other collectives too (issue 17's 2x2 targets), into
# cluster_<layout>_<link>_<collective>.*. Needs root. All hosts share this
# machine's cores: keep it otherwise idle. LINKS, LAYOUTS and COLLECTIVES
# pick what runs (defaults "unshaped 1gbit", "2:1 4:1 2:2" and
# "reduce_scatter allgather broadcast").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
mkdir -p bench/results
trap 'scripts/simcluster.sh down' EXIT
for link in ${LINKS:-unshaped 1gbit}; do
  scripts/simcluster.sh down
  if [ "$link" = unshaped ]; then scripts/simcluster.sh up 4; else scripts/simcluster.sh up 4 --rate "$link"; fi
  export PYALLREDUCE_TUNE_FILE="$root/bench/results/tune_$link.json"
  for layout in ${LAYOUTS:-2:1 4:1 2:2}; do
    name="bench/results/cluster_${layout/:/x}_$link"
    scripts/simcluster.sh run "$layout" -- .venv/bin/python -m pyallreduce.tune | tee "$name.txt"
    scripts/simcluster.sh run "$layout" -- .venv/bin/python -m pyallreduce.bench \
      -b 16 -e 64M -f 4 -n 3 -w 1 -N 3 --no-progress --json "$name.json" --plot "$name.png" | tee -a "$name.txt"
    [ "${layout#*:}" != 1 ] || continue  # one rank per host: the flat runs say it all
    for collective in ${COLLECTIVES:-reduce_scatter allgather broadcast}; do
      scripts/simcluster.sh run "$layout" -- .venv/bin/python -m pyallreduce.bench --collective "$collective" \
        -b 16 -e 64M -f 4 -n 3 -w 1 -N 3 --no-progress --json "${name}_$collective.json" \
        --plot "${name}_$collective.png" | tee "${name}_$collective.txt"
    done
  done
done
