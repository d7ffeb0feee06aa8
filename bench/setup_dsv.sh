#!/usr/bin/env bash
# Install this checkout of dsv into bench/.venv-dsv, the way a user installs it
# (a regular, non-editable install with compiled bytecode), so that dsv and DVC are
# measured alike: each from its own virtualenv, neither through a shim.
# Re-run on every benchmark: the dependencies are installed once (and again when
# pyproject.toml gains one), dsv itself each time.
#
# The install is checked against the source tree: every module under dsv/ must be in
# the venv (a sub-package missing from pyproject.toml's package list fails here, loudly).
#
# `setup_dsv.sh read` (run.py passes it for --workload read) also installs what the read
# workload's measuring scripts import next to dsv: pandas, pyarrow and Dask (dsv:// in a
# Dask cluster) and s3fs (its baseline), resolved in the same pip run as dsv, so that pip
# picks a boto3/botocore that aiobotocore (s3fs) accepts, and checks that they import.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="$here/.venv-dsv"
python="${PYTHON:-python3}"

quiet() { "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    quiet "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

extras=()
if [ "${1:-}" = read ]; then
    bash "$repo/tests/setup.sh"  # libfuse 3 and fusermount3, for the mount steps
    extras=("pandas>=2" "pyarrow>=14" "dask[dataframe,distributed]>=2024.1" "s3fs")
fi

install_from() {  # $1: a source tree with pyproject.toml
    quiet "$venv/bin/python" -m pip install --quiet "$1" "${extras[@]}"  # new dependencies
    quiet "$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "$1"
}

# Modules of the source tree missing from the installed package (one per line).
missing_modules() {
    "$venv/bin/python" - "$repo" <<'PY'
import os, sys, importlib.util
repo = sys.argv[1]
os.chdir("/")  # never look at the working tree through sys.path
spec = importlib.util.find_spec("dsv")  # a top-level spec: nothing is executed
installed = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else ""
src = os.path.join(repo, "dsv")
for dirpath, dirs, names in os.walk(src):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    for name in names:
        if name.endswith(".py"):
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            if not installed or not os.path.isfile(os.path.join(installed, rel)):
                print("dsv/" + rel)
PY
}

install_from "$repo"
missing="$(missing_modules)"
if [ -n "$missing" ]; then
    echo "setup_dsv.sh: 'pip install $repo' leaves out these modules of the source tree" \
         "(check [tool.setuptools] packages in pyproject.toml):" >&2
    echo "$missing" | sed 's/^/  /' >&2
    exit 1
fi
if [ "${#extras[@]}" -gt 0 ]; then
    (cd / && "$venv/bin/python" -c "import fsspec, mfusepy, pandas, pyarrow, s3fs, dask.dataframe, distributed, dsv.fs") || {
        echo "setup_dsv.sh: the read workload's libraries do not import in $venv" >&2
        exit 1
    }
fi
echo "dsv installed: $("$venv/bin/dsv" --version) ($venv)"
