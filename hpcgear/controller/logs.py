"""logs: failed and cancelled attempts keep their SLURM log with the job, then scratch goes.

Also reads a job's log for ``hpcgear job logs``: from storage once kept, else
live from scratch.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.db.models import Gear, Job, JobEvent
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.jobs.transitions import record_event
from hpcgear.staging.stageout import read_text_file
from hpcgear.states import JobState
from hpcgear.storage.objects import ObjectStore

from .context import ControllerContext, fault_point, job_session
from .facts import awaiting_log_archive, log_path, remove_scratch, snapshot, store_log
from .publish import record_job_log
from .resolve import attempt_paths
from .sites import SiteRuntime, connect_site


def keep_logs_of_failed(ctx: ControllerContext, rt: SiteRuntime) -> None:
    """Failed and cancelled attempts keep their log (stored with the job), then scratch goes."""
    with ctx.db.session() as s:
        natives = awaiting_log_archive(s, rt.site.name)
    if not natives:
        return
    # This cycle's poll asked the queue about these jobs (its one squeue covers
    # them); only ones it did not ask about need a query (raises: nothing changes).
    statuses = rt.recent_statuses
    unasked = [n for n in natives.values() if n and n not in rt.recent_polled]
    if unasked:
        statuses = {**statuses, **rt.backend.poll(unasked)}
    for job_id, native in natives.items():
        st = statuses.get(native or "")
        if st is not None and not st.final:
            continue  # still in the queue (a cancel in flight): next cycle
        archive_failed_job(ctx, rt, job_id)


def archive_failed_job(ctx: ControllerContext, rt: SiteRuntime, job_id: str) -> None:
    """Keep a failed/cancelled attempt's log with the job; then remove its scratch dir.

    The caller has checked (with one queue query for all such jobs) that SLURM no
    longer runs it.
    """
    with job_session(ctx, job_id) as (s, job):
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
    job = snapshot(ctx, job_id)
    log = store_log(rt, ctx.store, paths, job, gear_name)
    with job_session(ctx, job_id) as (s, row):
        if log is not None:
            record_job_log(s, row, ctx.actor, sha256=log.sha256, size=log.size, name=log.name)
        record_event(s, row, "log_archived", ctx.actor, "log kept" if log else "no log was written")
    fault_point("logs.stored")
    remove_scratch(rt, paths, job_id)


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
