"""retry: failed attempts whose failure kind allows another get one (a new job row)."""

from __future__ import annotations

from sqlalchemy import select

from hpcgear.db.models import Gear, Job, JobEvent
from hpcgear.errors import HpcgearError
from hpcgear.jobs.retry import retry_policy
from hpcgear.jobs.service import retry_on_behalf
from hpcgear.jobs.transitions import record_event
from hpcgear.states import FailureKind, JobState

from .context import ControllerContext, CycleReport, fault_point, job_session
from .sites import SiteRuntime


def schedule_retries(ctx: ControllerContext, rt: SiteRuntime, report: CycleReport) -> None:
    """Failed jobs whose failure kind allows another attempt get one (a new row)."""
    with ctx.db.session() as s:
        failed = s.scalars(
            select(Job).where(
                Job.site == rt.site.name,
                Job.state == JobState.FAILED.value,
                Job.failure_kind.is_not(None),
            )
        ).all()
        retried = (
            set(
                s.scalars(
                    select(Job.previous_id).where(Job.previous_id.in_([j.id for j in failed]))
                ).all()
            )
            if failed
            else set()
        )
        handled = (
            set(
                s.scalars(
                    select(JobEvent.job_id).where(
                        JobEvent.kind == "retry_decision",
                        JobEvent.job_id.in_([j.id for j in failed]),
                    )
                ).all()
            )
            if failed
            else set()
        )
    for job in failed:
        if job.id in retried or job.id in handled:
            continue
        kind = FailureKind(str(job.failure_kind))
        with ctx.db.session() as s:
            gear = s.get(Gear, job.gear_id)
            manifest = dict(gear.manifest) if gear is not None else None
        try:
            policy = retry_policy(rt.site, kind, manifest)
        except HpcgearError:
            policy = rt.site.retry_policy(kind)
        with job_session(ctx, job.id) as (s, row):
            if row.attempt >= policy.max_attempts:
                record_event(
                    s,
                    row,
                    "retry_decision",
                    ctx.actor,
                    f"no retry: {kind.value} allows {policy.max_attempts} attempt(s)",
                )
                continue
            res = dict(row.resources or {})
            changes = {}
            if policy.mem_factor > 1 and res.get("mem_mb"):
                changes["mem_mb"] = int(res["mem_mb"] * policy.mem_factor)
            if policy.time_factor > 1 and res.get("time_minutes"):
                changes["time_minutes"] = int(res["time_minutes"] * policy.time_factor)
            fault_point("retry.before")
            new = retry_on_behalf(
                s,
                ctx.actor,
                row.id,
                reason=f"automatic retry after {kind.value}",
                resources=changes,
            )
            record_event(
                s,
                row,
                "retry_decision",
                ctx.actor,
                f"retried as {new.id} (attempt {new.attempt})",
                data={"retry": new.id, "changes": changes},
            )
        report.retried += 1
