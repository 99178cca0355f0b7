"""The per-site SIF cache: one verified, read-only file per image digest.

Layout under the cache root (``runtime.image_cache`` in the site config)::

    <root>/sha256-<hex>.sif          the image whose bytes hash to sha256:<hex> (mode 0444)
    <root>/.locks/<hex>.lock         taken while that image is being filled
    <root>/.tmp-<hex>-XXXX.sif       a fill in progress (removed on any failure)

Jobs reference the first path and never pull or build anything. An image gets
into the cache exactly once, whatever the number of jobs asking for it at the
same time: :meth:`ImageCache.ensure` takes an exclusive ``flock`` on the
digest's lock file, checks again whether the image arrived meanwhile, and only
then calls ``fill``. The other callers block on the lock, find the finished
file and return it without filling. ``flock`` locks are dropped by the kernel
when a process dies, so a crashed fill never wedges the cache; its half-written
temp file is removed by the next filler of that digest.

A fill is published only after it proved itself: the sha256 of the bytes is the
digest (so a truncated copy or the wrong image never lands under a digest's
name) and ``apptainer inspect`` reads it (so the runtime on this host accepts
it). Then it is made read-only and renamed into place (same directory, hence
atomic): readers see either no file or the whole verified image.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcgear.errors import CommandError, ImageError, StorageError
from hpcgear.scheduler.runner import CommandRunner, SubprocessRunner, command_failure_message

if TYPE_CHECKING:
    from hpcgear.storage.objects import ObjectStore

logger = logging.getLogger(__name__)

DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
LOCK_DIR = ".locks"
TMP_PREFIX = ".tmp-"
CHUNK = 4 * 1024 * 1024
#: How long ``apptainer inspect`` may take on a multi-GB image on a slow filesystem.
INSPECT_TIMEOUT = 300.0
#: How long a caller waits for another process's fill (a copy of a few GB).
DEFAULT_LOCK_TIMEOUT = 3600.0

Fill = Callable[[Path], None]


@dataclass(frozen=True, slots=True)
class CachedImage:
    """One image present in the cache."""

    digest: str
    path: Path
    size: int


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``; ImageError for anything else."""
    m = DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise ImageError(
            f"{digest!r} is not an image digest",
            "image digests look like sha256:<64 lowercase hex digits>",
        )
    return m.group(1)


def sha256_of(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


class ImageCache:
    """A digest-keyed SIF cache rooted at ``root``.

    Parameters
    ----------
    root
        The cache directory (created on first fill). It must be on one
        filesystem, shared by every node that runs jobs.
    runner
        Runs ``apptainer inspect`` (a :class:`~hpcgear.scheduler.runner.CommandRunner`);
        tests inject a fake.
    apptainer
        The apptainer (or singularity) executable used for the check.
    lock_timeout
        Seconds a caller waits for another process's fill before giving up
        with a transient :class:`~hpcgear.errors.ImageError`.
    """

    def __init__(
        self,
        root: Path,
        *,
        runner: CommandRunner | None = None,
        apptainer: str = "apptainer",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.root = Path(root)
        self.runner: CommandRunner = runner if runner is not None else SubprocessRunner()
        self.apptainer = apptainer
        self.lock_timeout = lock_timeout

    # ----------------------------------------------------------------- lookups

    def path_for(self, digest: str) -> Path:
        """Where the image with ``digest`` lives (whether or not it is there yet)."""
        return self.root / f"sha256-{digest_hex(digest)}.sif"

    def lookup(self, digest: str) -> Path | None:
        """The cached image's path, or None when it has not been filled."""
        path = self.path_for(digest)
        return path if path.is_file() else None

    def entries(self) -> list[CachedImage]:
        """Every image in the cache, sorted by digest."""
        out: list[CachedImage] = []
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.glob("sha256-*.sif")):
            hexd = path.name[len("sha256-") : -len(".sif")]
            if re.fullmatch(r"[0-9a-f]{64}", hexd):
                out.append(CachedImage(f"sha256:{hexd}", path, path.stat().st_size))
        return out

    # ----------------------------------------------------------------- filling

    def ensure(self, digest: str, fill: Fill) -> Path:
        """Return the cached image for ``digest``, filling it first if needed.

        ``fill(tmp)`` must write the image's bytes to ``tmp`` (a path in the
        cache directory; it may replace the file). It runs in at most one
        process at a time per digest, and only while the image is missing.

        Raises
        ------
        ImageError
            The fill raised, or its result failed verification (wrong bytes,
            not readable by apptainer); nothing is left in the cache. Also
            (transient) when another process's fill outlasts ``lock_timeout``.
        """
        hexd = digest_hex(digest)
        final = self.path_for(digest)
        if final.is_file():
            return final
        self._make_dirs()
        lock = self.root / LOCK_DIR / f"{hexd}.lock"
        with exclusive_lock(lock, self.lock_timeout, f"image {digest}", transient_what="filled"):
            if final.is_file():
                logger.debug("image %s: filled by another process", digest)
                return final
            self._remove_stale_temps(hexd)
            fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{hexd}-", suffix=".sif",
                                            dir=self.root)
            os.close(fd)
            tmp = Path(tmp_name)
            started = time.monotonic()
            try:
                try:
                    fill(tmp)
                except ImageError:
                    raise
                except (StorageError, CommandError) as exc:
                    raise ImageError(f"filling image {digest} failed: {exc.message}",
                                     exc.hint, transient=exc.transient) from exc
                except OSError as exc:
                    raise ImageError(
                        f"filling image {digest} failed: {exc.strerror or exc}",
                        f"check free space and permissions of the image cache {self.root}",
                    ) from exc
                self.verify(tmp, digest)
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
                _fsync_dir(self.root)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            logger.info("image %s: cached at %s in %.1fs", digest, final,
                        time.monotonic() - started)
            return final

    def ensure_from_store(self, store: ObjectStore, digest: str) -> Path:
        """:meth:`ensure` with the bytes copied from the object store (gears' installed SIFs)."""

        def fill(tmp: Path) -> None:
            # The cache verifies the hash itself after the copy; no need to hash twice.
            store.copy_to(digest, tmp, verify=False)

        return self.ensure(digest, fill)

    def verify(self, path: Path, digest: str) -> None:
        """Check that ``path`` holds the image ``digest`` and that apptainer can read it.

        Raises
        ------
        ImageError
            Naming what did not match: the file is missing or empty, its bytes
            hash to something else, or ``apptainer inspect`` fails on it.
        """
        digest_hex(digest)
        try:
            size = path.stat().st_size
            actual = sha256_of(path) if size else ""
        except FileNotFoundError:
            raise ImageError(f"image {digest}: {path} was not written",
                             "the fill function must write the image to the path it is given"
                             ) from None
        except OSError as exc:
            raise ImageError(f"image {digest}: cannot read {path}: {exc.strerror or exc}",
                             "check the permissions of the image cache") from exc
        if size == 0:
            raise ImageError(f"image {digest}: the fill wrote an empty file",
                             "check the image's source (object store or build)")
        if actual != digest:
            raise ImageError(
                f"image {digest}: the bytes written hash to {actual} ({size} bytes)",
                "the source is corrupt or is another image; restore it or reinstall the gear",
            )
        argv = [self.apptainer, "inspect", str(path)]
        result = self.runner.run(argv, timeout=INSPECT_TIMEOUT)
        if not result.ok:
            raise ImageError(
                f"image {digest}: " + command_failure_message(result, "apptainer inspect"),
                "the file is not a SIF this runtime can read; rebuild the image or upgrade "
                "the runtime on this host",
            )

    # ----------------------------------------------------------------- helpers

    def _make_dirs(self) -> None:
        try:
            (self.root / LOCK_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageError(
                f"cannot create the image cache {self.root}: {exc.strerror or exc}",
                "set runtime.image_cache in the site config to a writable shared directory",
            ) from exc

    def _remove_stale_temps(self, hexd: str) -> None:
        # We hold the digest's lock, so any temp file for it is a crashed fill's leftover
        # (ours, or the ".<name>.XXXX" temp of a copy that ``fill`` was making).
        for stale in self.root.glob(f"*{TMP_PREFIX}{hexd}-*"):
            logger.info("image sha256:%s: removing leftover %s", hexd, stale.name)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(
    path: Path, timeout: float, what: str, *, transient_what: str = "built"
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Waits up to ``timeout`` seconds (polling with back-off, so the wait can give
    up); the kernel drops the lock when the holder exits or dies. Raises a
    transient :class:`~hpcgear.errors.ImageError` naming ``what`` on timeout.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ImageError(f"cannot open the lock file {path}: {exc.strerror or exc}",
                         "check the permissions of the cache directory") from exc
    try:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise ImageError(f"cannot lock {path}: {exc.strerror}",
                                     "the cache's filesystem must support flock") from exc
                if time.monotonic() >= deadline:
                    raise ImageError(
                        f"{what} is still being {transient_what} by another process "
                        f"after {timeout:.0f}s (lock {path})",
                        "retry later; if no process holds the lock, check the "
                        "filesystem's locking",
                        transient=True,
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the flock
