"""Files a client command moves over HTTP: staged inputs and outputs to stream back.

A forwarded command that reads a client's file (``ingest dicom DIR``, ``rule
apply FILE``) gets the file's *content*: the client streams a tar of it, which
is unpacked into a fresh private directory under the store's ``tmp``; the
command then runs on that copy. A command that writes a file (``export bids
--out DIR``) writes into a fresh directory of the server, which the client
then fetches as a tar. The server only ever reads and writes paths it made
here, never one a client names. Each transfer belongs to the key owner who made
it, is used once and expires after ``ttl`` seconds.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hpcgear.errors import InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")
_OUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Transfer:
    token: str
    login: str
    kind: str  # "in" (a staged input) or "out" (an output to fetch)
    root: Path  # the private directory; removed when the transfer is used or expires
    entry: Path  # the staged file/dir (in) or the written file/dir (out)
    created: float


def safe_out_name(name: str) -> str:
    """The output's file name on the server (the client's basename when harmless)."""
    return name if _OUT_NAME.fullmatch(name) and ".." not in name else "out"


class TooManyStagedError(InvalidInputError):
    """A user has as many staged inputs waiting (or arriving) as the server allows (429)."""


class Transfers:
    """Staged inputs and outputs. Each user may have at most ``max_waiting`` inputs
    staged and not yet used (arriving ones count), so with the per-request upload
    cap the disk one user can fill in the ``ttl`` is bounded too."""

    def __init__(self, base: Path, ttl: float = 3600.0, max_members: int = 200_000,
                 max_waiting: int = 16) -> None:
        self.base = base
        self.ttl = ttl
        self.max_members = max_members
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._items: dict[str, Transfer] = {}
        self._arriving: dict[str, int] = {}  # login -> uploads being received now

    def _new_root(self, prefix: str) -> Path:
        self.base.mkdir(parents=True, exist_ok=True)
        root = self.base / f"{prefix}-{secrets.token_hex(12)}"
        root.mkdir(mode=0o700)
        return root

    def expire(self) -> None:
        now = time.time()
        with self._lock:
            old = [t for t in self._items.values() if now - t.created > self.ttl]
            for t in old:
                del self._items[t.token]
        for t in old:
            shutil.rmtree(t.root, ignore_errors=True)

    # ---------------------------------------------------------------- inputs
    def begin_input(self, login: str) -> Path:
        """A fresh private directory; the client's tar is written to ``<it>/upload.tar``.

        Every call is followed by :meth:`finish_input` or :meth:`abort_input`.
        """
        self.expire()
        with self._lock:
            waiting = self._arriving.get(login, 0) + sum(
                1 for t in self._items.values() if t.login == login and t.kind == "in")
            if waiting >= self.max_waiting:
                raise TooManyStagedError(
                    f"{login} has {waiting} staged uploads waiting to be used "
                    f"(at most {self.max_waiting})",
                    "run the commands that use them (each is used once), or wait: unused "
                    f"ones expire {int(self.ttl // 60)} minutes after staging",
                )
            self._arriving[login] = self._arriving.get(login, 0) + 1
        try:
            return self._new_root("stage")
        except BaseException:
            self._arrived(login)
            raise

    def _arrived(self, login: str) -> None:
        with self._lock:
            left = self._arriving.get(login, 1) - 1
            if left > 0:
                self._arriving[login] = left
            else:
                self._arriving.pop(login, None)

    def abort_input(self, login: str, root: Path) -> None:
        """The upload to ``root`` failed: remove it."""
        self._arrived(login)
        self.discard(root)

    def finish_input(self, login: str, root: Path) -> str:
        """Unpack ``<root>/upload.tar`` (one top-level file or directory); its token."""
        try:
            return self._finish_input(login, root)
        finally:
            self._arrived(login)

    def _finish_input(self, login: str, root: Path) -> str:
        try:
            tar_path = root / "upload.tar"
            dest = root / "in"
            dest.mkdir()
            self._extract(tar_path, dest)
            tar_path.unlink()
            entries = list(dest.iterdir())
            if len(entries) != 1:
                raise InvalidInputError(
                    f"a staged upload holds {len(entries)} top-level entries, not 1",
                    "send one file or directory per upload",
                )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._items[token] = Transfer(token, login, "in", root, entries[0], time.time())
        return token

    def _extract(self, tar_path: Path, dest: Path) -> None:
        try:
            with tarfile.open(tar_path, "r:") as tar:
                members = []
                for n, m in enumerate(tar):
                    if n >= self.max_members:
                        raise InvalidInputError(
                            f"a staged upload holds more than {self.max_members} entries",
                            "send fewer files per command",
                        )
                    if not (m.isfile() or m.isdir()):
                        raise InvalidInputError(
                            f"staged upload entry {m.name[:200]!r} is not a file or directory",
                            "links and devices are not uploaded; send their content",
                        )
                    parts = m.name.replace("\\", "/").split("/")
                    if m.name.startswith("/") or ".." in parts:
                        raise InvalidInputError(
                            f"staged upload entry {m.name[:200]!r} leaves its directory",
                            "send relative names without '..'",
                        )
                    members.append(m)
                # the "data" filter refuses absolute names, '..' and anything outside dest
                tar.extractall(dest, members=members, filter="data")
        except tarfile.TarError as exc:
            raise InvalidInputError(
                f"the staged upload is not a readable tar ({exc})", "send a plain tar stream"
            ) from None

    def take_input(self, login: str, token: str) -> Transfer:
        """A staged input of ``login`` (each is used by one command)."""
        with self._lock:
            t = self._items.get(token) if _TOKEN.fullmatch(token) else None
            if t is None or t.login != login or t.kind != "in":
                raise NotFoundError(
                    "no such staged upload (or it expired)",
                    "upload the file again: the client stages it for each command",
                )
            del self._items[token]
        return t

    # ---------------------------------------------------------------- outputs
    def new_out_root(self) -> Path:
        return self._new_root("out")

    def register_output(self, login: str, root: Path, entry: Path) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._items[token] = Transfer(token, login, "out", root, entry, time.time())
        return token

    def take_output(self, login: str, token: str) -> Transfer:
        self.expire()
        with self._lock:
            t = self._items.get(token) if _TOKEN.fullmatch(token) else None
            if t is None or t.login != login or t.kind != "out":
                raise NotFoundError(
                    "no such output (or it expired, or it was fetched already)",
                    "run the command again",
                )
            del self._items[token]
        return t

    @staticmethod
    def discard(root: Path) -> None:
        shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def tar_to(entry: Path, out: BinaryIO) -> None:
        """Write ``entry`` (a file or a directory tree) as a tar named by its basename."""
        with tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(entry, arcname=entry.name, recursive=True)
