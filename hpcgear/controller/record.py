"""Store one immutable provenance record per job attempt (database side).

:func:`collect_run_facts` gathers :class:`~hpcgear.provenance.record.RunFacts`
from the job row, its gear, its events, the publish result, the scheduler's
accounting and the job's exit record; :func:`record_provenance` stores the
record once. A second call for the same job returns the stored row and never
edits it (even if the facts differ: the first record is the one that counts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpcgear import __version__
from hpcgear.controller.publish import PublishResult
from hpcgear.db.models import Gear, Job, JobEvent, ProvenanceRecord
from hpcgear.errors import InvalidInputError, NotFoundError
from hpcgear.provenance.record import ProvFile, RunFacts, build_record, record_sha256
from hpcgear.render.exit_record import ExitRecord
from hpcgear.scheduler.base import Accounting, split_native_id

logger = logging.getLogger(__name__)


def get_record(session: Session, job_id: str) -> ProvenanceRecord | None:
    return session.scalar(select(ProvenanceRecord).where(ProvenanceRecord.job_id == job_id))


def verify_record(row: ProvenanceRecord) -> bool:
    """True when the stored record still hashes to its stored sha256."""
    return record_sha256(row.record) == row.sha256


def record_provenance(session: Session, job: Job, facts: RunFacts) -> ProvenanceRecord:
    """Store the record for ``job`` once; later calls return the stored row unchanged.

    Safe against a concurrent writer: the insert runs in a savepoint and a
    unique-key conflict returns the row that won.
    """
    if facts.job_id != job.id:
        raise InvalidInputError(
            f"provenance facts are for job {facts.job_id}, not {job.id}",
            "build the facts from the same job row",
        )
    existing = get_record(session, job.id)
    if existing is not None:
        return existing
    record = build_record(facts)
    row = ProvenanceRecord(job_id=job.id, record=record, sha256=record_sha256(record))
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        won = get_record(session, job.id)
        if won is None:
            raise
        return won
    logger.info("job %s: provenance recorded (%s)", job.id, row.sha256)
    return row


def _runtime_name(version: str | None) -> str | None:
    if not version:
        return None
    low = version.lower()
    return "singularity" if "singularity" in low else "apptainer" if "apptainer" in low else None


def _event_data(events: Sequence[JobEvent], kind: str) -> dict[str, Any]:
    for e in reversed(events):
        if e.kind == kind:
            return dict(e.data or {})
    return {}


def _task_argv(session: Session, job: Job, sbatch: dict[str, Any]) -> list[str]:
    """An array task's argv, rebuilt from the template its array's task 0 recorded."""
    from hpcgear.render import JobPaths, argv_from_template

    first_id, array_id = sbatch.get("argv_from"), sbatch.get("array_id")
    if not first_id or not array_id:
        return []
    for data in session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == first_id, JobEvent.kind == "sbatch")
    ):
        if (data or {}).get("array_id") == array_id and data.get("argv_template"):
            paths = JobPaths.for_job(str(data["scratch_root"]), job.id, job.attempt)
            return argv_from_template(data["argv_template"], paths.root)
    return []


def collect_run_facts(
    session: Session,
    job: Job,
    *,
    published: PublishResult | None = None,
    exit_record: ExitRecord | None = None,
    accounting: Accounting | None = None,
    script_sha256: str | None = None,
    apptainer_argv: Sequence[str] | None = None,
    slurm_version: str | None = None,
    metadata_sha256: str | None = None,
    refused_outputs: Sequence[tuple[str, str]] = (),
    log_sha256: str | None = None,
    log_size: int | None = None,
) -> RunFacts:
    """RunFacts for ``job`` from what the controller holds at the end of an attempt.

    ``script_sha256`` and ``apptainer_argv`` default to what the ``sbatch``
    event recorded; the log defaults to the ``log.stored`` event; times, node
    list and exit status come from accounting, else from the exit record.
    """
    gear = session.get(Gear, job.gear_id)
    if gear is None:
        raise NotFoundError(f"job {job.id}: gear {job.gear_id} is gone", "reinstall the gear")
    manifest = gear.manifest or {}
    events = list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id))
    )
    created = next((e for e in events if e.kind == "created"), None)
    sbatch = _event_data(events, "sbatch")
    log_event = _event_data(events, "log.stored")
    inputs = tuple(
        ProvFile(
            file_id=str(i["file_id"]),
            version=int(i["version"]),
            sha256=str(i.get("sha256") or ""),
            size=int(i.get("size") or 0),
            name=str(i.get("file_name") or ""),
            container_type=i.get("container_type"),
            container_id=i.get("container_id"),
            role=str(i.get("name") or ""),
        )
        for i in (job.inputs or [])
        if i.get("base") == "file" and i.get("file_id") and i.get("version") is not None
    ) + tuple(
        ProvFile(
            file_id=str(f["file_id"]),
            version=int(f["version"]),
            sha256=str(f.get("sha256") or ""),
            size=int(f.get("size") or 0),
            name=str(f.get("path") or ""),
            container_type=None,
            container_id=f.get("container_id"),
            role="bids-view",
        )
        for f in _event_data(events, "bids_view.staged").get("files") or []
        if f.get("file_id") and f.get("version") is not None
    )
    outputs: tuple[ProvFile, ...] = ()
    if published is not None:
        outputs = tuple(
            ProvFile(
                f.file_id, f.version, f.sha256, f.size, f.name, f.container_type, f.container_id
            )
            for f in published.files
        )
        if log_sha256 is None:
            log_sha256, log_size = published.log_sha256, published.log_size
    if log_sha256 is None and log_event.get("sha256"):
        log_sha256, log_size = str(log_event["sha256"]), int(log_event.get("size") or 0)
    array_job_id: str | None = None
    array_task: int | None = None
    if job.native_id:
        try:
            base, task = split_native_id(job.native_id)
        except ValueError:
            base, task = job.native_id, None
        if task is not None:
            array_job_id, array_task = base, task
    acct = accounting
    rec = exit_record
    argv = (
        tuple(apptainer_argv)
        if apptainer_argv is not None
        else tuple(str(a) for a in sbatch.get("argv") or _task_argv(session, job, sbatch))
    )
    return RunFacts(
        job_id=job.id,
        attempt=job.attempt,
        previous_job_id=job.previous_id,
        gear_name=gear.name,
        gear_version=gear.version,
        gear_category=gear.category,
        gear_label=manifest.get("label"),
        gear_url=manifest.get("url") or None,
        gear_source=manifest.get("source") or None,
        gear_license=manifest.get("license") or None,
        manifest_sha256=gear.manifest_sha256,
        image_ref=gear.image_ref,
        image_digest=gear.image_digest,
        config=dict(job.config or {}),
        inputs=inputs,
        outputs=outputs,
        state=job.state,
        failure_kind=job.failure_kind,
        failure_message=job.failure_message,
        site=job.site,
        started_by=job.origin_id,
        origin_type=job.origin_type,
        reason=created.message if created else None,
        destination_type=job.destination_type,
        destination_id=job.destination_id,
        analysis_id=published.analysis_id if published else None,
        script_sha256=script_sha256
        or sbatch.get("script_sha256")
        or getattr(job, "script_sha256", None),
        apptainer_argv=argv,
        runtime=_runtime_name(rec.runtime_version if rec else None),
        slurm_job_id=job.native_id,
        array_job_id=array_job_id,
        array_task_id=array_task,
        partition=(acct.partition if acct else None) or (job.resources or {}).get("partition"),
        qos=(acct.qos if acct else None) or (job.resources or {}).get("qos"),
        account=(acct.account if acct else None) or (job.resources or {}).get("account"),
        nodes=(acct.nodes if acct else None) or (rec.host if rec else None),
        scheduler_state=(acct.state.value if acct else None) or job.scheduler_state,
        submit_time=(acct.submit_time if acct else None) or getattr(job, "submitted", None),
        start_time=(acct.start_time if acct else None) or (rec.start_time if rec else None),
        end_time=(acct.end_time if acct else None) or (rec.end_time if rec else None),
        exit_code=rec.rc if rec is not None else (acct.exit_code if acct else None),
        exit_signal=rec.signal if rec else None,
        elapsed_seconds=(acct.elapsed_seconds if acct else None)
        or (rec.elapsed_s if rec else None),
        cpu_seconds=acct.total_cpu_seconds if acct else None,
        max_rss_bytes=acct.max_rss_bytes if acct else None,
        alloc_cpus=acct.alloc_cpus if acct else None,
        requested={k: v for k, v in (job.resources or {}).items() if k != "explain"},
        hpcgear_version=__version__,
        slurm_version=slurm_version,
        runtime_version=rec.runtime_version if rec else None,
        host=rec.host if rec else None,
        log_sha256=log_sha256,
        log_size=log_size,
        metadata_sha256=metadata_sha256,
        refused_outputs=tuple((str(p), str(r)) for p, r in refused_outputs),
    )
