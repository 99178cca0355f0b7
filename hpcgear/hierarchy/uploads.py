"""Uploads in SQLAlchemy Core: what ``hpcgear upload`` runs on a login node.

``hpcgear upload`` of one small file should take no longer than a blink (issue
10: <= 300 ms), and importing the ORM and building the models costs 100-150 ms
of that. :func:`store_upload` does what
:func:`hpcgear.hierarchy.service.upload_files` does (create missing
subject/session/acquisition levels, store the bytes, add files, versions and
change-log rows in one transaction) on a Core ``Connection``, with the same
checks and errors. A project with a de-identification profile is left to the
ORM path (:func:`hpcgear.ingest.upload.upload_deidentified`), which
de-identifies first. The pure helpers both paths use (ids, file types, source
checks) live here so neither imports the other's machinery.
``tests/unit/test_login_node_reads.py`` checks that both store the same rows.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update

from hpcgear.db.tables import change_log, containers, file_versions, files, project_deid_profiles
from hpcgear.errors import InvalidInputError, NotFoundError
from hpcgear.hierarchy.access import RoleName, require_role, resolve_project
from hpcgear.hierarchy.paths import (
    LEVELS,
    HierarchyPath,
    check_file_name,
    check_label,
    pick_analysis,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, Row

    from hpcgear.storage.objects import ObjectStore

__all__ = [
    "UploadResult",
    "check_sources",
    "expand_directories",
    "guess_file_type",
    "looks_like_dicom",
    "new_id",
    "store_upload",
]


def new_id() -> str:
    """An opaque 24-hex id, the shape Flywheel uses."""
    return secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class UploadResult:
    name: str
    file_id: str
    version: int
    hash: str
    size: int
    created: bool  # False when identical bytes were already the current version


def check_sources(sources: Sequence[Path]) -> dict[str, Path]:
    """Name -> path of files to upload; every source checked before anything is stored."""
    if not sources:
        raise InvalidInputError("no files to upload", "name at least one file")
    names: dict[str, Path] = {}
    for src in sources:
        if not src.exists():
            raise NotFoundError(f"file {src} does not exist", "check the path and try again")
        if not src.is_file():
            raise InvalidInputError(
                f"{src} is not a regular file", "upload regular files or directories of them"
            )
        name = check_file_name(src.name)
        if name in names:
            raise InvalidInputError(
                f"two files named {name!r} in one upload ({names[name]} and {src})",
                "rename one of them or upload them to different places",
            )
        names[name] = src
    return names


def looks_like_dicom(path: Path) -> bool:
    """Whether a file is DICOM (the DICM preamble), or a zip holding one."""
    import zipfile

    try:
        with path.open("rb") as fh:
            fh.seek(128)
            if fh.read(4) == b"DICM":
                return True
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as member:
                    if member.read(132)[128:132] == b"DICM":
                        return True
        return False
    except (OSError, zipfile.BadZipFile):
        return False


def expand_directories(sources: Sequence[Path]) -> list[Path]:
    """Directories become the regular files below them (recursively, sorted).

    Symlinks inside a directory are skipped (their target may lie anywhere);
    a file named on the command line is taken as given.
    """
    out: list[Path] = []
    for src in sources:
        if not src.is_dir():
            out.append(src)
            continue
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            found.extend(
                p for p in (Path(dirpath) / f for f in filenames)
                if not p.is_symlink() and p.is_file()
            )  # fmt: skip
        if not found:
            raise InvalidInputError(
                f"directory {src} holds no files", "name a directory with files"
            )
        out.extend(sorted(found))
    return out


_FILE_TYPES: tuple[tuple[str, str], ...] = (
    (".dicom.zip", "dicom"),
    (".dcm.zip", "dicom"),
    (".dcm", "dicom"),
    (".ima", "dicom"),
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    (".bval", "bval"),
    (".bvec", "bvec"),
    (".json", "source code"),
    (".zip", "archive"),
    (".tar.gz", "archive"),
    (".tgz", "archive"),
    (".csv", "tabular data"),
    (".tsv", "tabular data"),
    (".txt", "text"),
    (".log", "log"),
    (".html", "html"),
    (".pdf", "pdf"),
    (".png", "image"),
    (".jpg", "image"),
    (".mat", "MATLAB data"),
    (".py", "source code"),
    (".sh", "source code"),
)


def guess_file_type(name: str) -> str | None:
    """Flywheel-style file type from the name (gears and rules match on it)."""
    lower = name.lower()
    for suffix, ftype in _FILE_TYPES:
        if lower.endswith(suffix):
            return "JSON" if ftype == "source code" and suffix == ".json" else ftype
    return None


# ------------------------------------------------------------------ the Core upload


def store_upload(
    conn: Connection,
    store: ObjectStore,
    actor: str,
    path: str,
    sources: Sequence[Path],
    *,
    origin_type: str = "user",
    origin_id: str | None = None,
) -> list[UploadResult] | None:
    """Upload local files (or directories of them) to ``path``, in Core, in the
    caller's transaction; None when the project has a de-identification profile
    (the caller then takes the de-identifying path).

    Same order of checks, errors and rows as ``upload_deidentified`` ->
    ``upload_files``: the path, the project, the sources, labels and the
    read-write role, missing levels created, bytes stored (content addressed),
    then files, versions and change-log rows. Identical bytes under the same
    name change nothing; different bytes make a new version.
    """
    hp = HierarchyPath.parse(path, min_depth=2)
    project = resolve_project(conn, "/".join(hp.parts[:2]))
    expanded = expand_directories([Path(f) for f in sources])
    if conn.scalar(
        select(project_deid_profiles.c.project_id).where(
            project_deid_profiles.c.project_id == project.id
        )
    ) is not None:
        return None
    names = check_sources(expanded)
    for label in hp.parts[1:]:
        check_label(label)
    require_role(conn, actor, project, RoleName.READ_WRITE, "uploading")
    target = _ensure_levels(conn, actor, hp, project)
    objects = store.put_files(list(names.values()))
    return _add_versions(
        conn, target, [(n, o.hash, o.size) for n, o in zip(names, objects, strict=True)],
        actor, origin_type=origin_type, origin_id=origin_id or actor,
    )  # fmt: skip


def _container(conn: Connection, container_id: str) -> Row[Any]:
    row = conn.execute(select(containers).where(containers.c.id == container_id)).first()
    assert row is not None
    return row


def _ensure_levels(conn: Connection, actor: str, hp: HierarchyPath, project: Row[Any]) -> Row[Any]:
    """The container at ``hp`` below ``project``, creating missing levels
    (``hierarchy.service.ensure_path`` after its checks)."""
    c = containers.c
    node = project
    for depth, label in enumerate(hp.parts[2:], start=2):
        child = conn.execute(
            select(containers).where(c.parent_id == node.id, c.label_key == label,
                                     c.type != "analysis")
        ).first()  # fmt: skip
        if child is None:
            analyses = list(conn.execute(
                select(containers).where(c.parent_id == node.id, c.type == "analysis")
                .order_by(c.created, c.id)
            ))  # fmt: skip
            if pick_analysis(node, analyses, label) is not None:
                raise InvalidInputError(
                    f"{'/'.join(hp.parts[: depth + 1])} is an analysis: it holds one job's "
                    "outputs and takes no uploads",
                    "upload into a project, subject, session or acquisition",
                )
            cid = new_id()
            level = LEVELS[depth]
            values: dict[str, Any] = {
                "id": cid, "type": level, "label": label, "label_key": label,
                "parent_id": node.id, "group_id": node.group_id,
                "project_id": node.project_id, "subject_id": node.subject_id,
                "session_id": node.session_id, "acquisition_id": node.acquisition_id,
                "natural_key": None, "info": {}, "tags": [], "created_by": actor,
            }  # fmt: skip
            values[f"{level}_id"] = cid
            conn.execute(insert(containers).values(values))
            child = _container(conn, cid)
        node = child
    return node


def _add_versions(
    conn: Connection,
    container: Row[Any],
    items: Sequence[tuple[str, str, int]],
    actor: str,
    *,
    origin_type: str,
    origin_id: str,
) -> list[UploadResult]:
    """``hierarchy.service.add_file_versions`` (without metadata) in Core: the
    container's files and their current versions in a few queries, then every
    row written in a few statements."""
    f, fv = files.c, file_versions.c
    names = [name for name, *_ in items]
    rows: dict[str, Any] = {}
    for start in range(0, len(names), 500):
        rows.update(
            (r.name, r) for r in conn.execute(
                select(f.id, f.name, f.current_version)
                .where(f.container_id == container.id, f.name.in_(names[start : start + 500]))
            )
        )  # fmt: skip
    current_hash: dict[str, str] = {}
    ids = [r.id for r in rows.values()]
    for start in range(0, len(ids), 500):
        current_hash.update(
            (r.file_id, r.hash) for r in conn.execute(
                select(fv.file_id, fv.hash)
                .join(files, (f.id == fv.file_id) & (f.current_version == fv.version))
                .where(f.id.in_(ids[start : start + 500]))
            )
        )  # fmt: skip
    results: list[UploadResult] = []
    new_files: list[dict[str, Any]] = []
    bumps: list[tuple[str, int]] = []
    versions: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    version_of: dict[str, tuple[str, int]] = {n: (r.id, r.current_version) for n, r in rows.items()}
    for name, digest, size in items:
        known = version_of.get(name)
        if known is not None and current_hash.get(known[0]) == digest:
            results.append(UploadResult(name, known[0], known[1], digest, size, created=False))
            continue
        if known is not None:
            file_id, version = known[0], known[1] + 1
            bumps.append((file_id, version))
        else:
            file_id, version = new_id(), 1
            new_files.append({
                "id": file_id, "container_id": container.id,
                "project_id": container.project_id, "name": name, "current_version": 1,
                "type": guess_file_type(name), "modality": None, "classification": {},
                "tags": [], "info": {},
            })  # fmt: skip
        version_of[name] = (file_id, version)
        current_hash[file_id] = digest
        versions.append({"file_id": file_id, "version": version, "hash": digest, "size": size,
                         "origin_type": origin_type, "origin_id": origin_id})
        logs.append({"kind": "file.version", "container_id": container.id, "file_id": file_id,
                     "file_version": version, "actor": actor})
        results.append(UploadResult(name, file_id, version, digest, size, created=True))
    if new_files:
        conn.execute(insert(files), new_files)
    for file_id, version in bumps:
        conn.execute(update(files).where(f.id == file_id).values(current_version=version))
    if versions:
        conn.execute(insert(file_versions), versions)
        conn.execute(insert(change_log), logs)
        conn.execute(update(containers).where(containers.c.id == container.id)
                     .values(modified=dt.datetime.now(dt.UTC)))
    return results
