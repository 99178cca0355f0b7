"""cancel: jobs a user cancelled in hpcgear after submission get their ``scancel``."""

from __future__ import annotations

from sqlalchemy import select

from hpcgear.db.models import Job, JobEvent
from hpcgear.jobs.transitions import record_event
from hpcgear.states import JobState

from .context import ControllerContext, CycleReport, job_session
from .sites import SiteRuntime


def cancel_requested(ctx: ControllerContext, rt: SiteRuntime, report: CycleReport) -> None:
    """scancel jobs a user cancelled in hpcgear after they were submitted."""
    with ctx.db.session() as s:
        rows = s.execute(
            select(Job.id, Job.native_id).where(
                Job.site == rt.site.name,
                Job.state == JobState.CANCELLED.value,
                Job.native_id.is_not(None),
            )
        ).all()
        done = (
            set(
                s.scalars(
                    select(JobEvent.job_id).where(
                        JobEvent.kind == "scancel", JobEvent.job_id.in_([r.id for r in rows])
                    )
                ).all()
            )
            if rows
            else set()
        )
    todo = [r for r in rows if r.id not in done]
    if not todo:
        return
    rt.backend.cancel([r.native_id for r in todo])
    for r in todo:
        with job_session(ctx, r.id) as (s, job):
            record_event(s, job, "scancel", ctx.actor, f"scancel {r.native_id}")
