"""Publish a job's stored outputs into the hierarchy, in the caller's transaction.

``publish_outputs`` only adds rows (and flushes); the caller commits, then
removes scratch. Everything a publish needs is decided before the first write,
so a refusal (say, ``.metadata.json`` names a file that does not exist)
leaves the session untouched.

Where things go
---------------
* **Analysis gears** (manifest category ``analysis``): one analysis container
  under the destination, labelled ``<gear name> <YYYY-MM-DD HH:MM:SS>`` (the
  job's creation time, UTC), with ``job_id`` set and ``info.hpcgear`` holding
  the gear (name, version, image digest), the config and the inputs (file id,
  version, hash). Outputs are its files; the **job log is a file of the
  analysis** named ``<gear name>.log`` (``<gear name>.job-<job id>.log`` if an
  output already has that name).
* **All other gears** (utility, converter, classifier, qa): outputs are new
  file versions on the destination container. The **job log is not a file**
  of the destination (it would bump a version and trigger rules on every run):
  its bytes are in the object store and the job gets an append-only event
  ``log.stored`` with ``{"sha256", "size", "name"}``; the provenance record
  carries the same hash. Object-store cleanup must count both as references.
* Every file version has origin ``job`` / ``job.id``.

Idempotent: publishing the same job again finds the analysis by ``job_id``,
``add_file_version`` sees each identical hash and adds no version, metadata
already applied changes nothing (and writes no change-log row), and the
``log.stored`` event is written once.

Metadata (:class:`~hpcgear.staging.metadata.MetadataPlan`) is applied in the
same transaction. Each key maps to a container: the destination and its
parents by type, ``analysis`` to the new analysis. A ``files`` entry names a
file on that container: an output of this job, or a file already there. For
analysis gears an entry under the destination's key that only matches an
output is applied to that output (gears echo ``destination.type``).
File ``classification`` merges per key (Intent/Measurement/Features given
replace those keys), ``info`` merges at the top level, ``tags`` are added.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import ChangeLog, Container, File, Gear, Job, JobEvent
from hpcgear.errors import InvalidInputError
from hpcgear.hierarchy.service import (
    UploadResult,
    add_file_version,
    apply_file_metadata,
    create_child,
)
from hpcgear.jobs.transitions import record_event
from hpcgear.staging.metadata import (
    ContainerUpdate,
    FileUpdate,
    InvalidMetadataError,
    MetadataPlan,
)
from hpcgear.staging.stageout import StoredOutput

logger = logging.getLogger(__name__)

ANALYSIS_PARENTS = ("project", "subject", "session", "acquisition")
LOG_EVENT = "log.stored"


@dataclass(frozen=True, slots=True)
class PublishedFile:
    name: str
    file_id: str
    version: int
    sha256: str
    size: int
    container_id: str
    container_type: str
    created: bool  # False: identical bytes were already the current version
    relpath: str = ""  # below output/ (the job log: its scratch path)


@dataclass(frozen=True, slots=True)
class PublishResult:
    container_id: str  # where the outputs went (the analysis, or the destination)
    container_type: str
    analysis_id: str | None
    analysis_created: bool
    files: tuple[PublishedFile, ...]
    log: PublishedFile | None  # the log as a file (analysis gears)
    log_sha256: str | None
    log_size: int | None
    metadata_applied: tuple[str, ...]  # "file acquisition/x.nii.gz", "container session", ...

    @property
    def new_versions(self) -> int:
        return sum(1 for f in self.files if f.created)


def analysis_label(gear_name: str, when: dt.datetime) -> str:
    stamp = (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    return f"{gear_name} {stamp:%Y-%m-%d %H:%M:%S}"


def find_analysis(session: Session, job_id: str) -> Container | None:
    return session.scalar(
        select(Container).where(Container.type == "analysis", Container.job_id == job_id)
    )


def _analysis_info(job: Job, gear: Gear) -> dict[str, Any]:
    return {
        "hpcgear": {
            "gear": {
                "name": gear.name,
                "version": gear.version,
                "category": gear.category,
                "image_digest": gear.image_digest,
                "manifest_sha256": gear.manifest_sha256,
            },
            "job": {"id": job.id, "attempt": job.attempt},
            "config": job.config,
            "inputs": [
                {
                    "name": i.get("name"),
                    "file_id": i.get("file_id"),
                    "version": i.get("version"),
                    "sha256": i.get("sha256"),
                    "file_name": i.get("file_name"),
                }
                for i in (job.inputs or [])
                if i.get("base") == "file"
            ],
        }
    }


def _chain(session: Session, dest: Container) -> dict[str, Container]:
    """The destination and its parents by type (project and below)."""
    out: dict[str, Container] = {dest.type: dest}
    for level in ANALYSIS_PARENTS:
        cid = getattr(dest, f"{level}_id")
        if cid and level not in out:
            row = session.get(Container, cid)
            if row is not None:
                out[level] = row
    return out


@dataclass(frozen=True, slots=True)
class _FileTarget:
    update: FileUpdate
    container_type: str  # the metadata key
    output_name: str | None  # set when it is an output of this job
    existing: File | None  # set when it is a file already on the container


def _resolve_plan(
    session: Session,
    plan: MetadataPlan,
    chain: Mapping[str, Container | None],
    target_type: str,
    output_names: set[str],
    analysis: bool,
    dest: Container,
) -> tuple[list[tuple[ContainerUpdate, Container | None]], list[_FileTarget]]:
    """Map every key and file of ``plan`` to rows, before anything is written.

    ``chain["analysis"]`` is None while the analysis does not exist yet; the
    returned container is None for the key that means the output target.
    """
    containers: list[tuple[ContainerUpdate, Container | None]] = []
    files: list[_FileTarget] = []
    problems: list[str] = []
    for upd in plan.updates:
        ctype = upd.container_type
        if ctype not in chain:
            problems.append(
                f"{ctype}: this job's destination ({dest.type} {dest.label!r}) "
                f"has no {ctype}; valid here: {', '.join(sorted(chain))}"
            )
            continue
        container = chain[ctype]  # None only for a not-yet-created analysis
        containers.append((upd, None if ctype == target_type else container))
        for fu in upd.files:
            is_target = ctype == target_type
            existing = None
            if container is not None and not (is_target and fu.name in output_names):
                existing = session.scalar(
                    select(File).where(File.container_id == container.id, File.name == fu.name)
                )
            if is_target and fu.name in output_names:
                files.append(_FileTarget(fu, ctype, fu.name, None))
            elif existing is not None:
                files.append(_FileTarget(fu, ctype, None, existing))
            elif analysis and ctype == dest.type and fu.name in output_names:
                files.append(_FileTarget(fu, ctype, fu.name, None))
            else:
                problems.append(
                    f"{ctype}.files[{fu.name!r}]: no such file on the {ctype} "
                    "and not an output of this job"
                )
    if problems:
        raise InvalidMetadataError(
            ".metadata.json cannot be applied: " + "; ".join(problems[:5]),
            "name only output files or files on the destination",
        )
    return containers, files


def publish_outputs(
    session: Session,
    *,
    job: Job,
    gear: Gear,
    outputs: Sequence[StoredOutput],
    plan: MetadataPlan | None,
    log_digest: str | None,
    actor: str,
    log_size: int | None = None,
) -> PublishResult:
    """Attach ``outputs`` (already in storage) and apply ``plan``; flush, never commit.

    Parameters
    ----------
    job, gear
        The job row and its gear row (``gear.category`` decides analysis vs utility).
    outputs
        From :func:`hpcgear.staging.stageout.fetch_outputs`.
    plan
        From :func:`hpcgear.staging.metadata.parse_metadata`, or None.
    log_digest, log_size
        The job log's hash and size in storage (``fetch_file``), or None.
    actor
        Who publishes (the controller's identity), written into change rows.

    Raises
    ------
    InvalidMetadataError
        The plan names a container or file this job cannot reach (nothing is written).
    InvalidInputError
        The destination is gone or cannot hold an analysis; or two outputs share a name.
    """
    if log_digest is not None and log_size is None:
        raise ValueError("publish_outputs: log_size is required with log_digest")
    dest = session.get(Container, job.destination_id)
    if dest is None:
        raise InvalidInputError(
            f"job {job.id}: destination {job.destination_id} no longer exists",
            "the outputs stay in storage; rerun the job on another container",
        )
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInputError(
            f"job {job.id}: two outputs named {', '.join(dupes)}",
            "stage-out gives every output a unique name; this is a bug",
        )
    analysis = gear.category == "analysis"
    if analysis and dest.type not in ANALYSIS_PARENTS:
        raise InvalidInputError(
            f"job {job.id}: an analysis cannot be attached to a {dest.type}",
            "run analysis gears on a project, subject, session or acquisition",
        )
    chain: dict[str, Container | None] = dict(_chain(session, dest))
    target_type = "analysis" if analysis else dest.type
    existing_analysis = find_analysis(session, job.id) if analysis else None
    if analysis:
        chain["analysis"] = existing_analysis
    container_updates: list[tuple[ContainerUpdate, Container | None]] = []
    file_targets: list[_FileTarget] = []
    if plan is not None and not plan.empty:
        container_updates, file_targets = _resolve_plan(
            session, plan, chain, target_type, set(names), analysis, dest
        )

    # ---- writes start here
    analysis_created = False
    target = dest
    if analysis:
        if existing_analysis is None:
            existing_analysis = create_child(
                session,
                dest,
                "analysis",
                analysis_label(gear.name, job.created or dt.datetime.now(dt.UTC)),
                actor,
                info=_analysis_info(job, gear),
            )
            existing_analysis.job_id = job.id
            session.flush()
            analysis_created = True
        target = existing_analysis
    published: dict[str, PublishedFile] = {}
    for out in outputs:
        res = add_file_version(
            session,
            target,
            out.name,
            out.sha256,
            out.size,
            actor,
            origin_type="job",
            origin_id=job.id,
        )
        published[out.name] = _published(res, target, out.relpath)

    log_file: PublishedFile | None = None
    if log_digest is not None and log_size is not None:
        if analysis:
            name = f"{gear.name}.log"
            if name in published:
                name = f"{gear.name}.job-{job.id}.log"
            res = add_file_version(
                session,
                target,
                name,
                log_digest,
                log_size,
                actor,
                origin_type="job",
                origin_id=job.id,
            )
            log_file = _published(res, target, "")
        record_job_log(
            session,
            job,
            actor,
            sha256=log_digest,
            size=log_size,
            name=log_file.name if log_file else f"{gear.name}.log",
        )

    applied: list[str] = []
    for upd, container in container_updates:
        row = container or target
        if _apply_container(session, row, upd, actor):
            applied.append(f"container {upd.container_type}")
    for ft in file_targets:
        file_row = (
            session.get(File, published[ft.output_name].file_id)
            if ft.output_name is not None
            else ft.existing
        )
        if file_row is not None and _apply_file(session, file_row, ft.update, actor):
            applied.append(f"file {ft.container_type}/{ft.update.name}")
    session.flush()
    files = tuple(published[n] for n in names)
    logger.info(
        "job %s: published %d output(s) to %s %s (%d new versions)%s",
        job.id,
        len(files),
        target.type,
        target.id,
        sum(1 for f in files if f.created),
        f", metadata on {len(applied)}" if applied else "",
    )
    return PublishResult(
        target.id,
        target.type,
        target.id if analysis else None,
        analysis_created,
        files,
        log_file,
        log_digest,
        log_size,
        tuple(applied),
    )


def _published(res: UploadResult, container: Container, relpath: str) -> PublishedFile:
    return PublishedFile(
        res.name,
        res.file_id,
        res.version,
        res.hash,
        res.size,
        container.id,
        container.type,
        res.created,
        relpath,
    )


def record_job_log(
    session: Session, job: Job, actor: str, *, sha256: str, size: int, name: str
) -> bool:
    """Note that the job's log is in storage (event ``log.stored``), once per hash.

    Used by :func:`publish_outputs` and for failed or cancelled jobs, whose log
    is kept although nothing is published. Returns False if already noted.
    """
    digest = sha256
    seen = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind == LOG_EVENT)
    ).all()
    if any((e.data or {}).get("sha256") == digest for e in seen):
        return False
    record_event(
        session,
        job,
        LOG_EVENT,
        actor,
        f"job log stored ({size} bytes)",
        data={"sha256": digest, "size": size, "name": name},
    )
    session.flush()
    return True


def _merged_classification(
    old: Mapping[str, Any] | None, new: Mapping[str, tuple[str, ...]]
) -> dict[str, Any]:
    out = dict(old or {})
    for k, v in new.items():
        out[k] = list(v)
    return out


def _apply_file(session: Session, row: File, update: FileUpdate, actor: str) -> bool:
    """Apply one file's metadata; False (and no change-log row) when nothing changes."""
    meta: dict[str, Any] = {}
    if update.type is not None and update.type != row.type:
        meta["type"] = update.type
    if update.modality is not None and update.modality != row.modality:
        meta["modality"] = update.modality
    if update.classification is not None:
        merged = _merged_classification(row.classification, update.classification)
        if merged != (row.classification or {}):
            meta["classification"] = merged
    if update.info is not None:
        info = update.as_metadata()["info"]
        if any((row.info or {}).get(k) != v for k, v in info.items()):
            meta["info"] = info
    if update.tags:
        tags = sorted(set(row.tags or []) | set(update.tags))
        if tags != sorted(row.tags or []):
            meta["tags"] = tags
    if not meta:
        return False
    apply_file_metadata(session, row, meta, actor)
    return True


def _apply_container(session: Session, row: Container, update: ContainerUpdate, actor: str) -> bool:
    changed = False
    if update.info:
        info = {**(row.info or {}), **{k: v for k, v in update.info.items()}}
        if info != (row.info or {}):
            row.info = info
            changed = True
    if update.tags:
        tags = list(row.tags or []) + [t for t in update.tags if t not in (row.tags or [])]
        if tags != list(row.tags or []):
            row.tags = tags
            changed = True
    if changed:
        session.add(ChangeLog(kind="container.meta", container_id=row.id, actor=actor))
        session.flush()
    return changed
