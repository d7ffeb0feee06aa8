"""Shell completion: commands and options from typer, and what the store holds (dataset
names, refs with tags, versions and remote-tracking refs, remote names), as a shell asks
for them (`_DSV_COMPLETE=complete_bash`, COMP_WORDS, COMP_CWORD) from a real process."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import run_dsv, write_tree


def complete(words: str, cwd: Path) -> list[str]:
    env = {**os.environ, "_DSV_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}
    r = subprocess.run([sys.executable, "-m", "dsv"], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout.split()


def test_completion_of_commands_options_datasets_refs_and_remotes(tmp_path: Path) -> None:
    ws = tmp_path / "mydata"
    write_tree(ws, {"a.txt": "a"})
    assert run_dsv("init", cwd=ws).returncode == 0
    vid = run_dsv("commit", "-m", "one", cwd=ws).stdout.strip().split(":")[1]
    assert run_dsv("tag", "mydata:latest", "v1", cwd=ws).returncode == 0
    assert run_dsv("datasets", "create", "other", cwd=ws).returncode == 0
    assert run_dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).returncode == 0
    assert complete("dsv che", ws) == ["checkout"]
    assert "--graph" in complete("dsv log --", ws)
    assert complete("dsv log o", ws) == ["other"]
    assert complete("dsv checkout my", ws) == ["mydata:"]
    assert complete("dsv checkout mydata:", ws) == sorted(
        ["mydata:latest", "mydata:v1", f"mydata:{vid}", "mydata:origin/latest"])
    assert complete("dsv show v", ws) == ["v1"]        # inside the dataset: its own tags
    assert complete("dsv push o", ws) == ["origin", "other:"]
    assert complete("dsv status -d my", ws) == ["mydata"]
    assert complete("dsv checkout x", tmp_path) == []   # no store here: nothing, no error
    # `--show-completion` prints the script of the shell it runs under (found by walking
    # up the process tree): run it under bash, whatever started the test suite.
    # (a second command keeps bash from exec-ing dsv in its own place)
    script = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m dsv "
                             "--show-completion; exit $?"], cwd=ws, capture_output=True,
                            text=True, timeout=60)
    assert script.returncode == 0, script.stderr
    assert "_DSV_COMPLETE=complete_bash" in script.stdout
