#!/usr/bin/env bash
# Install this checkout of dsv into bench/.venv-dsv, the way a user installs it
# (a regular, non-editable install with compiled bytecode), so that dsv and DVC are
# measured alike: each from its own virtualenv, neither through a shim.
# Re-run on every benchmark: the dependencies are installed once, dsv itself each time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="$here/.venv-dsv"
python="${PYTHON:-python3}"

quiet() { "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    quiet "$venv/bin/python" -m pip install --quiet --upgrade pip
    quiet "$venv/bin/python" -m pip install --quiet "$repo"
fi
quiet "$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "$repo"
# pip compiles bytecode unless PYTHONDONTWRITEBYTECODE is set; make sure it exists.
"$venv/bin/python" -m compileall -q "$("$venv/bin/python" -c 'import dsv, os; print(os.path.dirname(dsv.__file__))')"
echo "dsv installed from $repo ($venv)"
