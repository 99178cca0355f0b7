from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hpcgear.errors import NotFoundError, StorageError
from hpcgear.storage.objects import ObjectStore, sha256_file


def test_put_is_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 3_000_000)
    first = store.put_file(a)
    second = store.put_bytes(b"x" * 3_000_000)
    assert first.hash == "sha256:" + hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert first.existed is False and second.existed is True
    assert first.path == second.path
    objects = [p for p in (tmp_path / "store" / "objects").rglob("*") if p.is_file()]
    assert objects == [first.path]
    assert not (first.path.stat().st_mode & 0o222), "stored objects are read-only"
    assert list(store.tmp.iterdir()) == [], "no temp files left behind"


def test_expected_hash_mismatch_stores_nothing(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "s")
    with pytest.raises(StorageError, match="hash mismatch"):
        store.put_bytes(b"abc", expected="sha256:" + "0" * 64)
    assert not any(p.is_file() for p in (tmp_path / "s" / "objects").rglob("*"))
    assert list(store.tmp.iterdir()) == []


def test_copy_to_verifies_and_detects_corruption(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "s")
    obj = store.put_bytes(b"hello world")
    out = store.copy_to(obj.hash, tmp_path / "out" / "h.txt")
    assert out.read_bytes() == b"hello world"
    assert sha256_file(out) == obj.hash
    os.chmod(obj.path, 0o644)
    obj.path.write_bytes(b"hello w0rld")
    with pytest.raises(StorageError, match="corrupt"):
        store.copy_to(obj.hash, tmp_path / "out2" / "h.txt")
    assert not (tmp_path / "out2" / "h.txt").exists()


def test_missing_source_and_bad_hash(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "s")
    with pytest.raises(NotFoundError):
        store.put_file(tmp_path / "nope")
    with pytest.raises(StorageError, match="not a content hash"):
        store.path_for("md5:abc")
    with pytest.raises(StorageError, match="missing"):
        store.copy_to("sha256:" + "1" * 64, tmp_path / "x")


def test_delete_and_clean_tmp(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "s")
    obj = store.put_bytes(b"1")
    assert store.delete(obj.hash) is True
    assert store.delete(obj.hash) is False
    (store.tmp / "put-leftover").write_bytes(b"partial")
    assert store.clean_tmp() == 1


def test_put_files_matches_put_file_and_cleans_up(tmp_path: Path) -> None:
    """The bulk put (one filesystem sync per phase) stores what single puts store."""
    from hpcgear.storage.objects import BULK_SYNC_MIN

    src = tmp_path / "src"
    src.mkdir()
    paths = []
    for i in range(BULK_SYNC_MIN + 3):
        p = src / f"f{i}"
        p.write_bytes(f"content {i % (BULK_SYNC_MIN + 1)}".encode())  # two share bytes
        paths.append(p)
    store = ObjectStore(tmp_path / "store")
    single = ObjectStore(tmp_path / "single")
    objs = store.put_files(paths)
    assert [o.hash for o in objs] == [single.put_file(p).hash for p in paths]
    assert [o.hash for o in objs] == [sha256_file(p) for p in paths]
    assert all(store.exists(o.hash) for o in objs)
    assert sum(not o.existed for o in objs) == len({o.hash for o in objs})
    assert list(store.tmp.iterdir()) == []
    again = store.put_files(paths[:2])
    assert all(o.existed for o in again) and list(store.tmp.iterdir()) == []
    with pytest.raises(NotFoundError):
        store.put_files([paths[0], src / "missing"])
    assert list(store.tmp.iterdir()) == [], "a failed batch leaves no temp files"
