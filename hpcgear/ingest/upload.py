"""Uploads that honour a project's de-identification profile (what ``hpcgear upload`` calls).

``hierarchy.upload_files`` stores bytes as given and refuses DICOM files for a
project with a profile; this wrapper de-identifies them first (in a private
temporary directory under the object store), then stores the copies, and keeps
the re-identification map when the profile asks for one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from hpcgear.hierarchy.paths import HierarchyPath
from hpcgear.hierarchy.service import (
    UploadResult,
    expand_directories,
    resolve_container,
    upload_files,
)
from hpcgear.ingest.deid_service import deidentify_for_upload, record_map
from hpcgear.storage.objects import ObjectStore


def upload_deidentified(
    session: Session,
    store: ObjectStore,
    actor: str,
    path: str,
    files: Sequence[Path],
    *,
    origin_type: str = "user",
    origin_id: str | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[UploadResult]:
    """``upload_files``, de-identifying DICOM files when the project has a profile."""
    hp = HierarchyPath.parse(path, min_depth=2)
    project = resolve_container(session, "/".join(hp.parts[:2]), min_depth=2, max_depth=2)
    sources = expand_directories([Path(f) for f in files])
    names = {p.name: p for p in sources}
    if len(names) != len(sources):  # let upload_files name the clash
        return upload_files(
            session, store, actor, path, sources, origin_type=origin_type,
            origin_id=origin_id, metadata=metadata,
        )  # fmt: skip
    store.ensure()
    with tempfile.TemporaryDirectory(prefix="upload-deid-", dir=store.tmp) as tmp:
        cleaned, deid_meta, profile, reid = deidentify_for_upload(
            session, project.id, names, Path(tmp)
        )
        if profile is None:
            return upload_files(
                session, store, actor, path, sources, origin_type=origin_type,
                origin_id=origin_id, metadata=metadata,
            )  # fmt: skip
        merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (metadata or {}).items()}
        for name, extra in deid_meta.items():
            info = dict(merged.get(name, {}).get("info") or {})
            hpc = dict(info.get("hpcgear") or {})
            hpc.update(extra["info"]["hpcgear"])
            info["hpcgear"] = hpc
            merged.setdefault(name, {})["info"] = info
        results = upload_files(
            session,
            store,
            actor,
            path,
            list(cleaned.values()),
            origin_type=origin_type,
            origin_id=origin_id,
            metadata=merged,
            deidentified=True,
        )
    for r in results:
        if r.created and r.name in reid:
            record_map(session, project.id, r.file_id, r.version, profile, reid[r.name], actor)
    return results


def spool_for_profile(
    session: Session,
    store: ObjectStore,
    project_id: str | None,
    streams: Sequence[tuple[str, Any]],
    tmp: Path,
) -> list[Path] | None:
    """For uploads arriving as streams (the HTTP API): when the project has a
    de-identification profile, write them to ``tmp`` (a private temporary
    directory) so :func:`upload_deidentified` can clean them before storing;
    None when the project has no profile (store the streams as they are)."""
    import shutil

    from hpcgear.db.models import ProjectDeidProfile

    if project_id is None or session.get(ProjectDeidProfile, project_id) is None:
        return None
    paths = []
    for name, stream in streams:
        dest = tmp / name
        with dest.open("wb") as fh:
            shutil.copyfileobj(stream, fh)
        paths.append(dest)
    return paths
