#!/usr/bin/env bash
# Create bench/.venv-dvc with DVC installed, for the side-by-side benchmark.
#
# DVC is not a dependency of dsv: it lives only in this private virtualenv,
# which bench/run.py uses as the comparison baseline. Idempotent: when the venv
# already has the pinned DVC, nothing is downloaded.
#
# Usage: bash bench/setup_dvc.sh        (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-dvc"
python="${PYTHON:-python3}"
spec='dvc[s3]==3.67.*'

if [ -x "$venv/bin/dvc" ] && "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("dvc").startswith("3.67.") else 1)
PY
then
    echo "dvc already installed: $("$venv/bin/dvc" --version) ($venv)"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# This machine's pip config names index directories that may be absent; drop that noise.
quiet() { "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
quiet "$venv/bin/python" -m pip install --quiet --upgrade pip
quiet "$venv/bin/python" -m pip install --quiet "$spec"
echo "dvc installed: $("$venv/bin/dvc" --version) ($venv)"
