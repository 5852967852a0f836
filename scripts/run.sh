#!/usr/bin/env bash
# The main job: large-batch synchronous SGD over pyallreduce, quick mode
# (python -m pyallreduce.examples.large_batch --quick) on 2 local MPI ranks:
# test accuracy by global batch and recipe (SGD, linear scaling, warm-up,
# LARS). Arguments go to the example (default: --quick); RANKS sets the
# number of ranks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
if [ $# -eq 0 ]; then set -- --quick; fi
cd "$root"
exec "$root/.venv/bin/mpiexec" -n "${RANKS:-2}" "$root/.venv/bin/python" -m pyallreduce.examples.large_batch "$@"
