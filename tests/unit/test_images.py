"""The digest-keyed SIF cache: single flight across processes, verification, cleanup.

``apptainer inspect`` is faked at the subprocess boundary (an injected runner);
tests/integration/test_image_cache.py runs the same cache with the real Apptainer.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcgear.errors import ImageError, StorageError
from hpcgear.gears.images import ImageCache, exclusive_lock
from hpcgear.scheduler.runner import CompletedCommand
from hpcgear.storage.objects import ObjectStore

IMAGE = b"SIF-MAGIC fake image bytes " * 1000
DIGEST = "sha256:" + hashlib.sha256(IMAGE).hexdigest()


class FakeInspect:
    """Answers ``apptainer inspect PATH``: ok unless the file starts with b"BAD"."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        self.calls.append(tuple(argv))
        assert argv[1] == "inspect"
        data = Path(argv[2]).read_bytes()
        if data.startswith(b"BAD"):
            return CompletedCommand(tuple(argv), 255, "",
                                    "FATAL:   Failed to open image: image format not recognized",
                                    0.01)
        return CompletedCommand(tuple(argv), 0, "org.label-schema.schema-version: 1.0\n", "",
                                0.01)


def write_bytes(data: bytes, tmp: Path) -> None:
    tmp.write_bytes(data)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != ".locks")


def test_path_for_is_digest_keyed(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, runner=FakeInspect())
    assert cache.path_for(DIGEST) == tmp_path / f"sha256-{DIGEST[7:]}.sif"
    assert cache.lookup(DIGEST) is None
    for bad in ("sha256:abc", "md5:" + "0" * 32, DIGEST.upper(), "", "../" + DIGEST):
        with pytest.raises(ImageError, match="not an image digest"):
            cache.path_for(bad)


def test_ensure_fills_verifies_and_publishes_read_only(tmp_path: Path) -> None:
    runner = FakeInspect()
    cache = ImageCache(tmp_path / "cache", runner=runner, apptainer="/opt/apptainer")
    calls: list[Path] = []

    def fill(tmp: Path) -> None:
        calls.append(tmp)
        assert tmp.parent == cache.root  # same filesystem, so the rename is atomic
        tmp.write_bytes(IMAGE)

    path = cache.ensure(DIGEST, fill)
    assert path == cache.path_for(DIGEST)
    assert path.read_bytes() == IMAGE
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert len(calls) == 1
    # apptainer inspect ran on the temp file, before it got its final name
    assert runner.calls == [("/opt/apptainer", "inspect", str(calls[0]))]
    assert not calls[0].exists()
    # a second request reuses the file: no fill, no inspect
    assert cache.ensure(DIGEST, fill) == path
    assert len(calls) == 1 and len(runner.calls) == 1
    assert [e.digest for e in cache.entries()] == [DIGEST]
    assert leftovers(cache.root) == [path.name]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (IMAGE[:-1], "hash to sha256:"),  # truncated copy
        (b"another image", "hash to sha256:"),
        (b"", "empty file"),
    ],
)
def test_corrupt_fill_is_refused_and_nothing_stays(tmp_path: Path, data: bytes,
                                                  match: str) -> None:
    cache = ImageCache(tmp_path, runner=FakeInspect())
    with pytest.raises(ImageError, match=match) as info:
        cache.ensure(DIGEST, functools.partial(write_bytes, data))
    assert DIGEST in info.value.message
    assert cache.lookup(DIGEST) is None
    assert leftovers(tmp_path) == []


def test_image_apptainer_cannot_read_is_refused(tmp_path: Path) -> None:
    data = b"BAD" + IMAGE
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cache = ImageCache(tmp_path, runner=FakeInspect())
    with pytest.raises(ImageError, match=r"apptainer inspect failed .*format not recognized"):
        cache.ensure(digest, functools.partial(write_bytes, data))
    assert leftovers(tmp_path) == []


def test_fill_that_raises_leaves_nothing(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, runner=FakeInspect())

    def fill(tmp: Path) -> None:
        tmp.write_bytes(IMAGE[:100])
        raise StorageError("object sha256:x is missing from storage", "restore it")

    with pytest.raises(ImageError, match=r"filling image .* missing from storage") as info:
        cache.ensure(DIGEST, fill)
    assert info.value.hint == "restore it"
    assert leftovers(tmp_path) == []
    # and the next attempt can fill it
    assert cache.ensure(DIGEST, functools.partial(write_bytes, IMAGE)).read_bytes() == IMAGE


def test_leftover_of_a_crashed_fill_is_removed(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, runner=FakeInspect())
    stale = tmp_path / f".tmp-{DIGEST[7:]}-crashed.sif"
    stale.write_bytes(b"half")
    other = tmp_path / f".tmp-{'0' * 64}-someone-else.sif"
    other.write_bytes(b"not ours")
    cache.ensure(DIGEST, functools.partial(write_bytes, IMAGE))
    assert not stale.exists()
    assert other.exists()  # another digest's fill is not touched


def test_waiting_for_another_fill_times_out_transiently(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, runner=FakeInspect(), lock_timeout=0.3)
    (tmp_path / ".locks").mkdir()
    lock = tmp_path / ".locks" / f"{DIGEST[7:]}.lock"
    calls: list[Path] = []
    with exclusive_lock(lock, 1, "test"):
        started = time.monotonic()
        with pytest.raises(ImageError, match="still being filled") as info:
            cache.ensure(DIGEST, calls.append)
        assert time.monotonic() - started < 5
    assert info.value.transient
    assert calls == []


def test_ensure_from_store_copies_the_installed_object(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    obj = store.put_bytes(IMAGE)
    cache = ImageCache(tmp_path / "cache", runner=FakeInspect())
    path = cache.ensure_from_store(store, obj.hash)
    assert path.read_bytes() == IMAGE
    assert obj.hash == DIGEST
    with pytest.raises(ImageError, match="missing from storage"):
        cache.ensure_from_store(store, "sha256:" + "1" * 64)


# ----------------------------------------------------------------- single flight


def _counting_fill(counter: Path, tmp: Path) -> None:
    with counter.open("a") as fh:  # O_APPEND: concurrent appends do not interleave
        fh.write(f"{os.getpid()}\n")
    time.sleep(0.3)  # a slow copy, so every other process arrives while it runs
    tmp.write_bytes(IMAGE)


def _request(root: str, counter: str, barrier: multiprocessing.synchronize.Barrier,
             results: multiprocessing.queues.Queue[tuple[str, str]]) -> None:
    cache = ImageCache(Path(root), runner=FakeInspect())
    barrier.wait()
    try:
        path = cache.ensure(DIGEST, functools.partial(_counting_fill, Path(counter)))
        results.put(("ok", str(path)))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc)))


def test_twenty_processes_cause_exactly_one_fill(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 20
    barrier = ctx.Barrier(n)
    results: multiprocessing.queues.Queue[tuple[str, str]] = ctx.Queue()
    counter = tmp_path / "fills.txt"
    root = tmp_path / "cache"
    procs = [ctx.Process(target=_request, args=(str(root), str(counter), barrier, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [o for o in outcomes if o[0] != "ok"] == []
    assert {o[1] for o in outcomes} == {str(root / f"sha256-{DIGEST[7:]}.sif")}
    fills = counter.read_text().split()
    assert len(fills) == 1, f"{len(fills)} processes filled the image: {fills}"
    assert (root / f"sha256-{DIGEST[7:]}.sif").read_bytes() == IMAGE
    assert leftovers(root) == [f"sha256-{DIGEST[7:]}.sif"]
