#!/usr/bin/env bash
# A two-minute tour of dsv on a throw-away directory: init, commit, tag, change,
# commit again, look at history and differences, check out the tagged version, push
# to a remote (a local directory), clone it elsewhere and check out by tag there.
set -euo pipefail

work=$(mktemp -d "${TMPDIR:-/tmp}/dsv-demo.XXXXXX")
echo "# working in $work"
mkdir -p "$work/mnist/train" "$work/mnist/test"
cd "$work/mnist"
python3 - <<'PY'
import os, random
r = random.Random(0)
for split, n in (("train", 50), ("test", 10)):
    for i in range(n):
        with open(f"{split}/{i:04d}.bin", "wb") as f:
            f.write(r.randbytes(r.randint(1000, 5000)))
with open("labels.csv", "w") as f:
    f.write("id,label\n" + "".join(f"{i},{i % 10}\n" for i in range(60)))
PY

set -x
dsv init
dsv commit -m "first snapshot of mnist"
dsv tag mnist:latest v1
cp labels.csv "$work/labels-v1.csv"
echo "60,3" >> labels.csv
rm test/0000.bin
dsv status
dsv commit -m "fix labels, drop a bad sample"
dsv log
dsv diff mnist:v1 mnist:latest
dsv checkout mnist:v1 --to "$work/mnist-v1"
dsv files list mnist:v1 --path test | head -5
dsv verify
dsv remote add origin "$work/remote"
dsv push
dsv push
cd "$work"
dsv clone "$work/remote" "$work/clone"
cd "$work/clone"
dsv log -n 1
dsv checkout mnist:v1
dsv status
set +x
cmp "$work/clone/labels.csv" "$work/labels-v1.csv" && echo "# the clone, checked out at mnist:v1, has the original labels.csv"
test -f "$work/mnist-v1/test/0000.bin" && echo "# mnist:v1 has test/0000.bin back, byte for byte"
cmp "$work/mnist-v1/labels.csv" "$work/labels-v1.csv" && echo "# labels.csv of v1 is the original"
echo "# demo done: $work"
