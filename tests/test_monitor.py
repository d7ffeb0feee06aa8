"""`dsv monitor` (issue 11, the flat workload): a file-change monitor of a dataset's
directory, so that a commit looks only at the paths it reports changed instead of
lstat'ing every file. Every test checks the monitored commit against what a walk finds
(`dsv status` without the monitor, or the files a version lists), and counts the walks."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import Result, write_tree
from dsv import monitor, worktree

pytestmark = pytest.mark.skipif(not os.uname().sysname == "Linux", reason="inotify")


def _ok(res: Result) -> Result:
    assert res.code == 0, res.err
    return res


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The whole-directory walks made from now on (a walk that starts under a directory
    the monitor reported new is not one)."""
    seen: list[str] = []
    real = worktree.walk

    def counted(root, *args, **kwargs):  # noqa: ANN001, ANN202 - the walk's own signature
        if not kwargs.get("start"):
            seen.append(os.fspath(root))
        return real(root, *args, **kwargs)

    monkeypatch.setattr(worktree, "walk", counted)
    return seen


@pytest.fixture
def watched(tmp_path: Path, dsv):
    """A committed workspace with a running monitor whose token the stat cache holds."""
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a", "b.txt": "b", "sub/c.txt": "c", "sub/deep/d.txt": "d",
                    "gone/e.txt": "e"})
    _ok(dsv("init", "--name", "data", cwd=ws))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    write_tree(ws, {"a.txt": "a1"})   # (a change: the start cannot vouch at once)
    started = json.loads(_ok(dsv("monitor", "start", "--json", cwd=ws)).out)
    assert started["running"] and started["watches"] == 4 and not started["vouched"]
    _ok(dsv("commit", "-m", "walks once", cwd=ws))   # (vouches for the rest from now on)
    assert json.loads(_ok(dsv("monitor", "status", "--json", cwd=ws)).out)["vouched"]
    yield ws
    dsv("monitor", "stop", cwd=ws)


def _files(dsv, ws: Path) -> dict[str, str]:
    rows = json.loads(_ok(dsv("files", "list", "data:latest", "--recursive", "--json",
                              cwd=ws)).out)
    return {r["path"]: r["hash"] for r in rows}


def _clean_by_walking(dsv, ws: Path) -> None:
    status = json.loads(_ok(dsv("status", "--json", cwd=ws)).out)[0]
    assert status["clean"], status


def test_a_monitored_commit_looks_only_at_what_changed(watched: Path, dsv,
                                                       walks: list[str]) -> None:
    ws = watched
    write_tree(ws, {"a.txt": "a2", "new.txt": "n", "fresh/x/y.txt": "y", "sub/deep/d.txt": "d2"})
    (ws / "b.txt").unlink()
    os.chmod(ws / "sub" / "c.txt", 0o755)
    os.symlink("a.txt", ws / "link")
    for name in os.listdir(ws / "gone"):
        os.unlink(ws / "gone" / name)
    os.rmdir(ws / "gone")
    _ok(dsv("commit", "-m", "monitored", cwd=ws))   # (no pause: the cookie orders it)
    assert walks == []
    files = _files(dsv, ws)
    assert sorted(files) == ["a.txt", "fresh/x/y.txt", "link", "new.txt", "sub/c.txt",
                             "sub/deep/d.txt"]
    from dsv.hashing import hash_bytes
    assert files["a.txt"] == hash_bytes(b"a2") and files["fresh/x/y.txt"] == hash_bytes(b"y")
    modes = {r["path"]: r["mode"] for r in json.loads(_ok(dsv(
        "files", "list", "data:latest", "--recursive", "--json", cwd=ws)).out)}
    assert modes["sub/c.txt"] == "0o755"
    _clean_by_walking(dsv, ws)
    # the next change is seen too, in a directory made after the monitor started
    write_tree(ws, {"fresh/x/z.txt": "z"})
    walks.clear()
    _ok(dsv("commit", "-m", "again", cwd=ws))
    assert walks == [] and "fresh/x/z.txt" in _files(dsv, ws)
    _clean_by_walking(dsv, ws)


def test_nothing_changed_keeps_the_monitor_vouching(watched: Path, dsv, walks: list[str]) -> None:
    res = dsv("commit", "-m", "nothing", cwd=watched)
    assert res.code == 1 and "nothing to commit" in res.err
    assert walks == []
    (watched / "a.txt").write_text("a1")   # (the same bytes, a new mtime)
    res = dsv("commit", "-m", "nothing", cwd=watched)
    assert res.code == 1 and "nothing to commit" in res.err and walks == []


@pytest.mark.parametrize("change", ["dsvignore", "rename_dir", "restart", "killed", "store",
                                    "nested", "unnested"])
def test_what_the_monitor_cannot_vouch_for_makes_the_commit_walk(
        watched: Path, dsv, walks: list[str], change: str) -> None:
    ws = watched
    if change == "dsvignore":   # (what a walk leaves out changed)
        (ws / ".dsvignore").write_text("sub/deep/\n")
    elif change == "rename_dir":   # (the watches under it would name stale paths)
        os.rename(ws / "sub", ws / "sub2")
    elif change == "restart":   # (another process: another epoch)
        _ok(dsv("monitor", "stop", cwd=ws))
        _ok(dsv("monitor", "start", cwd=ws))
        write_tree(ws, {"a.txt": "changed before the restart was asked"})
    elif change == "killed":
        pid = json.loads(_ok(dsv("monitor", "status", "--json", cwd=ws)).out)["pid"]
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        write_tree(ws, {"a.txt": "changed while no monitor ran"})
    elif change == "store":   # (a nested store: its directory leaves the dataset)
        os.mkdir(ws / "sub" / ".dsv")
    elif change == "nested":   # (a nested dataset: made with no event in the directory)
        _ok(dsv("datasets", "create", "inner", "--path", "sub", cwd=ws))
    elif change == "unnested":
        _ok(dsv("datasets", "create", "inner", "--path", "sub", cwd=ws))
        _ok(dsv("commit", "-m", "sub leaves", cwd=ws))
        walks.clear()
        _ok(dsv("datasets", "delete", "inner", "--yes", cwd=ws))
    _ok(dsv("commit", "-m", change, cwd=ws))
    assert walks == [str(ws)]
    # the token that walking commit saved vouches again: the next commit does not walk
    # (without a monitor, every commit walks)
    write_tree(ws, {"new-after.txt": "later"})
    _ok(dsv("commit", "-m", "after", cwd=ws))
    assert walks == [str(ws)] * (2 if change == "killed" else 1)
    assert _files(dsv, ws)["new-after.txt"] == _hash("later")
    _clean_by_walking(dsv, ws)
    files = _files(dsv, ws)
    if change == "dsvignore":
        assert "sub/deep/d.txt" not in files and ".dsvignore" in files
    elif change == "rename_dir":
        assert "sub2/c.txt" in files and "sub/c.txt" not in files
    elif change in ("restart", "killed"):
        assert files["a.txt"] != _hash("a1")
    elif change == "unnested":
        assert files["sub/c.txt"] == _hash("c") and "sub/deep/d.txt" in files
    else:
        assert not any(p.startswith("sub/") for p in files)


def _hash(text: str) -> str:
    from dsv.hashing import hash_bytes
    return hash_bytes(text.encode())


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{pid} still runs")


def test_stop_ends_the_process_and_commits_walk_again(watched: Path, dsv,
                                                      walks: list[str]) -> None:
    pid = json.loads(_ok(dsv("monitor", "status", "--json", cwd=watched)).out)["pid"]
    stopped = _ok(dsv("monitor", "stop", cwd=watched)).out
    assert "no monitor watches" in stopped
    _wait_gone(pid)
    write_tree(watched, {"b.txt": "b2"})
    _ok(dsv("commit", "-m", "walked", cwd=watched))
    assert walks == [str(watched)] and _files(dsv, watched)["b.txt"] == _hash("b2")


class _FakeMonitor:
    """A process of this user answering on an abstract socket what a test makes it say."""

    def __init__(self, answer: bytes) -> None:
        self.name = f"dsv-monitor-{os.urandom(16).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.sock.listen(4)
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                client.recv(256)
                client.sendall(self.answer)
            except OSError:
                pass  # (a client that refused this process hung up first)
            client.close()


@pytest.mark.parametrize("case", ["bad_path", "other_root", "other_inode", "other_pid",
                                  "garbage"])
def test_a_monitor_answer_that_cannot_be_trusted_makes_the_commit_walk(
        watched: Path, dsv, walks: list[str], case: str) -> None:
    ws = watched
    dsv("monitor", "stop", cwd=ws)
    dsv_dir, ds_id = ws / ".dsv", _dataset_id(dsv, ws)
    token = "0" * 32 + ".5"
    monitor.save_token(dsv_dir, ds_id, token, monitor.context(ws.resolve(), [".dsv"]))
    changed = ["../../etc/passwd"] if case == "bad_path" else []
    root = "/elsewhere" if case == "other_root" else str(ws.resolve())
    st = os.stat(ws)
    inode = [st.st_dev, st.st_ino + (1 if case == "other_inode" else 0)]
    answer = b"{not json\n" if case == "garbage" else json.dumps(
        {"token": "0" * 32 + ".6", "root": root, "inode": inode,
         "changed": changed}).encode() + b"\n"
    fake = _FakeMonitor(answer)
    pid = os.getpid() + (1 if case == "other_pid" else 0)
    (monitor.monitor_dir(dsv_dir, ds_id) / "address").write_text(
        json.dumps({"socket": fake.name, "pid": pid}))
    write_tree(ws, {"b.txt": "b2"})   # (the fake reports nothing: a walk must find it)
    _ok(dsv("commit", "-m", case, cwd=ws))
    assert walks == [str(ws)] and _files(dsv, ws)["b.txt"] == _hash("b2")
    fake.sock.close()


def test_the_fake_monitor_is_believed_when_everything_checks(watched: Path, dsv,
                                                             walks: list[str]) -> None:
    """The control of the test above: the same fake, honest in every check, is used (a
    change it does not report is then not committed: the monitor is trusted)."""
    ws = watched
    dsv("monitor", "stop", cwd=ws)
    dsv_dir, ds_id = ws / ".dsv", _dataset_id(dsv, ws)
    monitor.save_token(dsv_dir, ds_id, "0" * 32 + ".5",
                       monitor.context(ws.resolve(), [".dsv"]))
    st = os.stat(ws)
    fake = _FakeMonitor(json.dumps({"token": "0" * 32 + ".6", "root": str(ws.resolve()),
                                    "inode": [st.st_dev, st.st_ino],
                                    "changed": ["new.txt"]}).encode() + b"\n")
    (monitor.monitor_dir(dsv_dir, ds_id) / "address").write_text(
        json.dumps({"socket": fake.name, "pid": os.getpid()}))
    write_tree(ws, {"new.txt": "n", "b.txt": "unreported"})
    _ok(dsv("commit", "-m", "fake", cwd=ws))
    files = _files(dsv, ws)
    assert walks == [] and files["new.txt"] == _hash("n") and files["b.txt"] == _hash("b")
    fake.sock.close()


def _dataset_id(dsv, ws: Path) -> str:
    return json.loads(_ok(dsv("monitor", "status", "--json", cwd=ws)).out)["id"]


def test_start_refuses_a_dataset_without_a_directory(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a"})
    _ok(dsv("init", "--name", "data", cwd=ws))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    _ok(dsv("datasets", "create", "other", "--path", "other", cwd=ws))
    os.rmdir(ws / "other")
    res = dsv("monitor", "start", "-d", "other", cwd=ws)
    assert res.code == 1 and "does not exist" in res.err


def test_status_with_a_monitor_reports_what_a_walk_reports(watched: Path, dsv,
                                                          walks: list[str]) -> None:
    ws = watched
    write_tree(ws, {"a.txt": "a2", "new.txt": "n", "fresh/y.txt": "y"})
    (ws / "b.txt").unlink()
    os.chmod(ws / "sub" / "c.txt", 0o755)
    (ws / "sub" / "deep" / "d.txt").write_text("d")   # (touched, the same bytes)
    monitored = json.loads(_ok(dsv("status", "--json", cwd=ws)).out)[0]
    assert walks == []
    assert monitored["modified"] == ["a.txt", "sub/c.txt"] and monitored["deleted"] == ["b.txt"]
    assert monitored["added"] == ["fresh/y.txt", "new.txt"] and not monitored["clean"]
    _ok(dsv("monitor", "stop", cwd=ws))
    walked = json.loads(_ok(dsv("status", "--json", cwd=ws)).out)[0]
    assert walks == [str(ws)] and walked == monitored


def test_a_change_to_a_hard_linked_file_makes_the_commit_walk(watched: Path, dsv,
                                                              walks: list[str]) -> None:
    """inotify names only the link a change went through; the file's other names in the
    directory changed too, so the monitor vouches for nothing after such a change."""
    ws = watched
    os.link(ws / "sub" / "c.txt", ws / "linked.txt")
    _ok(dsv("commit", "-m", "a second name", cwd=ws))
    assert walks == [str(ws)]
    with open(ws / "sub" / "c.txt", "a") as f:
        f.write(" and more")
    _ok(dsv("commit", "-m", "through one name", cwd=ws))
    assert walks == [str(ws)] * 2
    write_tree(ws, {"b.txt": "b2"})   # (a file of one name: the monitor vouches again)
    _ok(dsv("commit", "-m", "after", cwd=ws))
    assert walks == [str(ws)] * 2
    files = _files(dsv, ws)
    assert files["linked.txt"] == files["sub/c.txt"] == _hash("c and more")


def test_start_on_a_clean_directory_vouches_at_once(tmp_path: Path, dsv,
                                                    walks: list[str]) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "a", "sub/b.txt": "b"})
    _ok(dsv("init", "--name", "data", cwd=ws))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    walks.clear()
    try:
        started = json.loads(_ok(dsv("monitor", "start", "--json", cwd=ws)).out)
        assert started["vouched"] and walks == [str(ws)]   # (the start's own check)
        write_tree(ws, {"sub/b.txt": "b2"})
        _ok(dsv("commit", "-m", "two", cwd=ws))
        assert walks == [str(ws)] and _files(dsv, ws)["sub/b.txt"] == _hash("b2")
    finally:
        dsv("monitor", "stop", cwd=ws)


def test_a_walking_status_that_finds_the_directory_clean_vouches(watched: Path, dsv,
                                                                 walks: list[str]) -> None:
    ws = watched
    _ok(dsv("monitor", "stop", cwd=ws))
    _ok(dsv("monitor", "start", cwd=ws))   # (clean: vouched by its own check)
    pid = json.loads(_ok(dsv("monitor", "status", "--json", cwd=ws)).out)["pid"]
    dsv_dir, ds_id = ws / ".dsv", _dataset_id(dsv, ws)
    monitor.save_token(dsv_dir, ds_id, None)
    walks.clear()
    _clean_by_walking(dsv, ws)
    assert walks == [str(ws)]
    assert monitor.saved_token(dsv_dir, ds_id, monitor.context(ws.resolve(), [".dsv"]))
    write_tree(ws, {"b.txt": "b2"})
    _ok(dsv("commit", "-m", "monitored", cwd=ws))
    assert walks == [str(ws)] and _files(dsv, ws)["b.txt"] == _hash("b2")
    assert json.loads(_ok(dsv("monitor", "status", "--json", cwd=ws)).out)["pid"] == pid


def test_a_directory_put_in_place_of_the_watched_one_is_walked(tmp_path: Path, dsv,
                                                               walks: list[str]) -> None:
    """The monitor watches inodes: a directory moved away (renaming its parent gives it
    no event) and a copy put where it was are told apart by the inode."""
    top = tmp_path / "top"
    ws = top / "ws"
    write_tree(ws, {"a.txt": "a"})
    _ok(dsv("init", "--name", "data", cwd=ws))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    try:
        assert json.loads(_ok(dsv("monitor", "start", "--json", cwd=ws)).out)["vouched"]
        os.rename(top, tmp_path / "old")
        os.mkdir(top)
        os.rename(tmp_path / "old" / "ws", ws)   # (the same store, moved back...)
        os.rename(ws, tmp_path / "old" / "ws")   # (...and away again: the monitor
        import shutil                            #  still watches that inode)
        shutil.copytree(tmp_path / "old" / "ws", ws, symlinks=True)
        write_tree(ws, {"a.txt": "a2"})
        walks.clear()
        _ok(dsv("commit", "-m", "two", cwd=ws))
        assert walks == [str(ws)] and _files(dsv, ws)["a.txt"] == _hash("a2")
    finally:
        dsv("monitor", "stop", cwd=ws)


def test_monitor_start_never_runs_code_from_the_dataset(tmp_path: Path, dsv) -> None:
    """The monitor process is started as `python -m dsv.monitor`; started in a dataset's
    directory holding a `dsv/` package, Python would import that one (the current
    directory comes first on sys.path) and run the dataset's code."""
    ws = tmp_path / "ws"
    marker = tmp_path / "ran"
    hostile = f"open({str(marker)!r}, 'w').write('dataset code ran')\n"
    write_tree(ws, {"dsv/__init__.py": hostile, "dsv/monitor.py": hostile, "a.txt": "a"})
    _ok(dsv("init", "--name", "data", cwd=ws))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    try:
        assert json.loads(_ok(dsv("monitor", "start", "--json", cwd=ws)).out)["running"]
        assert not marker.exists()
    finally:
        dsv("monitor", "stop", cwd=ws)


def test_start_refuses_a_file_system_whose_changes_inotify_may_not_report() -> None:
    with pytest.raises(monitor.MonitorError, match="proc file system"):
        monitor._refuse_unwatchable(Path("/proc/self"))


@pytest.fixture
def state(tmp_path: Path):
    """The monitor process's state, in this process: events are fed to it by hand."""
    root = tmp_path / "root"
    write_tree(root, {"a.txt": "a", "sub/b.txt": "b"})
    dsv_dir = tmp_path / "store" / ".dsv"
    (monitor.monitor_dir(dsv_dir, "ds") / "cookies").mkdir(parents=True)
    made = monitor._Monitor(dsv_dir, "ds", root)
    yield made
    os.close(made.inotify.fd)


def _watch_of(state: monitor._Monitor, rel: str) -> int:
    """The watch of the directory `rel` (events are fed through it)."""
    return next(wd for wd, where in state.paths.items() if where == rel)


def _said(state: monitor._Monitor, token: str) -> dict:
    return json.loads(state.answer(f"since {token}"))


def test_an_overflow_vouches_for_no_token_given_before_it_and_for_the_next(
        state: monitor._Monitor) -> None:
    before = _said(state, "-")["token"]
    state.take([(_watch_of(state, ""), monitor.IN_MODIFY, "a.txt")], set())
    assert _said(state, before)["changed"] == ["a.txt"]
    state.take([(-1, monitor.IN_Q_OVERFLOW, ""),
                (_watch_of(state, ""), monitor.IN_MODIFY, "lost.txt")], set())
    assert "changed" not in _said(state, before)
    after = _said(state, before)["token"]
    assert _said(state, after)["changed"] == []   # (the token given after it vouches)
    state.take([(_watch_of(state, "sub"), monitor.IN_CREATE, "c.txt")], set())
    assert _said(state, after)["changed"] == ["sub/c.txt"]


def test_a_foreign_file_system_mounted_inside_the_root_vouches_for_nothing(
        state: monitor._Monitor) -> None:
    token = _said(state, "-")["token"]
    assert _said(state, token)["changed"] == []
    state.mounts = {(state.root + "/sub", "nfs4")}   # (what a mount there makes)
    assert "changed" not in _said(state, _said(state, "-")["token"])
    state.mounts = set()
    assert _said(state, token)["changed"] == []


def test_once_a_hard_linked_file_was_seen_a_file_gone_before_its_event_counts_as_one(
        state: monitor._Monitor) -> None:
    token = _said(state, "-")["token"]
    # (a file of one name, gone by the time its event is taken in: an editor's temp)
    state.take([(_watch_of(state, ""), monitor.IN_CLOSE_WRITE, "gone.tmp")], set())
    assert _said(state, token)["changed"] == ["gone.tmp"]
    os.link(Path(state.root) / "a.txt", Path(state.root) / "b.txt")
    state.take([(_watch_of(state, ""), monitor.IN_CREATE, "b.txt")], set())
    assert state.linked and "changed" not in _said(state, token)
    token = _said(state, token)["token"]
    state.take([(_watch_of(state, ""), monitor.IN_MODIFY, "gone2.tmp")], set())
    assert "changed" not in _said(state, token)
