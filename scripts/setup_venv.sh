#!/usr/bin/env bash
# Makes .venv/ at the repository root hold everything pyallreduce needs, and
# (re)builds the C++ extension when csrc/, setup.py or pyproject.toml changed.
# Idempotent and quick when nothing changed; scripts/run.sh and scripts/test.sh call it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
cd "$root"

if [ ! -x "$venv/bin/python" ]; then
  python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  echo "setup: creating $venv with $python"
  "$python" -m venv "$venv"
fi

if ! cmp -s requirements-dev.txt "$venv/.requirements-installed"; then
  echo "setup: installing requirements-dev.txt into .venv/"
  "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
  "$venv/bin/python" -m pip install --quiet -r requirements-dev.txt
  cp requirements-dev.txt "$venv/.requirements-installed"
fi

build_hash="$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)"
if [ "$build_hash" != "$(cat "$venv/.build-hash" 2>/dev/null)" ]; then
  echo "setup: building the pyallreduce extension against $("$venv/bin/mpichversion" 2>/dev/null | head -1 || echo 'mpicc')"
  if ! "$venv/bin/python" -m pip install --no-build-isolation --no-deps --editable . > "$venv/build.log" 2>&1; then
    cat "$venv/build.log" >&2
    echo "setup: building the extension failed (log above, also in .venv/build.log)" >&2
    exit 1
  fi
  echo "$build_hash" > "$venv/.build-hash"
fi
