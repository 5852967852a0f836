#!/usr/bin/env bash
# The whole test suite (in-process, mpiexec-launched, the README's code and
# the packaging check). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
