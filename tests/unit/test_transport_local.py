"""LocalTransport: the same file operations the SSH transport offers, on this host."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hpcgear.errors import NotFoundError, TransportError
from hpcgear.scheduler.transport import LocalTransport, Transport


@pytest.fixture
def t() -> LocalTransport:
    return LocalTransport()


def test_is_a_transport(t: LocalTransport) -> None:
    assert isinstance(t, Transport)


def test_write_text_is_atomic_with_mode(t: LocalTransport, tmp_path: Path) -> None:
    target = tmp_path / "exit.json"
    t.write_text(target, '{"rc": 0}\n', mode=0o640)
    assert t.read_text(target) == '{"rc": 0}\n'
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    t.write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exit.json"]  # no temp left over


def test_write_into_missing_dir_fails_cleanly(t: LocalTransport, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        t.write_text(tmp_path / "nope" / "f", "x")


def test_mkdir_parents_and_mode(t: LocalTransport, tmp_path: Path) -> None:
    d = tmp_path / "a" / "b" / ".hpcgear"
    t.mkdir(d, mode=0o700)
    assert d.is_dir()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    t.mkdir(d)  # existing is fine
    assert t.exists(d)
    st = t.stat(d)
    assert st.is_dir and not st.is_file


def test_put_get_listdir_stat(t: LocalTransport, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"data\x00\xff")
    dst_dir = tmp_path / "remote"
    t.mkdir(dst_dir)
    t.put(src, dst_dir / "copy.bin", mode=0o644)
    assert (dst_dir / "copy.bin").read_bytes() == b"data\x00\xff"
    st = t.stat(dst_dir / "copy.bin")
    assert (st.size, st.mode, st.is_file) == (6, 0o644, True)
    t.get(dst_dir / "copy.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"data\x00\xff"
    assert t.listdir(dst_dir) == ["copy.bin"]


def test_missing_paths(t: LocalTransport, tmp_path: Path) -> None:
    assert not t.exists(tmp_path / "missing")
    with pytest.raises(NotFoundError) as info:
        t.read_text(tmp_path / "missing")
    assert "missing" in info.value.message
    with pytest.raises(NotFoundError):
        t.stat(tmp_path / "missing")
    with pytest.raises(NotFoundError):
        t.listdir(tmp_path / "missing")
    with pytest.raises(NotFoundError):
        t.put(tmp_path / "missing", tmp_path / "x")


def test_remove_tree(t: LocalTransport, tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "work" / "deep").mkdir(parents=True)
    (job / "work" / "deep" / "f").write_text("x")
    t.remove_tree(job)
    assert not job.exists()
    t.remove_tree(job)  # already gone: fine


def test_remove_tree_refuses_shallow_or_relative_paths(t: LocalTransport) -> None:
    for bad in ("/", "/scratch", "relative/path", "/tmp/.."):
        with pytest.raises(TransportError):
            t.remove_tree(bad)


def test_run_goes_through_the_runner(t: LocalTransport) -> None:
    result = t.run(["echo", "hi there"], timeout=5)
    assert result.ok and result.stdout == "hi there\n"
