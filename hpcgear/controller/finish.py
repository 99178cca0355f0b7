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
from collections.abc import Sequence

from sqlalchemy import select

from hpcgear.db.models import Gear, Job
from hpcgear.errors import HpcgearError, StagingError
from hpcgear.jobs.transitions import StaleJobError, record_event, transition
from hpcgear.render import JobPaths
from hpcgear.scheduler.base import Accounting
from hpcgear.staging.metadata import InvalidMetadataError, parse_metadata
from hpcgear.staging.stageout import fetch_outputs, read_metadata, scan_outputs
from hpcgear.states import FailureKind, JobState

from .context import ControllerContext, CycleReport, fault_point, job_session, utcnow
from .facts import ours, read_exit_record, remove_scratch, snapshot, store_log
from .publish import publish_outputs, record_job_log
from .record import collect_run_facts, record_provenance
from .resolve import attempt_paths
from .sites import SiteRuntime

logger = logging.getLogger(__name__)


def _accounting(rt: SiteRuntime, jobs: Sequence[Job]) -> dict[str, Accounting]:
    """Accounting of the jobs to finish: what this cycle's poll fetched, plus ONE
    batched query for the rest (jobs left in ``staging`` by an earlier cycle, when
    no job ended this cycle so the poll ran no ``sacct``)."""
    have = rt.recent_accounting
    asked = rt.recent_accounting_asked
    missing = [
        j.native_id for j in jobs if j.native_id and j.native_id not in have
        and j.native_id not in asked
    ]
    fetched: dict[str, Accounting] = {}
    if missing:
        try:
            fetched = rt.backend.accounting(missing)
        except HpcgearError as exc:
            logger.info("accounting for %d jobs unavailable: %s", len(missing), exc.message)
    return {**have, **fetched}


def stage_out_jobs(ctx: ControllerContext, rt: SiteRuntime, report: CycleReport) -> None:
    """Publish outputs of jobs in ``staging``, record provenance, then clean scratch."""
    with ctx.db.session() as s:
        jobs = s.scalars(
            select(Job).where(Job.site == rt.site.name, Job.state == JobState.STAGING.value)
        ).all()
        ids = [j.id for j in jobs]
        acct = _accounting(rt, jobs) if jobs else {}
        accounting = {
            j.id: ours(acct, j.native_id, j.id, j.array_id) if j.native_id else None for j in jobs
        }
    for job_id in ids:
        try:
            ok = finish_job(ctx, rt, job_id, accounting.get(job_id))
        except StaleJobError:
            continue
        if ok:
            report.completed += 1
        else:
            report.failed += 1


def finish_job(
    ctx: ControllerContext, rt: SiteRuntime, job_id: str, acc: Accounting | None = None
) -> bool:
    """Publish one ``staging`` job. True when it completed, False when it failed."""
    with job_session(ctx, job_id) as (s, job):
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
        log = store_log(rt, ctx.store, paths, snapshot(ctx, job_id), gear_name)
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
    fault_point("finish.fetched")
    rec = read_exit_record(rt, paths)
    try:
        with job_session(ctx, job_id) as (s, job):
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
    fault_point("finish.published")
    # Only now, after the commit, may scratch go.
    remove_scratch(rt, paths, job_id)
    return True


def _fail_staging(
    ctx: ControllerContext,
    rt: SiteRuntime,
    job_id: str,
    paths: JobPaths,
    kind: FailureKind,
    message: str,
    gear_name: str,
) -> bool:
    job = snapshot(ctx, job_id)
    log = store_log(rt, ctx.store, paths, job, gear_name)
    with job_session(ctx, job_id) as (s, row):
        if row.state != JobState.STAGING.value:
            return False
        if log is not None:
            record_job_log(s, row, ctx.actor, sha256=log.sha256, size=log.size, name=log.name)
        transition(s, row, JobState.FAILED, ctx.actor, message, failure_kind=kind)
        record_event(s, row, "log_archived", ctx.actor, "log kept; nothing published")
    return False
