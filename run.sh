#!/usr/bin/env bash
# The main job: an allreduce over 4 local MPI ranks, each algorithm timed and
# checked against MPI_Allreduce. Extra arguments go to the example.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup_venv.sh"
exec "$root/.venv/bin/mpiexec" -n "${RANKS:-4}" "$root/.venv/bin/python" "$root/examples/allreduce_demo.py" "$@"
