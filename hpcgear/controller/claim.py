"""claim: pending jobs of a site move to ``submitting`` (compare-and-set, caps, rate)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from hpcgear.db.models import Job
from hpcgear.jobs.transitions import StaleJobError, transition
from hpcgear.states import JobState

from .context import ControllerContext, job_session, utcnow
from .sites import SiteRuntime

PRIORITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
IN_FLIGHT = (JobState.SUBMITTING.value, JobState.QUEUED.value, JobState.RUNNING.value)


def claim_jobs(ctx: ControllerContext, rt: SiteRuntime, *, limit: int = 50) -> list[str]:
    """Move pending jobs of this site to ``submitting``, respecting in-flight caps."""
    site = rt.site
    claimed: list[str] = []
    with ctx.db.session() as s:
        pending = s.scalars(
            select(Job)
            .where(Job.site == site.name, Job.state == JobState.PENDING.value)
            .order_by(Job.created)
            .limit(limit * 4)
        ).all()
        pending = sorted(pending, key=lambda j: (PRIORITY_ORDER.get(j.priority, 2), j.created))
        per_user = dict(
            s.execute(
                select(Job.origin_id, func.count())
                .where(Job.site == site.name, Job.state.in_(IN_FLIGHT))
                .group_by(Job.origin_id)
            ).all()
        )
        per_project = dict(
            s.execute(
                select(Job.project_id, func.count())
                .where(Job.site == site.name, Job.state.in_(IN_FLIGHT))
                .group_by(Job.project_id)
            ).all()
        )
        recent = 0
        if site.limits.submit_rate_per_minute:
            since = utcnow() - dt.timedelta(minutes=1)
            recent = (
                s.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.site == site.name, Job.submitted >= since)
                )
                or 0
            )
    cap_user = site.limits.max_in_flight_per_user
    cap_project = site.limits.max_in_flight_per_project
    rate = site.limits.submit_rate_per_minute
    for job in pending:
        if len(claimed) >= limit:
            break
        if rate is not None and recent + len(claimed) >= rate:
            break
        if cap_user is not None and per_user.get(job.origin_id, 0) >= cap_user:
            continue
        if cap_project is not None and per_project.get(job.project_id, 0) >= cap_project:
            continue
        try:
            with job_session(ctx, job.id) as (s, row):
                if row.state != JobState.PENDING.value:
                    continue
                transition(s, row, JobState.SUBMITTING, ctx.actor, "claimed for submission")
        except StaleJobError:
            continue
        per_user[job.origin_id] = per_user.get(job.origin_id, 0) + 1
        per_project[job.project_id] = per_project.get(job.project_id, 0) + 1
        claimed.append(job.id)
    return claimed
