"""The SIF cache with real images and the real ``apptainer inspect`` (dev cluster wrapper).

The unit tests (tests/unit/test_images.py) fake ``apptainer inspect``; here the
runtime itself decides whether what was filled is a SIF it can run.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hpcgear.errors import ImageError
from hpcgear.gears.images import ImageCache
from hpcgear.storage.objects import ObjectStore, sha256_file

if TYPE_CHECKING:
    from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.apptainer]


def test_real_sif_through_the_cache_runs(dev_env: DevEnv, tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    obj = store.put_file(dev_env.smoke_sif)
    cache = ImageCache(tmp_path / "cache", apptainer=str(dev_env.apptainer))
    path = cache.ensure_from_store(store, obj.hash)
    assert path == tmp_path / "cache" / f"sha256-{obj.hash[7:]}.sif"
    assert sha256_file(path) == obj.hash
    assert path.stat().st_mode & 0o777 == 0o444
    proc = subprocess.run([str(dev_env.apptainer), "exec", "--containall", str(path),
                           "echo", "cached-ok"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and "cached-ok" in proc.stdout, proc.stderr
    cache.verify(path, obj.hash)  # a published image verifies again


def test_bytes_that_are_not_a_sif_are_refused_by_apptainer(dev_env: DevEnv,
                                                          tmp_path: Path) -> None:
    data = b"#!/bin/sh\necho this is not a SIF\n" * 100
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cache = ImageCache(tmp_path, apptainer=str(dev_env.apptainer))
    with pytest.raises(ImageError, match="apptainer inspect failed"):
        cache.ensure(digest, lambda tmp: tmp.write_bytes(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks"]


def test_truncated_sif_is_refused(dev_env: DevEnv, tmp_path: Path) -> None:
    digest = sha256_file(dev_env.smoke_sif)
    cache = ImageCache(tmp_path, apptainer=str(dev_env.apptainer))

    def truncated(tmp: Path) -> None:
        tmp.write_bytes(dev_env.smoke_sif.read_bytes()[:-4096])

    with pytest.raises(ImageError, match="hash to sha256:"):
        cache.ensure(digest, truncated)
    assert cache.lookup(digest) is None


def _copy_and_count(source: str, counter: str, tmp: Path) -> None:
    with open(counter, "a") as fh:
        fh.write("fill\n")
    shutil.copyfile(source, tmp)


def _ensure(root: str, apptainer: str, digest: str, source: str, counter: str,
            barrier: multiprocessing.synchronize.Barrier) -> None:
    cache = ImageCache(Path(root), apptainer=apptainer)
    barrier.wait()
    cache.ensure(digest, functools.partial(_copy_and_count, source, counter))


def test_concurrent_jobs_fill_a_real_image_once(dev_env: DevEnv, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier = ctx.Barrier(n)
    digest = sha256_file(dev_env.smoke_sif)
    counter = tmp_path / "fills"
    procs = [
        ctx.Process(target=_ensure, args=(str(tmp_path / "cache"), str(dev_env.apptainer), digest,
                                          str(dev_env.smoke_sif), str(counter), barrier))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    assert counter.read_text() == "fill\n"
    assert sha256_file(tmp_path / "cache" / f"sha256-{digest[7:]}.sif") == digest
