"""Ingest services: DICOM and NIfTI folders into the hierarchy, and re-classification.

Like every service, these take the SQLAlchemy session, the object store and the
acting user, and check roles before anything is written: read-write on every
project a study is routed to. Unlike the hierarchy services they **commit the
session themselves after each series** (DICOM) or image (NIfTI), so an
interrupted ingest keeps what it finished and a rerun continues: sessions and
acquisitions are found again by their natural keys (StudyInstanceUID,
SeriesInstanceUID) and a series whose content is unchanged is left alone (no new
version, no change-log row).

Unroutable studies go to the group's ``Unsorted`` project with the reason in
``session.info.hpcgear.unsorted_reason``; they are never dropped. The Unsorted
project is created on first use only when the acting user is an admin of the
group (or a site admin); otherwise the ingest stops before storing anything and
says who can create it. Writing into Unsorted needs read-write there like any
project, so the fallback grants nobody extra access.

Files that are not ingested are reported (never silently dropped) with a reason
code: ``not_dicom``, ``missing_uid``, ``unreadable`` (truncated/corrupt or
changed during the ingest), ``duplicate`` (same SOP Instance UID, or same NIfTI
name and place, as an earlier file), ``deid_failed``, ``uid_conflict`` (a
SeriesInstanceUID that already belongs to another study); for NIfTI also
``not_nifti``, ``orphan_sidecar`` and ``no_subject``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, FileVersion
from hpcgear.errors import IngestError, InvalidInputError, NotFoundError
from hpcgear.hierarchy.paths import LEVELS
from hpcgear.hierarchy.permissions import RoleName, get_actor, require_role
from hpcgear.hierarchy.service import (
    add_file_version,
    apply_file_metadata,
    container_path,
    create_child,
    guess_file_type,
    resolve_container,
)
from hpcgear.ingest.classifier import CLASSIFIER_VERSION, classify
from hpcgear.ingest.dicom import DUPLICATE, ProgressCallback, ProgressEvent, SkippedFile

# The DICOM ingest runs on SQLAlchemy Core (hpcgear.ingest.dicom_ingest); its
# public names are this service's too.
from hpcgear.ingest.dicom_ingest import (
    MAX_RETRIES,
    UID_CONFLICT,
    UNSORTED_PROJECT,
    WOULD_REIDENTIFY,
    DicomIngestOptions,
    DicomPlan,
    PlannedSeries,
    PlannedStudy,
    ReidentifyingVersionError,
    SeriesConflictError,
    _check_options,
    _group,
    check_dicom_keyword,
    find_by_natural_key,
    find_project,
    ingest_dicom,
    plan_dicom,
)
from hpcgear.ingest.report import FileOutcome, IngestReport, SessionOutcome
from hpcgear.ingest.routing import clean_label
from hpcgear.storage.objects import ObjectStore, sha256_file

__all__ = [
    "MAX_RETRIES",
    "NIFTI_DEFAULT_SESSION",
    "NO_SUBJECT",
    "UID_CONFLICT",
    "UNSORTED_PROJECT",
    "WOULD_REIDENTIFY",
    "DicomIngestOptions",
    "DicomPlan",
    "NiftiIngestOptions",
    "PlannedSeries",
    "PlannedStudy",
    "ReclassifyOutcome",
    "ReidentifyingVersionError",
    "SeriesConflictError",
    "check_dicom_keyword",
    "find_by_natural_key",
    "find_project",
    "ingest_dicom",
    "ingest_nifti",
    "plan_dicom",
    "reclassify",
    "stored_classifier_version",
    "stored_header",
]

if TYPE_CHECKING:
    # Loaded where used: a NIfTI ingest needs no NIfTI reading before it runs.
    from hpcgear.ingest.nifti import NiftiImage

logger = logging.getLogger(__name__)

NIFTI_DEFAULT_SESSION = "default"
NO_SUBJECT = "no_subject"


# ------------------------------------------------------------------ options


@dataclass(frozen=True, slots=True)
class NiftiIngestOptions:
    """What ``hpcgear ingest nifti`` was asked to do (the project is required)."""

    group: str
    project: str | None = None
    subject: str | None = None
    session: str | None = None
    jobs: int = 4


# ------------------------------------------------------------ hierarchy bits


def _child(session: Session, parent: Container, label: str) -> Container | None:
    return session.scalar(
        select(Container).where(
            Container.parent_id == parent.id,
            Container.label_key == label,
            Container.type != "analysis",
        )
    )


def _labelled_child(
    session: Session, parent: Container, ctype: str, label: str, actor: str
) -> tuple[Container, bool]:
    existing = _child(session, parent, label)
    if existing is not None:
        if existing.type != ctype:
            raise IngestError(
                f"{label!r} under {parent.label!r} is a {existing.type}, not a {ctype}",
                "choose another label",
            )
        return existing, False
    return create_child(session, parent, ctype, label, actor), True


def _current_version(session: Session, row: File) -> FileVersion | None:
    return session.scalar(
        select(FileVersion).where(
            FileVersion.file_id == row.id, FileVersion.version == row.current_version
        )
    )


# -------------------------------------------------------------- NIfTI ingest


@dataclass(frozen=True, slots=True)
class _NiftiTarget:
    image: NiftiImage
    subject: str
    session: str
    acquisition: str


def _nifti_target(image: NiftiImage, options: NiftiIngestOptions) -> _NiftiTarget | SkippedFile:
    from hpcgear.ingest.nifti import image_stem

    bids = image.bids
    subject = options.subject or (bids.subject if bids else None)
    if subject is None:
        return SkippedFile(
            image.rel, NO_SUBJECT, "not a BIDS name (sub-XX_..._suffix.nii[.gz]) and no --subject"
        )
    session_label = options.session or (bids.session if bids and bids.session else None)
    if bids is not None:
        acquisition = bids.datatype or bids.suffix
    else:
        acquisition = clean_label(image_stem(image.path.name)) or "nifti"
    return _NiftiTarget(
        image=image,
        subject=subject,
        session=session_label or NIFTI_DEFAULT_SESSION,
        acquisition=acquisition,
    )


def _nifti_metadata(image: NiftiImage) -> dict[str, Any]:
    from hpcgear.ingest.nifti import bids_classification

    info: dict[str, Any] = dict(image.sidecar_info)
    info["nifti"] = image.facts
    if image.bids is not None:
        info["BIDS"] = {
            "Filename": image.path.name,
            "Folder": image.bids.datatype or "",
            "Subject": image.bids.subject,
            "Session": image.bids.session or "",
            "Suffix": image.bids.suffix,
            "Entities": dict(image.bids.entities),
        }
    info["hpcgear"] = {"ingest": "nifti"}
    meta: dict[str, Any] = {"type": "nifti", "info": info}
    if image.modality:
        meta["modality"] = image.modality
    classification = bids_classification(image.bids)
    if classification:
        meta["classification"] = classification
    return meta


def ingest_nifti(
    session: Session,
    store: ObjectStore,
    actor: str,
    root: Path,
    options: NiftiIngestOptions,
    *,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest NIfTI images (and their .json/.bval/.bvec sidecars) under ``root``.

    Placement: ``--subject/--session`` when given, else the BIDS entities
    (``sub-XX`` / ``ses-YY``, session ``default`` when the name has none); the
    acquisition is the BIDS datatype folder (``anat``, ``func``...), else the
    BIDS suffix, else the file stem. Header facts go to ``info.nifti`` and the
    JSON sidecar's keys to the image's ``info``. Commits after each image.
    """
    from hpcgear.ingest.nifti import bids_classification, scan_nifti

    _check_options(
        options.group,
        options.jobs,
        {"project": options.project, "subject": options.subject, "session": options.session},
    )
    if not options.project:
        raise InvalidInputError(
            "NIfTI ingest needs --project", "NIfTI files carry no routing fields; name the project"
        )
    get_actor(session, actor)
    group = _group(session, options.group)
    found = find_project(session, group, options.project)
    project = session.get(Container, found.id) if found is not None else None
    if project is None:
        raise NotFoundError(
            f"project {options.project!r} does not exist in group {group.id!r}",
            f"a group admin creates it: `hpcgear project create {group.id}/{options.project}`",
        )
    require_role(session, actor, project, RoleName.READ_WRITE, "ingesting")
    scan = scan_nifti(Path(root), jobs=options.jobs, progress=progress)
    report = IngestReport(kind="nifti", group=group.id, dry_run=dry_run, files_seen=scan.files_seen)
    report.skipped.extend(scan.skipped)
    targets: list[_NiftiTarget] = []
    seen: dict[tuple[str, str, str, str], str] = {}
    for image in scan.images:
        target = _nifti_target(image, options)
        if isinstance(target, SkippedFile):
            report.skipped.append(target)
            continue
        names = [image.path.name, *(p.name for p in image.sidecars)]
        clash = next(
            (
                seen[(target.subject, target.session, target.acquisition, n)]
                for n in names
                if (target.subject, target.session, target.acquisition, n) in seen
            ),
            None,
        )
        if clash is not None:
            report.skipped.append(
                SkippedFile(image.rel, DUPLICATE, f"same name and place as {clash}")
            )
            continue
        for n in names:
            seen[(target.subject, target.session, target.acquisition, n)] = image.rel
        targets.append(target)
    base = f"{group.id}/{project.label}"
    sessions: dict[str, SessionOutcome] = {}
    total = sum(1 + len(t.image.sidecars) for t in targets)
    done = 0
    for t in targets:
        sess_path = f"{base}/{t.subject}/{t.session}"
        container = f"{sess_path}/{t.acquisition}"
        if dry_run:
            exists = _exists(session, project, [t.subject, t.session])
            sessions.setdefault(
                sess_path, SessionOutcome(sess_path, "existing" if exists else "new")
            )
            for p in (t.image.path, *t.image.sidecars):
                report.files.append(
                    FileOutcome(
                        container=container,
                        name=p.name,
                        status="planned",
                        type="nifti" if p == t.image.path else guess_file_type(p.name),
                        sources=(t.image.rel,),
                        modality=t.image.modality,
                        classification=bids_classification(t.image.bids)
                        if p == t.image.path
                        else {},
                    )
                )
            continue
        outcomes = _store_nifti(session, store, actor, project, t, report, sessions, sess_path)
        report.files.extend(outcomes)
        done += len(outcomes)
        if progress is not None:
            progress(ProgressEvent("store", done, total))
    report.sessions.extend(sessions.values())
    report.skipped.sort(key=lambda s: s.path)
    return report


def _exists(session: Session, project: Container, labels: Sequence[str]) -> bool:
    node: Container | None = project
    for label in labels:
        node = _child(session, node, label) if node is not None else None
    return node is not None


def _store_nifti(
    session: Session,
    store: ObjectStore,
    actor: str,
    project: Container,
    t: _NiftiTarget,
    report: IngestReport,
    sessions: dict[str, SessionOutcome],
    sess_path: str,
) -> list[FileOutcome]:
    for attempt in range(1, MAX_RETRIES + 1):
        try:
            created = 0
            proj = session.get(Container, project.id) or project
            subject, c1 = _labelled_child(session, proj, "subject", t.subject, actor)
            sess, c2 = _labelled_child(session, subject, "session", t.session, actor)
            acq, c3 = _labelled_child(session, sess, "acquisition", t.acquisition, actor)
            created = c1 + c2 + c3
            sessions.setdefault(sess_path, SessionOutcome(sess_path, "new" if c2 else "existing"))
            container = container_path(session, acq)
            outcomes = []
            for p in (t.image.path, *t.image.sidecars):
                meta: dict[str, Any] = (
                    _nifti_metadata(t.image)
                    if p == t.image.path
                    else {"modality": t.image.modality}
                    if t.image.modality
                    else {}
                )
                outcomes.append(_put_plain_file(session, store, actor, acq, container, p, meta))
            session.commit()
            report.created_containers += created
            return outcomes
        except IntegrityError:
            session.rollback()
            if attempt == MAX_RETRIES:
                raise
    raise AssertionError("unreachable")


def _put_plain_file(
    session: Session,
    store: ObjectStore,
    actor: str,
    acq: Container,
    container: str,
    path: Path,
    meta: dict[str, Any],
) -> FileOutcome:
    digest = sha256_file(path)
    row = session.scalar(select(File).where(File.container_id == acq.id, File.name == path.name))
    if row is not None:
        current = _current_version(session, row)
        if current is not None and current.hash == digest:
            return FileOutcome.unchanged(container, row, current)
    obj = store.put_file(path, expected=digest)
    result = add_file_version(
        session,
        acq,
        path.name,
        obj.hash,
        obj.size,
        actor,
        origin_type="ingest",
        origin_id=actor,
        metadata=meta or None,
    )
    return FileOutcome(
        container=container,
        name=path.name,
        status="new" if result.version == 1 else "new_version",
        type=meta.get("type") or guess_file_type(path.name),
        version=result.version,
        hash=result.hash,
        size=result.size,
        modality=meta.get("modality"),
        classification=dict(meta.get("classification") or {}),
    )


# -------------------------------------------------------------- reclassify


@dataclass(frozen=True, slots=True)
class ReclassifyOutcome:
    path: str
    old_version: str | None
    old: dict[str, Any]
    new: dict[str, list[str]]
    changed: bool


def reclassify(
    session: Session,
    actor: str,
    path: str,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> list[ReclassifyOutcome]:
    """Re-run the header classifier on DICOM files under ``path``.

    Files classified by an older ``CLASSIFIER_VERSION`` (or all, with ``force``)
    get the new classification and version; the classifier reads the header
    fields stored in file info at ingest. De-identified files are left alone
    (they were classified before de-identification removed the descriptions).
    Needs read-write on the project.
    """
    target = resolve_container(session, path, min_depth=2)
    require_role(
        session,
        actor,
        target,
        RoleName.READ_ONLY if dry_run else RoleName.READ_WRITE,
        "re-classifying files",
    )
    level_column = {
        "project": Container.project_id,
        "subject": Container.subject_id,
        "session": Container.session_id,
        "acquisition": Container.acquisition_id,
    }.get(target.type)
    if level_column is None:
        raise InvalidInputError(
            f"cannot re-classify under a {target.type}",
            f"give a path to one of {', '.join(LEVELS[1:])}",
        )
    rows = session.execute(
        select(File, Container)
        .join(Container, Container.id == File.container_id)
        .where(level_column == target.id, File.type == "dicom")
        .order_by(File.container_id, File.name)
    ).all()
    out: list[ReclassifyOutcome] = []
    for row, container in rows:
        info = dict(row.info or {})
        hp = dict(info.get("hpcgear") or {})
        old_version = stored_classifier_version(info)
        if not force and old_version == CLASSIFIER_VERSION:
            continue
        if hp.get("deid"):
            # Classified from the header before de-identification; the stored,
            # de-identified header (no SeriesDescription...) would classify worse.
            continue
        new = classify(stored_header(info))
        changed = new != (row.classification or {}) or old_version != CLASSIFIER_VERSION
        out.append(
            ReclassifyOutcome(
                path=f"{container_path(session, container)}/{row.name}",
                old_version=old_version,
                old=dict(row.classification or {}),
                new=new,
                changed=changed,
            )
        )
        if changed and not dry_run:
            hp["classifier_version"] = CLASSIFIER_VERSION
            update: dict[str, Any] = {"hpcgear": hp}
            if isinstance(info.get("classifier"), dict):  # written by the dicom-header gear
                update["classifier"] = {**info["classifier"], "version": CLASSIFIER_VERSION}
            apply_file_metadata(session, row, {"classification": new, "info": update}, actor)
    return out


def stored_header(info: dict[str, Any]) -> dict[str, Any]:
    """The DICOM header fields kept in a file's info (``info.header.dicom``).

    Ingest and the dicom-header gear both store them there (Flywheel's shape);
    older top-level fields are read as a fallback.
    """
    section = info.get("header")
    header = section.get("dicom") if isinstance(section, dict) else None
    return dict(header) if isinstance(header, dict) else dict(info)


def stored_classifier_version(info: dict[str, Any]) -> str | None:
    """``info.hpcgear.classifier_version`` (ingest) or ``info.classifier.version`` (gear)."""
    for name, key in (("hpcgear", "classifier_version"), ("classifier", "version")):
        section = info.get(name)
        value = section.get(key) if isinstance(section, dict) else None
        if isinstance(value, str):
            return value
    return None
