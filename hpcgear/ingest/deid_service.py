"""Service functions for de-identification: project profiles and re-identification maps.

Attaching or removing a project's profile needs admin on the project; reading
a re-identification map needs admin on the project (site admins too). Every
ingest and upload into a project with a profile is de-identified with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, DeidMapEntry, ProjectDeidProfile
from hpcgear.errors import InvalidInputError, NotFoundError
from hpcgear.hierarchy.permissions import RoleName, require_role
from hpcgear.hierarchy.service import resolve_container

if TYPE_CHECKING:  # the profile machinery loads only for a project that has one
    from hpcgear.ingest.deid import DeidProfile

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttachedProfile:
    project: str
    name: str
    sha256: str
    set_by: str
    created: str
    reid_map: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "name": self.name,
            "sha256": self.sha256,
            "set_by": self.set_by,
            "created": self.created,
            "reid_map": self.reid_map,
        }


def _project(session: Session, path: str) -> Container:
    container = resolve_container(session, path)
    if container.type != "project":
        raise InvalidInputError(
            f"{path} is a {container.type}, not a project",
            "give GROUP/PROJECT",
        )
    return container


def project_profile(session: Session, project_id: str | None) -> DeidProfile | None:
    """The profile attached to a project, or None (no role check: used by ingest)."""
    if project_id is None:
        return None
    row = session.get(ProjectDeidProfile, project_id)
    if row is None:
        return None
    from hpcgear.ingest.deid import parse_profile_text, with_baseline

    return with_baseline(parse_profile_text(row.text, f"<profile of project {project_id}>"))


def attach_profile(
    session: Session, actor: str, project_path: str, profile: DeidProfile
) -> AttachedProfile:
    """Attach ``profile`` (replacing any earlier one); needs project admin."""
    project = _project(session, project_path)
    require_role(session, actor, project, RoleName.ADMIN, "attaching a de-identification profile")
    if not profile.text:
        raise InvalidInputError(
            f"profile {profile.name!r} has no text to attach", "attach a profile file"
        )
    row = session.get(ProjectDeidProfile, project.id)
    if row is None:
        row = ProjectDeidProfile(project_id=project.id)
        session.add(row)
    row.name = profile.name
    row.sha256 = profile.sha256
    row.text = profile.text
    row.set_by = actor
    session.commit()
    logger.info("project %s: de-identification profile %s attached", project.id, profile.name)
    return _describe(project_path, row)


def detach_profile(session: Session, actor: str, project_path: str) -> None:
    project = _project(session, project_path)
    require_role(session, actor, project, RoleName.ADMIN, "removing a de-identification profile")
    row = session.get(ProjectDeidProfile, project.id)
    if row is None:
        raise NotFoundError(
            f"project {project_path} has no de-identification profile",
            f"see `hpcgear deid show {project_path}`",
        )
    session.delete(row)
    session.commit()


def show_profile(session: Session, actor: str, project_path: str) -> AttachedProfile | None:
    project = _project(session, project_path)
    require_role(session, actor, project, RoleName.READ_ONLY, "reading the project's profile")
    row = session.get(ProjectDeidProfile, project.id)
    return _describe(project_path, row) if row is not None else None


def _describe(path: str, row: ProjectDeidProfile) -> AttachedProfile:
    from hpcgear.ingest.deid import parse_profile_text

    profile = parse_profile_text(row.text, f"<profile of {path}>")
    return AttachedProfile(
        project=path,
        name=row.name,
        sha256=row.sha256,
        set_by=row.set_by,
        created=row.created.isoformat() if row.created else "",
        reid_map=profile.reid_map,
    )


def record_map(
    session: Session,
    project_id: str,
    file_id: str,
    version: int,
    profile: DeidProfile,
    entries: list[dict[str, Any]],
    actor: str,
) -> None:
    """Keep a re-identification map (only called when the profile has deid-log)."""
    if not profile.reid_map or not entries:
        return
    session.add(
        DeidMapEntry(
            project_id=project_id,
            file_id=file_id,
            file_version=version,
            profile=profile.name,
            profile_sha256=profile.sha256,
            entries=entries,
            actor=actor,
        )
    )


def read_map(session: Session, actor: str, project_path: str) -> list[dict[str, Any]]:
    """The re-identification map of a project: project or site admins only."""
    project = _project(session, project_path)
    require_role(session, actor, project, RoleName.ADMIN, "reading the re-identification map")
    rows = session.scalars(
        select(DeidMapEntry).where(DeidMapEntry.project_id == project.id).order_by(DeidMapEntry.id)
    ).all()
    return [
        {
            "file_id": r.file_id,
            "file_version": r.file_version,
            "profile": r.profile,
            "profile_sha256": r.profile_sha256,
            "entries": r.entries,
            "actor": r.actor,
            "created": r.created.isoformat() if r.created else "",
        }
        for r in rows
    ]


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` has the DICOM preamble signature (``DICM`` at byte 128)."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def deidentify_for_upload(
    session: Session,
    project_id: str | None,
    sources: dict[str, Path],
    workdir: Path,
    explicit: DeidProfile | None = None,
) -> tuple[dict[str, Path], dict[str, dict[str, Any]], DeidProfile | None, dict[str, Any]]:
    """De-identify DICOM files (and zips of them) headed for a project with a profile.

    Returns the paths to store instead (de-identified copies in ``workdir``, a
    private temporary directory), per-name file metadata (the de-id log), the
    profile used and the per-name re-identification entries. Files that are not
    DICOM pass unchanged: a DICOM profile does not apply to them.
    """
    profile = project_profile(session, project_id) or explicit
    if profile is None:  # the common case: no pydicom import for a plain upload
        return sources, {}, None, {}
    import io
    import zipfile

    from pydicom import dcmread

    from hpcgear.ingest.deid import apply_profile, new_log

    out: dict[str, Path] = {}
    meta: dict[str, dict[str, Any]] = {}
    reid: dict[str, Any] = {}
    for name, src in sources.items():
        log = new_log(profile)
        dest = workdir / name
        if is_dicom_file(src):
            ds = dcmread(src)
            log.merge(apply_profile(ds, profile))
            ds.save_as(dest)
        elif zipfile.is_zipfile(src):
            found = False
            with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
                for info in zin.infolist():
                    data = zin.read(info)
                    if len(data) > 132 and data[128:132] == b"DICM":
                        found = True
                        ds = dcmread(io.BytesIO(data))
                        log.merge(apply_profile(ds, profile))
                        buf = io.BytesIO()
                        ds.save_as(buf)
                        data = buf.getvalue()
                    zout.writestr(info, data)
            if not found:  # a zip without DICOM: stored as given
                out[name] = src
                continue
        else:
            out[name] = src
            continue
        out[name] = dest
        meta[name] = {"info": {"hpcgear": {"deid": log.to_info()}}}
        if log.reid:
            reid[name] = log.reid
    return out, meta, profile, reid
