#!/usr/bin/env bash
# Install this checkout of dsv into bench/.venv-dsv, the way a user installs it
# (a regular, non-editable install with compiled bytecode), so that dsv and DVC are
# measured alike: each from its own virtualenv, neither through a shim.
# Re-run on every benchmark: the dependencies are installed once (and again when
# pyproject.toml gains one), dsv itself each time.
#
# The install is checked against the source tree: every module under dsv/ must be
# importable from the venv. When the packaging leaves some out (pyproject.toml listing
# `packages = ["dsv"]` drops sub-packages such as dsv.remotes), this script says so
# loudly and installs from a temporary copy of the source whose pyproject lists every
# package, so that the benchmark measures the code in the working tree.
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

install_from() {  # $1: a source tree with pyproject.toml
    quiet "$venv/bin/python" -m pip install --quiet "$1"          # new dependencies, if any
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
    echo "WARNING: 'pip install $repo' does not install these modules of the source tree:" >&2
    echo "$missing" | sed 's/^/WARNING:   /' >&2
    echo "WARNING: (pyproject.toml [tool.setuptools] packages lists only some packages)." >&2
    echo "WARNING: installing from a temporary copy whose pyproject lists every package;" >&2
    echo "WARNING: a user's 'pip install' of this checkout gets a broken dsv." >&2
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    cp "$repo/pyproject.toml" "$tmp/"
    [ -f "$repo/README.md" ] && cp "$repo/README.md" "$tmp/"
    (cd "$repo" && find dsv -name '*.py' -not -path '*/__pycache__/*' -print0 \
        | xargs -0 cp --parents -t "$tmp")
    "$venv/bin/python" - "$tmp" <<'PY'
import os, re, sys
root = sys.argv[1]
pkgs = sorted(os.path.relpath(d, root).replace(os.sep, ".")
              for d, _, names in os.walk(os.path.join(root, "dsv")) if "__init__.py" in names)
path = os.path.join(root, "pyproject.toml")
text = open(path).read()
text, n = re.subn(r"(?m)^packages\s*=.*$", "packages = " + repr(pkgs).replace("'", '"'), text)
if n != 1:
    sys.exit("setup_dsv.sh: cannot find the packages line in pyproject.toml")
open(path, "w").write(text)
PY
    install_from "$tmp"
    missing="$(missing_modules)"
    if [ -n "$missing" ]; then
        echo "setup_dsv.sh: still missing after the workaround: $missing" >&2
        exit 1
    fi
fi
# pip compiles bytecode unless PYTHONDONTWRITEBYTECODE is set; make sure it exists.
"$venv/bin/python" -m compileall -q "$(cd / && "$venv/bin/python" -c 'import dsv, os; print(os.path.dirname(dsv.__file__))')"
echo "dsv installed from $repo ($venv)"
