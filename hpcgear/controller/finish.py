"""The end of an attempt: stage out, publish, record provenance, clean scratch.

Order matters for crash safety: outputs are copied into the content-addressed
store (verified against the hash taken on scratch), then ONE transaction adds
every file row, applies the gear's ``.metadata.json``, stores the provenance
record and moves the job to ``complete``. Scratch is removed only after that
commit. A kill anywhere leaves either nothing published (rerun publishes
everything once) or everything published (rerun finds the job complete).
"""

from __future__ import annotations

import logging
import posixpath

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.controller.publish import publish_outputs, record_job_log
from hpcgear.controller.record import collect_run_facts, record_provenance
from hpcgear.controller.sites import SiteRuntime, connect_site
from hpcgear.controller.steps import (
    ControllerContext,
    _job_session,
    _read_exit_record,
    attempt_paths,
    ours,
    utcnow,
)
from hpcgear.db.models import Gear, Job, JobEvent
from hpcgear.errors import HpcgearError, StagingError
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.jobs.transitions import record_event, transition
from hpcgear.render import JobPaths
from hpcgear.scheduler.base import Accounting
from hpcgear.staging.metadata import InvalidMetadataError, parse_metadata
from hpcgear.staging.stageout import (
    StoredOutput,
    fetch_file,
    fetch_outputs,
    read_metadata,
    read_text_file,
    remove_job_dir,
    scan_outputs,
)
from hpcgear.states import FailureKind, JobState
from hpcgear.storage.objects import ObjectStore

logger = logging.getLogger(__name__)


def log_path(rt: SiteRuntime, paths: JobPaths, native_id: str | None) -> str | None:
    """The job's SLURM output file (``slurm-<id>.out``) on scratch, if any."""
    if native_id:
        candidate = paths.log_file(native_id)
        if rt.transport.exists(candidate):
            return candidate
    try:
        names = sorted(
            n
            for n in rt.transport.listdir(paths.meta_dir)
            if n.startswith("slurm-") and n.endswith(".out")
        )
    except (HpcgearError, OSError):
        return None
    return posixpath.join(paths.meta_dir, names[-1]) if names else None


def _store_log(
    rt: SiteRuntime, store: ObjectStore, paths: JobPaths, job: Job, gear_name: str
) -> StoredOutput | None:
    path = log_path(rt, paths, job.native_id)
    if path is None:
        return None
    try:
        return fetch_file(rt.transport, store, path, name=f"{gear_name}.log")
    except StagingError as exc:
        logger.warning("job %s: could not keep the log %s: %s", job.id, path, exc.message)
        return None


def _accounting(rt: SiteRuntime, job: Job) -> Accounting | None:
    if not job.native_id:
        return None
    try:
        return ours(rt.backend.accounting([job.native_id]), job.native_id, job.id, job.array_id)
    except HpcgearError as exc:
        logger.info("accounting for %s unavailable: %s", job.native_id, exc.message)
        return None


def finish_job(ctx: ControllerContext, rt: SiteRuntime, job_id: str) -> bool:
    """Publish one ``staging`` job. True when it completed, False when it failed."""
    with _job_session(ctx, job_id) as (s, job):
        if job.state != JobState.STAGING.value:
            return job.state == JobState.COMPLETE.value
        gear = s.get(Gear, job.gear_id)
        assert gear is not None
        gear_name, analysis = gear.name, gear.category == "analysis"
        paths = attempt_paths(rt.site, job)
        dest_type = job.destination_type
    log = None
    try:
        scan = scan_outputs(rt.transport, paths)
        meta_text = read_metadata(rt.transport, scan)
        plan = (
            parse_metadata(
                meta_text,
                destination_type=dest_type,
                analysis=analysis,
                output_names=scan.output_names,
            )
            if meta_text
            else None
        )
        outputs = fetch_outputs(rt.transport, ctx.store, scan)
        log = _store_log(rt, ctx.store, paths, _snapshot(ctx, job_id), gear_name)
    except InvalidMetadataError as exc:
        return _fail_staging(
            ctx,
            rt,
            job_id,
            paths,
            FailureKind.INVALID_METADATA,
            f"invalid .metadata.json: {exc.message}",
            gear_name,
        )
    except StagingError as exc:
        return _fail_staging(
            ctx, rt, job_id, paths, FailureKind.OUTPUT_STAGING, exc.message, gear_name
        )
    rec = _read_exit_record(rt, paths)
    acc = _accounting(rt, _snapshot(ctx, job_id))
    try:
        with _job_session(ctx, job_id) as (s, job):
            if job.state != JobState.STAGING.value:
                return job.state == JobState.COMPLETE.value
            gear = s.get(Gear, job.gear_id)
            assert gear is not None
            result = publish_outputs(
                s,
                job=job,
                gear=gear,
                outputs=outputs,
                plan=plan,
                log_digest=log.sha256 if log else None,
                log_size=log.size if log else None,
                actor=ctx.actor,
            )
            for r in scan.refused:
                record_event(
                    s,
                    job,
                    "output_refused",
                    ctx.actor,
                    f"{r.relpath}: {r.reason}",
                    data={"path": r.relpath},
                )
            transition(
                s,
                job,
                JobState.COMPLETE,
                ctx.actor,
                f"published {len(result.files)} file(s) "
                f"({result.new_versions} new version(s)) to {result.container_type} "
                f"{result.container_id}",
                data={"container_id": result.container_id, "analysis_id": result.analysis_id},
                finished=job.finished or utcnow(),
            )
            # The record is written in the same transaction, after the job is complete.
            facts = collect_run_facts(
                s,
                job,
                published=result,
                exit_record=rec,
                accounting=acc,
                metadata_sha256=plan.sha256 if plan is not None else None,
                refused_outputs=[(r.relpath, r.reason) for r in scan.refused],
                log_sha256=log.sha256 if log else None,
                log_size=log.size if log else None,
            )
            record_provenance(s, job, facts)
    except InvalidMetadataError as exc:
        return _fail_staging(
            ctx,
            rt,
            job_id,
            paths,
            FailureKind.INVALID_METADATA,
            f"invalid .metadata.json: {exc.message}",
            gear_name,
        )
    # Only now, after the commit, may scratch go.
    _remove(rt, paths, job_id)
    return True


def _snapshot(ctx: ControllerContext, job_id: str) -> Job:
    with _job_session(ctx, job_id) as (_s, job):
        return job


def _remove(rt: SiteRuntime, paths: JobPaths, job_id: str) -> None:
    try:
        remove_job_dir(rt.transport, paths)
    except (HpcgearError, OSError) as exc:
        logger.warning(
            "job %s: scratch %s not removed (scratch gc will): %s", job_id, paths.root, exc
        )


def _fail_staging(
    ctx: ControllerContext,
    rt: SiteRuntime,
    job_id: str,
    paths: JobPaths,
    kind: FailureKind,
    message: str,
    gear_name: str,
) -> bool:
    job = _snapshot(ctx, job_id)
    log = _store_log(rt, ctx.store, paths, job, gear_name)
    with _job_session(ctx, job_id) as (s, row):
        if row.state != JobState.STAGING.value:
            return False
        if log is not None:
            record_job_log(s, row, ctx.actor, sha256=log.sha256, size=log.size, name=log.name)
        transition(s, row, JobState.FAILED, ctx.actor, message, failure_kind=kind)
        record_event(s, row, "log_archived", ctx.actor, "log kept; nothing published")
    return False


def archive_failed_job(ctx: ControllerContext, rt: SiteRuntime, job_id: str) -> None:
    """Keep a failed/cancelled attempt's log with the job; then remove its scratch dir.

    The caller has checked (with one queue query for all such jobs) that SLURM no
    longer runs it.
    """
    with _job_session(ctx, job_id) as (s, job):
        gear = s.get(Gear, job.gear_id)
        gear_name = gear.name if gear else "gear"
        paths = attempt_paths(rt.site, job)
        snapshot_native = job.native_id
        if job.state == JobState.CANCELLED.value and snapshot_native:
            # wait until our scancel went out and SLURM let go of the job
            done = s.scalar(
                select(JobEvent.id)
                .where(JobEvent.job_id == job.id, JobEvent.kind == "scancel")
                .limit(1)
            )
            if done is None and (job.finished is None):
                return
    job = _snapshot(ctx, job_id)
    log = _store_log(rt, ctx.store, paths, job, gear_name)
    with _job_session(ctx, job_id) as (s, row):
        if log is not None:
            record_job_log(s, row, ctx.actor, sha256=log.sha256, size=log.size, name=log.name)
        record_event(s, row, "log_archived", ctx.actor, "log kept" if log else "no log was written")
    _remove(rt, paths, job_id)


def job_log_text(session: Session, store: ObjectStore, settings: Settings, job: Job) -> str:
    """The job's log: from storage once kept, else live from scratch through the transport."""
    stored = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.kind == "log.stored")
        .order_by(JobEvent.id)
    ).all()
    if stored:
        digest = (stored[-1].data or {}).get("sha256")
        if digest:
            with store.open(str(digest)) as fh:
                return fh.read().decode("utf-8", "replace")
    if not job.native_id:
        return f"(job {job.id} has not started; state {job.state})\n"
    site = SiteRegistry.from_settings(settings).get(job.site)
    rt = connect_site(site, settings)
    try:
        paths = attempt_paths(site, job)
        path = log_path(rt, paths, job.native_id)
        text = read_text_file(rt.transport, path) if path else None
    finally:
        rt.close()
    if text is None:
        return f"(no log yet for job {job.id}; SLURM {job.native_id})\n"
    return text
