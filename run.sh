#!/usr/bin/env bash
# The main job: the allreduce benchmark (python -m pyallreduce.bench) over 4
# local MPI ranks, pyallreduce's algorithms beside MPI_Allreduce, gloo and a
# naive mpi4py ring, every result checked. Arguments go to the benchmark
# (default: -b 8 -e 64M -f 8); RANKS sets the number of ranks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup_venv.sh"
if [ $# -eq 0 ]; then set -- -b 8 -e 64M -f 8; fi
cd "$root"
exec "$root/.venv/bin/mpiexec" -n "${RANKS:-4}" "$root/.venv/bin/python" -m pyallreduce.bench "$@"
