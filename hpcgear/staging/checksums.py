"""Content hashes on the scheduler's side of a transport.

Locally a file is hashed in this process. Through SSH the hash is taken on the
login node with coreutils ``sha256sum`` (run through the transport, argv list),
so the bytes are never moved just to be hashed. ``sha256sum`` escapes names
that hold a backslash or a newline (the line then starts with ``\\``); the
parser undoes that, so any file name round-trips. Hashes are ``sha256:<hex>``
like everywhere in hpcgear.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat as stat_mod
from collections.abc import Iterator, Sequence

from hpcgear.errors import StagingError
from hpcgear.scheduler.runner import CompletedCommand
from hpcgear.scheduler.transport import LocalTransport, Transport

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
#: argv bytes per ``sha256sum`` call; far below ARG_MAX and SSH command limits.
ARGV_BUDGET = 96 * 1024
#: Seconds per byte assumed when sizing timeouts (about 50 MB/s) plus a floor.
SECONDS_PER_BYTE = 1 / 50e6
TIMEOUT_FLOOR = 120.0
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def digest_timeout(total_bytes: int) -> float:
    """A generous timeout for hashing ``total_bytes`` on a shared file system."""
    return TIMEOUT_FLOOR + max(total_bytes, 0) * SECONDS_PER_BYTE


def is_local(transport: Transport) -> bool:
    """True when the transport's paths are paths on this host."""
    return isinstance(transport, LocalTransport)


def sha256_local(path: str, *, follow_symlinks: bool = False) -> tuple[str, int]:
    """``(sha256:<hex>, size)`` of a regular file on this host.

    The final component is opened with ``O_NOFOLLOW`` (unless
    ``follow_symlinks``) and must be a regular file, so a symlink swapped in
    after a scan is refused instead of followed.
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as fh:
        if not stat_mod.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise StagingError(f"{path} is not a regular file", "remove it from the job directory")
        h = hashlib.sha256()
        size = 0
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return f"sha256:{h.hexdigest()}", size


def unescape_sha256sum_name(name: str) -> str:
    """Undo coreutils' escaping of a file name (``\\\\`` and ``\\n``, ``\\r``)."""
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_sha256sum(stdout: str) -> dict[str, str]:
    """``sha256sum`` output -> ``{path: "sha256:<hex>"}``; malformed lines raise."""
    out: dict[str, str] = {}
    for line in stdout.split("\n"):
        if not line:
            continue
        escaped = line.startswith("\\")
        body = line[1:] if escaped else line
        hexd, sep, name = body[:64], body[64:66], body[66:]
        if not _HEX_RE.fullmatch(hexd) or sep not in ("  ", " *") or not name:
            raise StagingError(f"cannot parse sha256sum output line {line[:120]!r}",
                               "the login node's sha256sum must be GNU coreutils")
        out[unescape_sha256sum_name(name) if escaped else name] = f"sha256:{hexd}"
    return out


def _chunks(paths: Sequence[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    used = 0
    for p in paths:
        cost = len(p.encode("utf-8", "surrogateescape")) + 1
        if batch and used + cost > ARGV_BUDGET:
            yield batch
            batch, used = [], 0
        batch.append(p)
        used += cost
    if batch:
        yield batch


def _check_ran(result: CompletedCommand, what: str) -> None:
    # sha256sum exits 1 when some file was unreadable/missing: that is reported
    # per path by its absence. Anything else (127 not found, killed) is fatal.
    if result.returncode not in (0, 1):
        first = result.output.splitlines()[0] if result.output else "no output"
        raise StagingError(f"{what} failed (exit {result.returncode}): {first}",
                           "check that coreutils are installed on the login node",
                           transient=result.killed_by_signal)


def remote_sha256(transport: Transport, paths: Sequence[str], *,
                  total_bytes: int = 0) -> dict[str, str]:
    """Hash ``paths`` where the transport's files live; missing paths are left out.

    One ``sha256sum`` call per ~96 KB of path names (usually one in all).
    """
    found: dict[str, str] = {}
    wanted = set(paths)
    for batch in _chunks(list(dict.fromkeys(paths))):
        result = transport.run(["sha256sum", "--", *batch], timeout=digest_timeout(total_bytes))
        _check_ran(result, "sha256sum")
        for name, digest in parse_sha256sum(result.stdout).items():
            if name in wanted:
                found[name] = digest
    return found


def tree_sha256(transport: Transport, root: str, *, total_bytes: int = 0) -> dict[str, str]:
    """Hashes of every regular file below ``root`` (no symlink is followed).

    One ``find -P ROOT -type f -exec sha256sum -- {} +`` call; keys are full paths.
    """
    result = transport.run(["find", "-P", root, "-type", "f", "-exec", "sha256sum", "--",
                            "{}", "+"], timeout=digest_timeout(total_bytes))
    _check_ran(result, "find/sha256sum")
    return parse_sha256sum(result.stdout)
