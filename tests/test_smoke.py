"""The README's first minutes: init, commit, status, tag, checkout by tag."""

from pathlib import Path

from conftest import read_tree, write_tree


def test_single_directory_user(tmp_path: Path, dsv) -> None:
    data = tmp_path / "mydata"
    write_tree(data, {"a.txt": "alpha", "sub/b.bin": b"\x00\x01" * 1000})
    assert dsv("init", cwd=data).code == 0
    first = dsv("commit", "-m", "first", cwd=data)
    assert first.code == 0, first.err
    assert first.out.startswith("mydata:")
    assert "clean" in dsv("status", cwd=data).out
    (data / "a.txt").write_text("beta")
    second = dsv("commit", "-m", "second", cwd=data)
    assert dsv("tag", first.out.strip(), "v1", cwd=data).code == 0
    out = tmp_path / "copy"
    assert dsv("checkout", "mydata:v1", "--to", out, cwd=data).code == 0
    assert read_tree(out) == {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01" * 1000}
    assert second.out != first.out
