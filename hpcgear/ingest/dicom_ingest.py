"""DICOM ingest (``hpcgear ingest dicom``) on SQLAlchemy Core.

What :mod:`hpcgear.ingest.service` documents for the DICOM ingest holds here:
roles checked before anything is written, a commit after each series, studies
and series found again by their natural keys, unroutable studies in
``Unsorted``, reason codes for every file not stored. This module only does it
with Core statements on the tables of :mod:`hpcgear.db.tables`, so that the
command needs neither ``sqlalchemy.orm`` nor the ORM models (importing and
configuring them costs a command about 0.2 s of CPU, a sixth of an ingest of
2,000 files). Every function takes a Core ``Connection`` (the CLI) or an ORM
``Session`` (the services, the API, the tests): both run Core statements,
give the same rows and commit or roll back alike. The rows written are the
ORM path's: containers created or adopted as ``hierarchy.service.create_child``
and ``add_file_versions`` write them, with the same change-log rows.
``hpcgear.ingest.service`` re-exports the public names.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from hpcgear.db.tables import change_log, containers, file_versions, files, project_deid_profiles
from hpcgear.errors import IngestError, InvalidInputError, NotFoundError
from hpcgear.hierarchy.access import RoleName, get_actor, require_role
from hpcgear.hierarchy.paths import HierarchyPath, check_file_name, check_group_id, check_label
from hpcgear.hierarchy.uploads import new_id
from hpcgear.ingest.classifier import CLASSIFIER_VERSION, classify
from hpcgear.ingest.dicom import (
    DEID_FAILED,
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
from hpcgear.ingest.routing import RoutingRules, route_study
from hpcgear.storage.objects import ObjectStore
from hpcgear.text import check_storable

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Connection, Row, Table
    from sqlalchemy.orm import Session

    from hpcgear.ingest.deid import DeidProfile

    #: A Core connection or an ORM session: what the functions here run their
    #: statements on (both execute Core statements, commit and roll back).
    Db: TypeAlias = Connection | Session

logger = logging.getLogger(__name__)

UNSORTED_PROJECT = "Unsorted"
UID_CONFLICT = "uid_conflict"
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


class Node(NamedTuple):
    """The columns of a ``containers`` row the ingest reads (ids, type, labels)."""

    id: str
    type: str
    label: str
    parent_id: str | None
    group_id: str
    project_id: str | None
    subject_id: str | None
    session_id: str | None
    acquisition_id: str | None
    natural_key: str | None


_c = containers.c
_NODE = (
    _c.id, _c.type, _c.label, _c.parent_id, _c.group_id, _c.project_id, _c.subject_id,
    _c.session_id, _c.acquisition_id, _c.natural_key,
)  # fmt: skip


def _first(session: Db, where: Any) -> Node | None:
    row = session.execute(select(*_NODE).where(*where)).first()
    return Node._make(row) if row is not None else None


def _node(session: Db, container_id: str) -> Node | None:
    return _first(session, [_c.id == container_id])


def _group(session: Db, group_id: str) -> Node:
    """The group (``hierarchy.service.resolve_container(group_id, max_depth=1)``)."""
    hp = HierarchyPath.parse(group_id, min_depth=1, max_depth=1)
    group = _node(session, hp.parts[0])
    if group is None or group.type != "group":
        raise NotFoundError(
            f"group {hp.parts[0]!r} does not exist",
            "list groups with `hpcgear ls`; a site admin creates them with `hpcgear group create`",
        )
    return group


def find_project(session: Db, group: Node, label: str) -> Node | None:
    """A project of ``group`` by label: exact, else the only case-insensitive match.

    Scanner consoles often upper-case what operators type; an exact match wins,
    and a case-insensitive one is used only when it is unambiguous.
    """
    rows = [
        Node._make(r)
        for r in session.execute(
            select(*_NODE).where(_c.parent_id == group.id, _c.type == "project")
        )
    ]
    for row in rows:
        if row.label == label:
            return row
    folded = [r for r in rows if r.label.casefold() == label.casefold()]
    return folded[0] if len(folded) == 1 else None


def find_by_natural_key(session: Db, project_id: str, ctype: str, key: str) -> Node | None:
    """A session/acquisition of a project by natural key (StudyInstanceUID, ...)."""
    return _first(
        session, [_c.project_id == project_id, _c.type == ctype, _c.natural_key == key]
    )


def _child(session: Db, parent: Node, label: str) -> Node | None:
    return _first(
        session, [_c.parent_id == parent.id, _c.label_key == label, _c.type != "analysis"]
    )


def _path(session: Db, node: Node) -> str:
    """The human path of a container (``hierarchy.service.container_path``); the
    ingest asks it of projects, sessions and acquisitions, never of an analysis
    (nor of anything below one)."""
    parts: list[str] = []
    current: Node | None = node
    while current is not None:
        assert current.type != "analysis", "an ingest container is never an analysis"
        parts.append(current.id if current.type == "group" else current.label)
        current = _node(session, current.parent_id) if current.parent_id else None
    return "/".join(reversed(parts))


def _create_child(
    session: Db,
    parent: Node,
    ctype: str,
    label: str,
    actor: str,
    *,
    natural_key: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> Node:
    """A new project/subject/session/acquisition under ``parent``: the row
    ``hierarchy.service.create_child`` adds."""
    cid = new_id()
    ids = {
        "project_id": parent.project_id,
        "subject_id": parent.subject_id,
        "session_id": parent.session_id,
        "acquisition_id": parent.acquisition_id,
        f"{ctype}_id": cid,
    }
    session.execute(
        insert(containers).values(
            id=cid, type=ctype, label=label, label_key=label, parent_id=parent.id,
            group_id=parent.group_id, natural_key=natural_key, info=dict(info or {}), tags=[],
            created_by=actor, **ids,
        )
    )  # fmt: skip
    return Node(
        cid, ctype, label, parent.id, parent.group_id, ids["project_id"], ids["subject_id"],
        ids["session_id"], ids["acquisition_id"], natural_key,
    )  # fmt: skip


def _keyed_child(
    session: Db,
    parent: Node,
    ctype: str,
    label: str,
    key: str,
    actor: str,
    info: dict[str, Any],
) -> tuple[Node, bool]:
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
                _create_child(
                    session, parent, ctype, candidate, actor, natural_key=key, info=info
                ),
                True,
            )
        if existing.type == ctype and existing.natural_key is None:
            session.execute(
                update(containers).where(_c.id == existing.id).values(natural_key=key)
            )
            session.execute(
                insert(change_log).values(
                    kind="container.meta", container_id=existing.id, actor=actor
                )
            )
            return existing._replace(natural_key=key), False
        candidate = f"{label}-{n}"
    raise IngestError(
        f"too many {ctype}s labelled {label!r} under {parent.label!r}",
        "route the studies to distinct sessions",
    )


def _labelled_child(
    session: Db, parent: Node, ctype: str, label: str, actor: str
) -> tuple[Node, bool]:
    existing = _child(session, parent, label)
    if existing is not None:
        if existing.type != ctype:
            raise IngestError(
                f"{label!r} under {parent.label!r} is a {existing.type}, not a {ctype}",
                "choose another label",
            )
        return existing, False
    return _create_child(session, parent, ctype, label, actor), True


def _ensure_unsorted(session: Db, actor: str, group: Node, *, create: bool) -> Node | None:
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
    # What hierarchy.service.create_project adds (its checks passed above),
    # with the info it is then given.
    project = _create_child(
        session,
        group,
        "project",
        UNSORTED_PROJECT,
        actor,
        info={"hpcgear": {"purpose": "studies ingest could not route"}},
    )
    session.commit()
    return project


def _project_profile(session: Db, project_id: str | None) -> DeidProfile | None:
    """The profile attached to a project, or None (``deid_service.project_profile``)."""
    if project_id is None:
        return None
    text = session.scalar(
        select(project_deid_profiles.c.text).where(
            project_deid_profiles.c.project_id == project_id
        )
    )
    if text is None:
        return None
    from hpcgear.ingest.deid import parse_profile_text, with_baseline

    return with_baseline(parse_profile_text(text, f"<profile of project {project_id}>"))


_f, _fv = files.c, file_versions.c


def _file_row(session: Db, container_id: str, name: str) -> Row[Any] | None:
    return session.execute(
        select(files).where(_f.container_id == container_id, _f.name == name)
    ).first()


def _current_version(session: Db, row: Row[Any]) -> Row[Any] | None:
    return session.execute(
        select(file_versions).where(_fv.file_id == row.id, _fv.version == row.current_version)
    ).first()


@dataclass(frozen=True, slots=True)
class _AddedVersion:
    file_id: str
    version: int
    hash: str
    size: int
    created: bool


def _add_file_version(
    session: Db,
    container: Node,
    name: str,
    digest: str,
    size: int,
    actor: str,
    *,
    origin_type: str,
    origin_id: str,
    metadata: Mapping[str, Any],
) -> _AddedVersion:
    """``hierarchy.service.add_file_version`` of one file with its metadata
    (``type``, ``modality``, ``classification``, ``info``), in Core: the same
    file, version and change-log rows, and the container's modified time."""
    check_file_name(name)
    check_storable(metadata["info"], "file info")
    row = _file_row(session, container.id, name)
    fields = {
        "type": metadata["type"],
        "modality": metadata["modality"],
        "classification": dict(metadata["classification"] or {}),
    }
    if row is not None:
        fields["info"] = {**(row.info or {}), **dict(metadata["info"])}
        current = _current_version(session, row)
        if current is not None and current.hash == digest:
            # As the ORM flushes an object: only the values that changed, if any.
            changed = {k: v for k, v in fields.items() if getattr(row, k) != v}
            if changed:
                session.execute(update(files).where(_f.id == row.id).values(**changed))
            session.execute(
                insert(change_log).values(
                    kind="file.meta", container_id=row.container_id, file_id=row.id,
                    file_version=row.current_version, actor=actor,
                )
            )  # fmt: skip
            return _AddedVersion(row.id, row.current_version, digest, size, created=False)
        file_id, version = row.id, row.current_version + 1
        session.execute(
            update(files).where(_f.id == file_id).values(**fields, current_version=version)
        )
    else:
        file_id, version = new_id(), 1
        session.execute(
            insert(files).values(
                id=file_id, container_id=container.id, project_id=container.project_id,
                name=name, current_version=1, tags=[], info=dict(metadata["info"]), **fields,
            )
        )  # fmt: skip
    session.execute(
        insert(file_versions).values(
            file_id=file_id, version=version, hash=digest, size=size,
            origin_type=origin_type, origin_id=origin_id,
        )
    )  # fmt: skip
    session.execute(
        insert(change_log).values(
            kind="file.version", container_id=container.id, file_id=file_id,
            file_version=version, actor=actor,
        )
    )  # fmt: skip
    session.execute(
        update(containers).where(_c.id == container.id).values(modified=dt.datetime.now(dt.UTC))
    )
    return _AddedVersion(file_id, version, digest, size, created=True)


def _record_map(
    session: Db,
    project_id: str,
    file_id: str,
    version: int,
    profile: DeidProfile,
    entries: list[dict[str, Any]],
    actor: str,
) -> None:
    """``deid_service.record_map`` (only called when the profile has deid-log)."""
    if not profile.reid_map or not entries:
        return
    from hpcgear.db.models import DeidMapEntry  # its table: only an ingest that keeps a map

    table = cast("Table", DeidMapEntry.__table__)
    session.execute(
        insert(table).values(
            project_id=project_id, file_id=file_id, file_version=version, profile=profile.name,
            profile_sha256=profile.sha256, entries=entries, actor=actor,
        )
    )  # fmt: skip


def _committed(session: Db) -> None:
    """Commit; an ORM session also forgets what it had loaded (the rows changed
    under it in Core, as the ORM path changed them through its objects)."""
    session.commit()
    expire_all = getattr(session, "expire_all", None)
    if expire_all is not None:
        expire_all()

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
    session: Db,
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
    projects_by_label: dict[str, Node | None] = {}
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
            profiles_by_project[target_id] = _project_profile(session, target_id)
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
    session: Db,
    project: Node | None,
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
            subject = _node(session, sess.subject_id)
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
    session: Db, actor: str, group: Node, labels: Sequence[str]
) -> dict[str, Node]:
    projects: dict[str, Node] = {}
    for label in sorted(set(labels)):
        project = find_project(session, group, label)
        if project is None:
            continue  # Unsorted, not created yet (its creation checks admin)
        require_role(session, actor, project, RoleName.READ_WRITE, "ingesting")
        projects[label] = project
    return projects


# ------------------------------------------------------------- DICOM ingest


def ingest_dicom(
    session: Db,
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
    session: Db,
    project: Node | None,
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
    session: Db, plan: DicomPlan, projects: dict[str, Node], report: IngestReport
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
            path = _path(session, existing)
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
                _path(session, acq) if acq is not None else f"{path}/{series.label}"
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
    session: Db,
    store: ObjectStore,
    actor: str,
    plan: DicomPlan,
    projects: dict[str, Node],
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
    sessions_stored: dict[str, tuple[Node, str]] = {}
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
    session: Db,
    store: ObjectStore,
    actor: str,
    project: Node,
    study: PlannedStudy,
    series: PlannedSeries,
    future: Future[BuiltZip],
    profile: DeidProfile | None,
    report: IngestReport,
    seen_sessions: dict[str, SessionOutcome],
    sessions_stored: dict[str, tuple[Node, str]],
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
    session: Db,
    store: ObjectStore,
    actor: str,
    project: Node,
    study: PlannedStudy,
    series: PlannedSeries,
    built: BuiltZip,
    report: IngestReport,
    seen_sessions: dict[str, SessionOutcome],
    sessions_stored: dict[str, tuple[Node, str]] | None = None,
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
            _committed(session)
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
    session: Db,
    store: ObjectStore,
    actor: str,
    project: Node,
    study: PlannedStudy,
    series: PlannedSeries,
    built: BuiltZip,
    stored_session: tuple[Node, str] | None = None,
) -> tuple[FileOutcome, int, SessionOutcome, Node]:
    """Place and store one series (the caller commits).

    ``stored_session``: the study's session container and path, when an earlier
    series of this run committed it (found again by natural key otherwise).
    """
    created = 0
    sess_path: str | None = None
    sess: Node | None
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
        path=sess_path if sess_path is not None else _path(session, sess),
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
            f"{_path(session, acq)} (another study)",
            "the files reuse a UID across studies; fix them, or de-identify with hashuid",
        )
    # An acquisition is a child of its session (checked just above).
    acq_path = (
        f"{placed.path}/{acq.label}" if acq.parent_id == sess.id else _path(session, acq)
    )
    row = (
        None  # created in this transaction: it holds no file yet
        if new_acq
        else _file_row(session, acq.id, series.file_name)
    )
    if row is not None:
        stored = ((row.info or {}).get("hpcgear") or {}).get("members_sha256")
        current = _current_version(session, row)
        if stored == built.members_sha256 and current is not None:
            return (
                FileOutcome.unchanged(acq_path, row, current, members=built.members),
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
    result = _add_file_version(
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
        _record_map(
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


