"""Bulk download: a container subtree to a directory or a tar stream.

Files land at their hierarchy path (``group/project/subject/session/acquisition/
FILE``, analyses as their path segment, see ``hierarchy.analyses``), so every
written path is also a path hpcgear resolves. Each file is copied from the
object store through a hash check; a directory download is resumable: a file
already present with the right sha256 is skipped, anything else is rewritten
(temp + rename, never a half-written file under the final name).
"""

from __future__ import annotations

import hashlib
import tarfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, FileVersion
from hpcgear.errors import InvalidInputError, NotFoundError, StorageError
from hpcgear.hierarchy.analyses import ID_PREFIX
from hpcgear.hierarchy.permissions import RoleName, require_role
from hpcgear.hierarchy.service import container_path, resolve_target
from hpcgear.storage.objects import CHUNK, sha256_file


class ObjectSource(Protocol):
    """Where a download reads objects: the local store, or the API (the CLI as a client)."""

    @property
    def root(self) -> Any: ...

    def open(self, digest: str) -> AbstractContextManager[IO[bytes]]: ...

    def copy_to(self, digest: str, dest: Path, *, verify: bool = True) -> Path: ...


@dataclass(frozen=True, slots=True)
class DownloadItem:
    path: str  # hierarchy path of the file, relative to the output root
    hash: str
    size: int
    version: int
    file_id: str
    type: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "hash": self.hash,
            "size": self.size,
            "version": self.version,
            "file_id": self.file_id,
            "type": self.type,
        }


@dataclass(slots=True)
class DownloadReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already present with the right hash
    bytes_written: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": len(self.written),
            "skipped": len(self.skipped),
            "bytes_written": self.bytes_written,
            "files": self.written + self.skipped,
        }


Progress = Callable[[int, int, int, int, str], None]  # done, total, bytes, total_bytes, path


def _segments(rows: Sequence[Container]) -> dict[str, str]:
    """Path segment per container id (analysis labels that clash become ``@ID``)."""
    by_parent: dict[str | None, list[Container]] = defaultdict(list)
    for c in rows:
        by_parent[c.parent_id].append(c)
    seg: dict[str, str] = {}
    for siblings in by_parent.values():
        count: dict[str, int] = defaultdict(int)
        for c in siblings:
            count[c.label] += 1
        for c in siblings:
            if c.type == "group":
                seg[c.id] = c.id
            elif c.type == "analysis" and (count[c.label] > 1 or c.label.startswith(ID_PREFIX)):
                seg[c.id] = ID_PREFIX + c.id
            else:
                seg[c.id] = c.label
    return seg


def subtree_paths(
    session: Session, root: Container, rows: Sequence[Container]
) -> Callable[[Container], str]:
    """A function giving the hierarchy path of any container in ``rows`` (below ``root``)."""
    base = container_path(session, root)
    seg = _segments(rows)
    by_id = {c.id: c for c in rows}
    paths: dict[str, str] = {root.id: base}

    def path_of(c: Container) -> str:
        if c.id not in paths:
            paths[c.id] = f"{path_of(by_id[c.parent_id or ''])}/{seg[c.id]}"
        return paths[c.id]

    return path_of


def plan_download(
    session: Session,
    actor: str,
    path: str,
    *,
    recursive: bool = False,
    types: Sequence[str] = (),
    include_analyses: bool = False,
) -> list[DownloadItem]:
    """The files a download of ``path`` writes, with their hierarchy paths.

    A file path is that file; a container path is its own files, or with
    ``recursive`` its whole subtree. Analyses below the container are left out
    unless ``include_analyses`` (an analysis path always includes itself).
    """
    target = resolve_target(session, path)
    require_role(session, actor, target.container, RoleName.READ_ONLY, "downloading")
    root = target.container
    wanted = {t.lower() for t in types}
    if target.file is not None:
        f = target.file
        fv = session.scalar(
            select(FileVersion).where(
                FileVersion.file_id == f.id, FileVersion.version == f.current_version
            )
        )
        if fv is None:
            raise NotFoundError(f"{path} has no stored version", "upload it again")
        rel = f"{container_path(session, root)}/{f.name}"
        return [DownloadItem(rel, fv.hash, fv.size, fv.version, f.id, f.type)]
    if recursive and root.type != "analysis":
        col = Container.group_id if root.type == "group" else getattr(Container, f"{root.type}_id")
        rows = list(session.scalars(select(Container).where(col == root.id)))
        if not include_analyses:
            rows = [c for c in rows if c.type != "analysis"]
    else:
        rows = [root]
    path_of = subtree_paths(session, root, rows)
    by_id = {c.id: c for c in rows}
    ids = [c.id for c in rows]
    items: list[DownloadItem] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        q = (
            select(File, FileVersion)
            .join(
                FileVersion,
                (FileVersion.file_id == File.id) & (FileVersion.version == File.current_version),
            )
            .where(File.container_id.in_(chunk))
        )
        for f, fv in session.execute(q):
            if wanted and (f.type or "").lower() not in wanted:
                continue
            rel = f"{path_of(by_id[f.container_id])}/{f.name}"
            items.append(DownloadItem(rel, fv.hash, fv.size, fv.version, f.id, f.type))
    items.sort(key=lambda i: i.path)
    return items


def list_tree(session: Session, actor: str, path: str) -> list[dict[str, Any]]:
    """Every container, analysis and file below a container, with its path (``ls -r``)."""
    target = resolve_target(session, path)
    if target.file is not None:
        raise InvalidInputError(f"{path!r} is a file", "list a container recursively")
    root = target.container
    require_role(session, actor, root, RoleName.READ_ONLY, "listing")
    if root.type == "analysis":
        rows = [root]
    else:
        col = Container.group_id if root.type == "group" else getattr(Container, f"{root.type}_id")
        rows = list(session.scalars(select(Container).where(col == root.id)))
    path_of = subtree_paths(session, root, rows)
    by_id = {c.id: c for c in rows}
    out: list[dict[str, Any]] = [
        {"kind": c.type, "id": c.id, "label": c.label, "path": path_of(c)}
        for c in rows
        if c.id != root.id
    ]
    ids = list(by_id)
    for start in range(0, len(ids), 500):
        q = (
            select(File, FileVersion)
            .join(
                FileVersion,
                (FileVersion.file_id == File.id) & (FileVersion.version == File.current_version),
            )
            .where(File.container_id.in_(ids[start : start + 500]))
        )
        for f, fv in session.execute(q):
            out.append(
                {
                    "kind": "file",
                    "id": f.id,
                    "name": f.name,
                    "path": f"{path_of(by_id[f.container_id])}/{f.name}",
                    "version": f.current_version,
                    "size": fv.size,
                    "hash": fv.hash,
                    "type": f.type,
                }
            )
    out.sort(key=lambda e: e["path"])
    return out


def _safe_dest(out_dir: Path, rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise InvalidInputError(f"refusing to write {rel!r}", "this is a bug; report it")
    return out_dir.joinpath(*parts)


def download_tree(
    store: ObjectSource,
    items: Sequence[DownloadItem],
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> DownloadReport:
    """Write ``items`` under ``out_dir``; files present with the right hash are skipped."""
    report = DownloadReport()
    total_bytes = sum(i.size for i in items)
    done_bytes = 0
    for n, item in enumerate(items, start=1):
        dest = _safe_dest(out_dir, item.path)
        if dest.is_dir():
            raise InvalidInputError(
                f"{dest} is a directory, but {item.path} is a file",
                "a file and a container share a name; download them to separate places",
            )
        if dest.is_file() and dest.stat().st_size == item.size and sha256_file(dest) == item.hash:
            report.skipped.append(item.path)
        else:
            store.copy_to(item.hash, dest)  # temp + rename, hash verified
            report.written.append(item.path)
            report.bytes_written += item.size
        done_bytes += item.size
        if progress is not None:
            progress(n, len(items), done_bytes, total_bytes, item.path)
    return report


class _HashingReader:
    """A read-through wrapper that hashes what tarfile reads."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.h = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size if size and size > 0 else CHUNK)
        self.h.update(data)
        return data


def write_tar(
    store: ObjectSource,
    items: Sequence[DownloadItem],
    out: IO[bytes],
    *,
    gzip: bool = False,
    progress: Progress | None = None,
) -> DownloadReport:
    """Stream ``items`` as a tar (optionally gzipped) into ``out``, hash-checking each."""
    report = DownloadReport()
    total_bytes = sum(i.size for i in items)
    done_bytes = 0
    now = time.time()
    with tarfile.open(fileobj=out, mode="w|gz" if gzip else "w|") as tar:
        for n, item in enumerate(items, start=1):
            _safe_dest(Path("."), item.path)
            info = tarfile.TarInfo(item.path)
            info.size = item.size
            info.mtime = int(now)
            info.mode = 0o644
            with store.open(item.hash) as fh:
                reader = _HashingReader(fh)
                tar.addfile(info, fileobj=reader)
            if f"sha256:{reader.h.hexdigest()}" != item.hash:
                raise StorageError(
                    f"object {item.hash} ({item.path}) is corrupt in storage {store.root}",
                    "restore it from backup; the tar written so far is incomplete",
                )
            report.written.append(item.path)
            report.bytes_written += item.size
            done_bytes += item.size
            if progress is not None:
                progress(n, len(items), done_bytes, total_bytes, item.path)
    return report


def total_size(items: Iterable[DownloadItem]) -> int:
    return sum(i.size for i in items)
