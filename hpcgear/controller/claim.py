"""claim: pending jobs of a site move to ``submitting`` (compare-and-set, caps, rate)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from hpcgear.db.bulk import records, shared_json
from hpcgear.db.models import Job
from hpcgear.jobs.transitions import transition_from
from hpcgear.states import JobState

from .context import ControllerContext, fault_point, utcnow
from .refuse import refuse_disabled_users
from .sites import SiteRuntime

PRIORITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
IN_FLIGHT = (JobState.SUBMITTING.value, JobState.QUEUED.value, JobState.RUNNING.value)


#: Most jobs claimed in one cycle when no cap says less: a backlog larger than
#: this is worked off over several back-to-back cycles (the daemon does not sleep
#: while work is left), which keeps one cycle's memory and transaction bounded.
CLAIM_BATCH = 20_000


#: The columns :func:`claim` reads of each pending job (what it decides on, and what
#: a ``batch`` function groups by), with its resources (:func:`shared_json`, one
#: decoder per query: each distinct document decoded once). Not the state, site or
#: creation time: the query fixes the first two and sorts by the third (no datetime
#: made of 10,000 rows).
CLAIM_COLUMNS = (
    Job.id, Job.priority, Job.origin_type, Job.origin_id, Job.project_id, Job.gear_id,
)  # fmt: skip

#: Splits the chosen rows into batches that go out as job arrays (lists of job ids,
#: in order) and the ids that go out one by one.
Batcher = Callable[[Sequence[Any]], tuple[list[list[str]], list[str]]]


@dataclass(frozen=True)
class Claim:
    """What a claim took: ``claimed`` jobs moved to ``submitting``, and ``batches``
    that go out as job arrays, left ``pending``: each array's write-ahead intent
    claims its jobs in the same compare-and-set (one write per job, not two)."""

    claimed: list[str] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)


def claim_jobs(ctx: ControllerContext, rt: SiteRuntime, *, limit: int | None = None) -> list[str]:
    """Move pending jobs of this site to ``submitting``, respecting in-flight caps
    (:func:`claim` without batches)."""
    return claim(ctx, rt, limit=limit).claimed


def claim(
    ctx: ControllerContext, rt: SiteRuntime, *, limit: int | None = None,
    batch: Batcher | None = None,
) -> Claim:
    """Choose the pending jobs of this site to submit now, respecting in-flight caps.

    Every job the caps allow is chosen (up to ``limit``, default
    :data:`CLAIM_BATCH`). ``batch`` picks those that go out as job arrays: they stay
    ``pending`` and are returned as batches. The others move to ``submitting`` in
    ONE transaction: each job still moves only if it is still ``pending`` (an
    UPDATE guarded by the state, plus its event), so a job another process moved
    is skipped, but the claim costs no commit per job.
    """
    site = rt.site
    limit = CLAIM_BATCH if limit is None else limit
    claimed: list[str] = []
    batches: list[list[str]] = []
    if ctx.fence is not None:
        ctx.fence.keep()
    with ctx.db.session() as s:
        # Core rows of only the columns the claim decides on: no ORM objects and no
        # JSON decoding of 10,000 configs here; as named tuples (records), since the
        # claim and the batching read several columns of every row.
        pending = records(
            s.execute(
                select(*CLAIM_COLUMNS, *shared_json(Job.resources))
                .where(Job.site == site.name, Job.state == JobState.PENDING.value)
                .order_by(Job.created)
                .limit(limit * 4)
            )
        )
        # Stable: the rows come oldest first, so within a priority they stay in order.
        priority = PRIORITY_ORDER.get
        pending = sorted(pending, key=lambda j: priority(j.priority, 2))
        pending = refuse_disabled_users(ctx, s, site.name, pending)  # never submit them
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
        if rt.max_job_count:
            # Every array task counts against SLURM's MaxJobCount; leave a tenth of
            # it to everyone else rather than have sbatch refuse a whole array.
            room = int(rt.max_job_count * 0.9) - sum(per_user.values())
            limit = max(0, min(limit, room))
        cap_user = site.limits.max_in_flight_per_user
        cap_project = site.limits.max_in_flight_per_project
        rate = site.limits.submit_rate_per_minute
        if cap_user is None and cap_project is None and rate is None:
            chosen = pending[:limit]  # no cap to weigh job by job
        else:
            chosen = _within_caps(
                pending, limit, recent, rate, per_user, cap_user, per_project, cap_project
            )
        singles = [j.id for j in chosen]
        if batch is not None:
            batches, singles = batch(chosen)
        # Compare-and-set on the state, in bulk: a job another process moved (a
        # cancel) since the read is skipped.
        claimed = transition_from(
            s, dict.fromkeys(singles, "claimed for submission"),
            JobState.PENDING, JobState.SUBMITTING, ctx.actor,
        )
        if claimed and ctx.fence is not None:
            # Inside the same transaction: a takeover cannot slip in before the commit.
            ctx.fence.check(s, site.name)
    if claimed:
        fault_point("claim.after")
    return Claim(claimed, batches)


def _within_caps(
    pending: Sequence[Any], limit: int, recent: int, rate: int | None,
    per_user: dict[Any, int], cap_user: int | None,
    per_project: dict[Any, int], cap_project: int | None,
) -> list[Any]:
    """The first of ``pending`` (in order) that the caps allow, up to ``limit``:
    at most ``rate`` submissions a minute (``recent`` so far), at most ``cap_user`` /
    ``cap_project`` in flight (``per_user`` / ``per_project``, counted on as chosen)."""
    chosen: list[Any] = []
    for job in pending:
        if len(chosen) >= limit:
            break
        if rate is not None and recent + len(chosen) >= rate:
            break
        if cap_user is not None and per_user.get(job.origin_id, 0) >= cap_user:
            continue
        if cap_project is not None and per_project.get(job.project_id, 0) >= cap_project:
            continue
        per_user[job.origin_id] = per_user.get(job.origin_id, 0) + 1
        per_project[job.project_id] = per_project.get(job.project_id, 0) + 1
        chosen.append(job)
    return chosen
