#!/usr/bin/env bash
# What the test suite needs beyond pip: libfuse 3 and fusermount3, for `dsv mount`
# (tests/test_mount.py). Installed with apt-get when missing (as root); idempotent.
set -euo pipefail
if command -v fusermount3 >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so'; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
else
    echo "tests/setup.sh: install fuse3 (libfuse 3 and fusermount3), which the dsv mount tests need" >&2
    exit 1
fi
