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

import difflib
import logging
import tempfile
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpcgear.db.models import ChangeLog, Container, File, FileVersion
from hpcgear.errors import IngestError, InvalidInputError, NotFoundError
from hpcgear.hierarchy.paths import LEVELS, check_group_id, check_label
from hpcgear.hierarchy.permissions import RoleName, get_actor, require_role
from hpcgear.hierarchy.service import (
    add_file_version,
    apply_file_metadata,
    container_path,
    create_child,
    create_project,
    guess_file_type,
    resolve_container,
)
from hpcgear.ingest.classifier import CLASSIFIER_VERSION, classify
from hpcgear.ingest.deid_service import project_profile, record_map
from hpcgear.ingest.dicom import (
    DEID_FAILED,
    DUPLICATE,
    UNREADABLE,
    ZIP_SUFFIX,
    BuiltZip,
    DicomInstance,
    ProgressCallback,
    ProgressEvent,
    SkippedFile,
    StartedScan,
    build_series_zip,
    group_instances,
    header_tags,
    read_instance,
    scan_dicom,
    series_label,
)
from hpcgear.ingest.dicom_tags import KEYWORDS
from hpcgear.ingest.report import FileOutcome, IngestReport, SessionOutcome
from hpcgear.ingest.routing import RoutingRules, clean_label, route_study
from hpcgear.storage.objects import ObjectStore, sha256_file

if TYPE_CHECKING:
    # Loaded where used: a DICOM ingest needs neither NIfTI reading nor, without
    # de-identification, the profile machinery.
    from hpcgear.ingest.deid import DeidProfile
    from hpcgear.ingest.nifti import NiftiImage

logger = logging.getLogger(__name__)

UNSORTED_PROJECT = "Unsorted"
UID_CONFLICT = "uid_conflict"
NIFTI_DEFAULT_SESSION = "default"
NO_SUBJECT = "no_subject"
MAX_RETRIES = 3
STUDY_INFO_FIELDS = ("StudyDescription", "StudyDate", "StudyTime")


# ------------------------------------------------------------------ options


class SeriesConflictError(IngestError):
    """A series' natural key (SeriesInstanceUID) already belongs to another study."""


class ReidentifyingVersionError(IngestError):
    """A new version without de-identification of a file stored de-identified."""


WOULD_REIDENTIFY = "would_reidentify"


@dataclass(frozen=True, slots=True)
class DicomIngestOptions:
    """What ``hpcgear ingest dicom`` was asked to do."""

    group: str
    routing: RoutingRules = field(default_factory=RoutingRules)
    profile: DeidProfile | None = None
    jobs: int = 4


@dataclass(frozen=True, slots=True)
class NiftiIngestOptions:
    """What ``hpcgear ingest nifti`` was asked to do (the project is required)."""

    group: str
    project: str | None = None
    subject: str | None = None
    session: str | None = None
    jobs: int = 4


def check_dicom_keyword(name: str, what: str) -> str:
    """``name`` if it is a DICOM keyword, else InvalidInputError with close matches."""
    if name in KEYWORDS:  # the usual routing fields: no pydicom import
        return name
    from pydicom.datadict import keyword_dict, tag_for_keyword

    if tag_for_keyword(name) is not None:
        return name
    close = difflib.get_close_matches(name, list(keyword_dict), n=3)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else "use a DICOM keyword such as AccessionNumber"
    )
    raise InvalidInputError(f"{what} {name!r} is not a DICOM keyword", hint)


def _check_options(group: str, jobs: int, labels: dict[str, str | None]) -> None:
    check_group_id(group)
    if jobs < 1:
        raise InvalidInputError(f"--jobs must be at least 1, not {jobs}", "e.g. --jobs 4")
    for level, value in labels.items():
        if value is not None:
            check_label(value, what=f"--{level}")


# ------------------------------------------------------------ hierarchy bits


def _group(session: Session, group_id: str) -> Container:
    return resolve_container(session, group_id, max_depth=1)


def find_project(session: Session, group: Container, label: str) -> Container | None:
    """A project of ``group`` by label: exact, else the only case-insensitive match.

    Scanner consoles often upper-case what operators type; an exact match wins,
    and a case-insensitive one is used only when it is unambiguous.
    """
    rows = session.scalars(
        select(Container).where(Container.parent_id == group.id, Container.type == "project")
    ).all()
    for row in rows:
        if row.label == label:
            return row
    folded = [r for r in rows if r.label.casefold() == label.casefold()]
    return folded[0] if len(folded) == 1 else None


def find_by_natural_key(
    session: Session, project_id: str, ctype: str, key: str
) -> Container | None:
    """A session/acquisition of a project by natural key (StudyInstanceUID, ...)."""
    return session.scalar(
        select(Container).where(
            Container.project_id == project_id,
            Container.type == ctype,
            Container.natural_key == key,
        )
    )


def _child(session: Session, parent: Container, label: str) -> Container | None:
    return session.scalar(
        select(Container).where(
            Container.parent_id == parent.id,
            Container.label_key == label,
            Container.type != "analysis",
        )
    )


def _keyed_child(
    session: Session,
    parent: Container,
    ctype: str,
    label: str,
    key: str,
    actor: str,
    info: dict[str, Any],
) -> tuple[Container, bool]:
    """Find (by natural key) or create a session/acquisition under ``parent``.

    A sibling with the same label and no natural key (made by a plain upload) is
    adopted; one with another natural key is a different study/series, so the
    new one gets ``<label>-2``, ``-3``, ... (stable across reruns, which find it
    by key).
    """
    assert parent.project_id is not None
    found = find_by_natural_key(session, parent.project_id, ctype, key)
    if found is not None:
        return found, False
    candidate = label
    for n in range(2, 1000):
        existing = _child(session, parent, candidate)
        if existing is None:
            return (
                create_child(session, parent, ctype, candidate, actor, natural_key=key, info=info),
                True,
            )
        if existing.type == ctype and existing.natural_key is None:
            existing.natural_key = key
            session.add(ChangeLog(kind="container.meta", container_id=existing.id, actor=actor))
            session.flush()
            return existing, False
        candidate = f"{label}-{n}"
    raise IngestError(
        f"too many {ctype}s labelled {label!r} under {parent.label!r}",
        "route the studies to distinct sessions",
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


def _ensure_unsorted(
    session: Session, actor: str, group: Container, *, create: bool
) -> Container | None:
    existing = _child(session, group, UNSORTED_PROJECT)
    if existing is not None:
        return existing
    require_role(
        session,
        actor,
        group,
        RoleName.ADMIN,
        f"creating the {UNSORTED_PROJECT} project for studies that cannot be routed",
    )
    if not create:
        return None
    project = create_project(session, actor, f"{group.id}/{UNSORTED_PROJECT}")
    project.info = {"hpcgear": {"purpose": "studies ingest could not route"}}
    session.commit()
    return project


def _unchanged(
    container: str, row: File, current: FileVersion, members: int | None = None
) -> FileOutcome:
    """The outcome of a file whose current version already holds these bytes."""
    return FileOutcome(
        container=container,
        name=row.name,
        status="unchanged",
        type=row.type,
        version=current.version,
        hash=current.hash,
        size=current.size,
        members=members,
        modality=row.modality,
        classification=dict(row.classification or {}),
    )


def _current_version(session: Session, row: File) -> FileVersion | None:
    return session.scalar(
        select(FileVersion).where(
            FileVersion.file_id == row.id, FileVersion.version == row.current_version
        )
    )


# ---------------------------------------------------------------- DICOM plan


@dataclass(frozen=True, slots=True)
class PlannedSeries:
    series_uid: str
    natural_key: str
    label: str
    file_name: str
    instances: tuple[DicomInstance, ...]
    header: dict[str, Any]
    classification: dict[str, list[str]]

    @property
    def modality(self) -> str | None:
        value = self.header.get("Modality")
        return str(value) if value else None


@dataclass(frozen=True, slots=True)
class PlannedStudy:
    study_uid: str
    natural_key: str
    project: str
    subject: str
    session: str
    unsorted_reason: str | None
    routing: dict[str, str]
    info: dict[str, Any]
    series: tuple[PlannedSeries, ...]
    profile: DeidProfile | None = None


@dataclass(frozen=True, slots=True)
class DicomPlan:
    group: str
    studies: tuple[PlannedStudy, ...]
    skipped: tuple[SkippedFile, ...]
    files_seen: int

    @property
    def needs_unsorted(self) -> bool:
        return any(s.unsorted_reason for s in self.studies)


def _series_order(item: tuple[str, list[DicomInstance]]) -> tuple[bool, int, str]:
    n = item[1][0].series_number
    return (n is None, n if n is not None else 0, item[0])


def plan_dicom(
    session: Session,
    actor: str,
    root: Path,
    options: DicomIngestOptions,
    *,
    progress: ProgressCallback | None = None,
    started: StartedScan | None = None,
) -> DicomPlan:
    """Scan ``root`` and decide where every study and series goes (writes nothing).

    ``started`` is a scan of ``root`` the caller began earlier (see
    :class:`~hpcgear.ingest.dicom.StartedScan`); it is used when it reads what
    this scan would (same folder, routing fields, profile and jobs), else a new
    scan is made. Either way the options and the target are checked first.
    """
    rules = options.routing
    _check_options(
        options.group,
        options.jobs,
        {"project": rules.project, "subject": rules.subject, "session": rules.session},
    )
    for name in rules.header_fields:
        check_dicom_keyword(name, "routing field")
    rules.compiled()
    get_actor(session, actor)
    group = _group(session, options.group)
    if rules.project is not None and find_project(session, group, rules.project) is None:
        raise NotFoundError(
            f"project {rules.project!r} does not exist in group {group.id!r}",
            f"a group admin creates it: `hpcgear project create {group.id}/{rules.project}`",
        )
    scan_profile = options.profile
    if started is not None and started.matches(
        Path(root), rules.header_fields, scan_profile, options.jobs
    ):
        scan = started.collect(progress)
    else:
        if started is not None:
            started.close()  # it reads something else: stop it
        scan = scan_dicom(
            Path(root),
            route_fields=rules.header_fields,
            profile=scan_profile,
            jobs=options.jobs,
            progress=progress,
        )
    projects_by_label: dict[str, Container | None] = {}
    profiles_by_project: dict[str | None, DeidProfile | None] = {}
    opaque_taken: dict[str, int] = {}
    studies: list[PlannedStudy] = []
    for study_uid, series_map in group_instances(scan.instances).items():
        ordered = sorted(series_map.items(), key=_series_order)
        first = ordered[0][1][0]
        route = route_study(first.routing, group.id, rules)
        reason: str | None = None
        project_label = UNSORTED_PROJECT
        if route.project is None:
            reason = "; ".join(route.problems) or "no project was named for this study"
        elif route.missing:
            reason = "; ".join(route.problems)
        else:
            project = find_project(session, group, route.project)
            if project is None:
                reason = (
                    f"project {route.project!r} (from {route.sources.get('project')}) "
                    f"does not exist in group {group.id!r}"
                )
            else:
                project_label = project.label
        target = projects_by_label.get(project_label)
        if target is None and project_label != UNSORTED_PROJECT:
            target = find_project(session, group, project_label)
            projects_by_label[project_label] = target
        if target is None and project_label == UNSORTED_PROJECT:
            target = _child(session, group, UNSORTED_PROJECT)
        target_id = target.id if target is not None else None
        if target_id not in profiles_by_project:
            profiles_by_project[target_id] = project_profile(session, target_id)
        profile = profiles_by_project[target_id] or options.profile
        if profile is not scan_profile and (
            profile is None or scan_profile is None or profile.sha256 != scan_profile.sha256
        ):
            # The target project has its own profile: read these headers again with it.
            ordered = [(uid_, _reread(members, rules, profile)) for uid_, members in ordered]
            first = ordered[0][1][0]
        subject = route.subject if reason is None or route.subject else None
        if subject is None:
            subject = first.fallback_subject if reason is None else None
        if subject is None:
            subject = _opaque_subject(
                session, target, project_label, first.study_key, profile, opaque_taken
            )
        session_label = route.session or first.fallback_session or f"study-{first.study_key[-12:]}"
        planned_series = []
        for series_uid, members in ordered:
            head = members[0]
            label = series_label(head.series_number, head.header)
            planned_series.append(
                PlannedSeries(
                    series_uid=series_uid,
                    natural_key=head.series_key,
                    label=label,
                    file_name=f"{label}{ZIP_SUFFIX}",
                    instances=tuple(members),
                    header=dict(head.header),
                    classification=head.classification or classify(head.header),
                )
            )
        info: dict[str, Any] = {k: first.header[k] for k in STUDY_INFO_FIELDS if k in first.header}
        hp: dict[str, Any] = {"ingest": "dicom", "routing": dict(route.sources)}
        if reason is not None:
            hp["unsorted_reason"] = reason
        info["hpcgear"] = hp
        studies.append(
            PlannedStudy(
                study_uid=study_uid,
                natural_key=first.study_key,
                project=project_label,
                subject=subject,
                session=session_label,
                unsorted_reason=reason,
                routing=dict(route.sources),
                info=info,
                series=tuple(planned_series),
                profile=profile,
            )
        )
    studies.sort(key=lambda s: (s.project, s.subject, s.session, s.study_uid))
    return DicomPlan(group.id, tuple(studies), tuple(scan.skipped), scan.files_seen)


def _reread(
    members: Sequence[DicomInstance], rules: RoutingRules, profile: DeidProfile | None
) -> list[DicomInstance]:
    tags = header_tags(rules.header_fields, profile)
    out: list[DicomInstance] = []
    for inst in members:
        again = read_instance(
            inst.path, inst.rel, route_fields=rules.header_fields, profile=profile, tags=tags
        )
        if isinstance(again, SkippedFile):
            raise IngestError(
                f"{inst.rel} could not be de-identified with the project's profile: {again.detail}",
                "fix the profile attached to the project (`hpcgear deid show`)",
            )
        out.append(again)
    return out


def _opaque_subject(
    session: Session,
    project: Container | None,
    project_label: str,
    study_key: str,
    profile: DeidProfile | None,
    taken: dict[str, int],
) -> str:
    """A subject label that is never a patient identifier (nor a hash of one).

    A study seen before keeps its subject (found by its session's natural key);
    a new one gets the next free ``unsorted-NNNN`` (Unsorted) or ``anon-NNNN``.
    """
    if project is not None:
        sess = find_by_natural_key(session, project.id, "session", study_key)
        if sess is not None and sess.subject_id is not None:
            subject = session.get(Container, sess.subject_id)
            if subject is not None:
                return subject.label
    prefix = "unsorted" if project_label == UNSORTED_PROJECT else "anon"
    n = taken.get(project_label, 0)
    while True:
        n += 1
        label = f"{prefix}-{n:04d}"
        if project is None or _child(session, project, label) is None:
            taken[project_label] = n
            return label


def _check_write_access(
    session: Session, actor: str, group: Container, labels: Sequence[str]
) -> dict[str, Container]:
    projects: dict[str, Container] = {}
    for label in sorted(set(labels)):
        project = find_project(session, group, label)
        if project is None:
            continue  # Unsorted, not created yet (its creation checks admin)
        require_role(session, actor, project, RoleName.READ_WRITE, "ingesting")
        projects[label] = project
    return projects


# ------------------------------------------------------------- DICOM ingest


def ingest_dicom(
    session: Session,
    store: ObjectStore,
    actor: str,
    root: Path,
    options: DicomIngestOptions,
    *,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    started: StartedScan | None = None,
) -> IngestReport:
    """Ingest every DICOM file under ``root`` into group ``options.group``.

    Headers are read in ``options.jobs`` threads; each study becomes a session
    (natural key StudyInstanceUID) and each series an acquisition (natural key
    SeriesInstanceUID) holding one reproducible ``<n> - <description>.dicom.zip``.
    Routing reads the original header; de-identification (``options.profile``)
    is applied to every instance before anything is stored, and to the header
    fields kept as info. With ``dry_run`` nothing is written: the report lists
    what would be created and which files would be skipped.

    Commits after each series (see the module docstring). Raises
    PermissionDeniedError before storing anything when the actor cannot write
    to a target project (or create the Unsorted project when one is needed).
    ``started``: a header scan begun before (see :func:`plan_dicom`).
    """
    plan = plan_dicom(session, actor, root, options, progress=progress, started=started)
    group = _group(session, plan.group)
    report = IngestReport(kind="dicom", group=group.id, dry_run=dry_run, files_seen=plan.files_seen)
    report.skipped.extend(plan.skipped)
    projects = _check_write_access(session, actor, group, [s.project for s in plan.studies])
    if plan.needs_unsorted and UNSORTED_PROJECT not in projects:
        unsorted = _ensure_unsorted(session, actor, group, create=not dry_run)
        if unsorted is None:
            report.notes.append(f"would create project {group.id}/{UNSORTED_PROJECT}")
        else:
            report.created_containers += 1
            report.notes.append(f"created project {group.id}/{UNSORTED_PROJECT}")
            require_role(session, actor, unsorted, RoleName.READ_WRITE, "ingesting")
            projects[UNSORTED_PROJECT] = unsorted
    if dry_run:
        _describe_plan(session, plan, projects, report)
        return report
    workers = started.workers if started is not None else None
    _execute_plan(session, store, actor, plan, projects, options, report, progress, workers)
    report.skipped.sort(key=lambda s: s.path)
    return report


def _preview_session_label(
    session: Session,
    project: Container | None,
    study: PlannedStudy,
    taken: dict[tuple[str, str, str], str],
) -> str:
    """The label :func:`_keyed_child` will give a new session (``-2``... on clashes)."""
    subject = _child(session, project, study.subject) if project is not None else None
    candidate = study.session
    for n in range(2, 1000):
        key = (study.project, study.subject, candidate)
        clash = key in taken and taken[key] != study.natural_key
        if not clash and subject is not None:
            row = _child(session, subject, candidate)
            clash = row is not None and row.natural_key not in (None, study.natural_key)
        if not clash:
            taken[key] = study.natural_key
            return candidate
        candidate = f"{study.session}-{n}"
    return candidate


def _describe_plan(
    session: Session, plan: DicomPlan, projects: dict[str, Container], report: IngestReport
) -> None:
    taken: dict[tuple[str, str, str], str] = {}
    for study in plan.studies:
        project = projects.get(study.project)
        existing = (
            find_by_natural_key(session, project.id, "session", study.natural_key)
            if project is not None
            else None
        )
        if existing is not None:
            path = container_path(session, existing)
        else:
            label = _preview_session_label(session, project, study, taken)
            path = f"{plan.group}/{study.project}/{study.subject}/{label}"
        report.sessions.append(
            SessionOutcome(
                path=path,
                status="existing" if existing is not None else "new",
                natural_key=study.natural_key,
                unsorted_reason=study.unsorted_reason,
                routing=study.routing,
            )
        )
        for series in study.series:
            acq = (
                find_by_natural_key(session, project.id, "acquisition", series.natural_key)
                if project is not None
                else None
            )
            container = (
                container_path(session, acq) if acq is not None else f"{path}/{series.label}"
            )
            report.files.append(
                FileOutcome(
                    container=container,
                    name=series.file_name,
                    status="planned",
                    type="dicom",
                    members=len(series.instances),
                    modality=series.modality,
                    classification=series.classification,
                    sources=tuple(i.rel for i in series.instances),
                )
            )


def _file_metadata(series: PlannedSeries, built: BuiltZip) -> dict[str, Any]:
    hp: dict[str, Any] = {
        "classifier_version": CLASSIFIER_VERSION,
        "members_sha256": built.members_sha256,
        "instances": built.members,
    }
    if built.deid is not None:
        hp["deid"] = built.deid
    return {
        "type": "dicom",
        "modality": series.modality,
        "classification": series.classification,
        "info": {"header": {"dicom": dict(series.header)}, "hpcgear": hp},
    }


def _build(series: PlannedSeries, dest: Path, profile: DeidProfile | None) -> BuiltZip:
    return build_series_zip(series.instances, dest, series.label, profile)


def _execute_plan(
    session: Session,
    store: ObjectStore,
    actor: str,
    plan: DicomPlan,
    projects: dict[str, Container],
    options: DicomIngestOptions,
    report: IngestReport,
    progress: ProgressCallback | None,
    workers: Executor | None = None,
) -> None:
    """Build the series zips ``options.jobs`` at a time and store them in order.

    Zips are built in threads (zlib works outside the GIL, the rest does not),
    or in ``workers`` (the scan's worker processes, see
    :class:`~hpcgear.ingest.dicom.StartedScan`) for series without
    de-identification, whose build raises nothing but IngestError and
    OSError (which come back from a worker process intact). Only this process
    writes to the database, one series at a time, in plan order.
    """
    work = [(study, series) for study in plan.studies for series in study.series]
    total = sum(len(series.instances) for _st, series in work)
    done = 0
    seen_sessions: dict[str, SessionOutcome] = {}
    sessions_stored: dict[str, tuple[Container, str]] = {}
    store.ensure()
    window = max(2, options.jobs * 2)
    with (
        tempfile.TemporaryDirectory(prefix="ingest-", dir=store.tmp) as tmp,
        ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="dicom-zip") as pool,
    ):
        queue: deque[tuple[PlannedStudy, PlannedSeries, Future[BuiltZip]]] = deque()
        items = iter(enumerate(work))

        def submit_next() -> None:
            nxt = next(items, None)
            if nxt is not None:
                i, (study, series) = nxt
                dest = Path(tmp) / f"{i:07d}.zip"
                future: Future[BuiltZip]
                if workers is not None and study.profile is None:
                    future = workers.submit(
                        build_series_zip, series.instances, dest, series.label, None
                    )
                else:
                    future = pool.submit(_build, series, dest, study.profile)
                queue.append((study, series, future))

        for _ in range(window):
            submit_next()
        try:
            while queue:
                study, series, future = queue.popleft()
                submit_next()
                outcome = _store_built_series(
                    session,
                    store,
                    actor,
                    projects[study.project],
                    study,
                    series,
                    future,
                    study.profile,
                    report,
                    seen_sessions,
                    sessions_stored,
                )
                if outcome is not None:
                    report.files.append(outcome)
                done += len(series.instances)
                if progress is not None:
                    progress(ProgressEvent("store", done, total))
        except BaseException:
            for _study, _series, future in queue:
                future.cancel()
            raise
    report.sessions.extend(seen_sessions.values())


def _store_built_series(
    session: Session,
    store: ObjectStore,
    actor: str,
    project: Container,
    study: PlannedStudy,
    series: PlannedSeries,
    future: Future[BuiltZip],
    profile: DeidProfile | None,
    report: IngestReport,
    seen_sessions: dict[str, SessionOutcome],
    sessions_stored: dict[str, tuple[Container, str]],
) -> FileOutcome | None:
    """Wait for one series zip and store it; a series that cannot be built or
    placed is reported as skipped (its files with a reason), the ingest goes on."""
    try:
        built = future.result()
    except (IngestError, OSError) as exc:  # a file changed or vanished since the scan
        _skip_series(report, series, UNREADABLE, getattr(exc, "message", None) or str(exc))
        return None
    except Exception as exc:  # pydicom failing on the full read or the profile
        if profile is not None:  # the text may quote an identifying header value
            _skip_series(
                report,
                series,
                DEID_FAILED,
                f"the profile could not be applied ({type(exc).__name__})",
            )
        else:
            _skip_series(report, series, UNREADABLE, f"{type(exc).__name__}: {exc}")
        return None
    try:
        return _store_series(
            session,
            store,
            actor,
            project,
            study,
            series,
            built,
            report,
            seen_sessions,
            sessions_stored,
        )
    except SeriesConflictError as exc:
        _skip_series(report, series, UID_CONFLICT, exc.message)
        return None
    except ReidentifyingVersionError as exc:
        _skip_series(report, series, WOULD_REIDENTIFY, exc.message)
        return None
    finally:
        built.path.unlink(missing_ok=True)


def _skip_series(report: IngestReport, series: PlannedSeries, reason: str, detail: str) -> None:
    logger.warning("series %s not stored: %s", series.label, detail)
    for inst in series.instances:
        report.skipped.append(
            SkippedFile(inst.rel, reason, f"series {series.label!r} not stored: {detail}")
        )


def _store_series(
    session: Session,
    store: ObjectStore,
    actor: str,
    project: Container,
    study: PlannedStudy,
    series: PlannedSeries,
    built: BuiltZip,
    report: IngestReport,
    seen_sessions: dict[str, SessionOutcome],
    sessions_stored: dict[str, tuple[Container, str]] | None = None,
) -> FileOutcome:
    """One series in one transaction (retried when a concurrent ingest raced us).

    ``sessions_stored``: natural key -> (session container, its path) of the
    studies this run committed a series of; the next series of the study is
    placed in it without looking it up again (a retry looks it up again).
    """
    stored = sessions_stored if sessions_stored is not None else {}
    for attempt in range(1, MAX_RETRIES + 1):
        try:
            outcome, created, placed, sess = _store_series_once(
                session, store, actor, project, study, series, built,
                stored.get(study.natural_key),
            )  # fmt: skip
            session.commit()
            report.created_containers += created
            seen_sessions.setdefault(study.natural_key, placed)
            stored[study.natural_key] = (sess, placed.path)
            return outcome
        except (SeriesConflictError, ReidentifyingVersionError):
            session.rollback()
            raise
        except IntegrityError:
            session.rollback()
            stored.pop(study.natural_key, None)
            if attempt == MAX_RETRIES:
                raise
            logger.info("series %s: concurrent change, retrying (%d)", series.label, attempt)
    raise AssertionError("unreachable")


def _store_series_once(
    session: Session,
    store: ObjectStore,
    actor: str,
    project: Container,
    study: PlannedStudy,
    series: PlannedSeries,
    built: BuiltZip,
    stored_session: tuple[Container, str] | None = None,
) -> tuple[FileOutcome, int, SessionOutcome, Container]:
    """Place and store one series (the caller commits).

    ``stored_session``: the study's session container and path, when an earlier
    series of this run committed it (found again by natural key otherwise).
    """
    created = 0
    project = session.get(Container, project.id) or project
    sess_path: str | None = None
    sess: Container | None
    if stored_session is not None:
        sess, sess_path = stored_session
    else:
        sess = find_by_natural_key(session, project.id, "session", study.natural_key)
    sess_status = "existing"
    if sess is None:
        subject, new_subject = _labelled_child(session, project, "subject", study.subject, actor)
        created += new_subject
        sess, new_session = _keyed_child(
            session, subject, "session", study.session, study.natural_key, actor, study.info
        )
        created += new_session
        sess_status = "new" if new_session else "existing"
    placed = SessionOutcome(
        path=sess_path if sess_path is not None else container_path(session, sess),
        status=sess_status,
        natural_key=study.natural_key,
        unsorted_reason=study.unsorted_reason,
        routing=study.routing,
    )
    acq, new_acq = _keyed_child(
        session,
        sess,
        "acquisition",
        series.label,
        series.natural_key,
        actor,
        {"header": {"dicom": dict(series.header)}},
    )
    created += new_acq
    if acq.session_id != sess.id:
        raise SeriesConflictError(
            f"the SeriesInstanceUID of series {series.label!r} already belongs to "
            f"{container_path(session, acq)} (another study)",
            "the files reuse a UID across studies; fix them, or de-identify with hashuid",
        )
    # An acquisition is a child of its session (checked just above).
    acq_path = (
        f"{placed.path}/{acq.label}" if acq.parent_id == sess.id else container_path(session, acq)
    )
    row = (
        None  # created in this transaction: it holds no file yet
        if new_acq
        else session.scalar(
            select(File).where(File.container_id == acq.id, File.name == series.file_name)
        )
    )
    if row is not None:
        stored = ((row.info or {}).get("hpcgear") or {}).get("members_sha256")
        current = _current_version(session, row)
        if stored == built.members_sha256 and current is not None:
            return (
                _unchanged(acq_path, row, current, members=built.members),
                created,
                placed,
                sess,
            )
        if ((row.info or {}).get("hpcgear") or {}).get("deid") and built.deid is None:
            raise ReidentifyingVersionError(
                f"{acq_path}/{series.file_name} is stored de-identified; this ingest is not",
                "ingest with --de-identify or the same --deid-profile",
            )
    obj = store.put_file(built.path)
    result = add_file_version(
        session,
        acq,
        series.file_name,
        obj.hash,
        obj.size,
        actor,
        origin_type="ingest",
        origin_id=actor,
        metadata=_file_metadata(series, built),
    )
    if result.created and study.profile is not None and built.reid:
        record_map(
            session,
            project.id,
            result.file_id,
            result.version,
            study.profile,
            list(built.reid),
            actor,
        )
    status = (
        "unchanged" if not result.created else ("new" if result.version == 1 else "new_version")
    )
    return (
        FileOutcome(
            container=acq_path,
            name=series.file_name,
            status=status,
            type="dicom",
            version=result.version,
            hash=result.hash,
            size=result.size,
            members=built.members,
            modality=series.modality,
            classification=series.classification,
        ),
        created,
        placed,
        sess,
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
    project = find_project(session, group, options.project)
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
            return _unchanged(container, row, current)
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
