"""poll: one queue query per cycle for every tracked job; verdicts for the ones that ended.

A failed query changes no job's state. Jobs that ended or left the queue are
resolved with one batched accounting query, then the job's own exit record; while
the accounting cannot be reached (slurmdbd down) none of them is decided.

Scheduler queries per cycle, whatever the number of tracked jobs: one ``squeue``
(it also covers the failed jobs whose logs the log step keeps) and, when jobs
ended, one ``sacct`` (it also covers the jobs stage-out finishes this cycle).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from hpcgear.db.models import Job
from hpcgear.errors import HpcgearError
from hpcgear.jobs.transitions import (
    StaleJobError,
    record_event,
    record_events_many,
    transition,
    update_fields,
)
from hpcgear.render.exit_record import ExitRecord
from hpcgear.scheduler.base import Accounting, SchedulerStatus
from hpcgear.scheduler.slurm_tables import StateCategory, describe_reason
from hpcgear.states import FailureKind, JobState, SchedulerState, check_transition

from .admit import OWN_HOLD, release_interrupted
from .context import (
    ControllerContext,
    CycleReport,
    aware,
    fail_job,
    fault_point,
    job_session,
    utcnow,
)
from .facts import acct_dict, awaiting_log_archive, exit_dict, ours, read_exit_record
from .resolve import attempt_paths
from .sites import SiteRuntime

logger = logging.getLogger(__name__)

#: How long a job may be missing from the queue, the accounting and its exit record
#: before it counts as lost (squeue drops jobs after MinJobAge; sacct can lag).
LOST_GRACE = dt.timedelta(minutes=10)
#: How long an ended job (still in the queue) waits for its ``sacct`` record.
ACCOUNTING_WAIT = dt.timedelta(seconds=60)
#: An unchanged job's ``last_seen`` is rewritten only when older than this.
LAST_SEEN_REFRESH = dt.timedelta(minutes=1)


def classify_end(
    state: SchedulerState, rec: ExitRecord | None, cancelled_by_us: bool
) -> tuple[JobState, FailureKind | None, str]:
    """hpcgear's verdict for a job SLURM reports as ended.

    Success needs both proofs: SLURM COMPLETED *and* an exit record with rc 0.
    """
    if rec is not None and rec.error and not rec.started:
        return JobState.FAILED, FailureKind.INPUT_STAGING, f"job script: {rec.error}"
    if state == SchedulerState.COMPLETED:
        if rec is None:
            return (
                JobState.FAILED,
                FailureKind.LOST,
                "SLURM says COMPLETED but the job wrote no exit record",
            )
        if rec.succeeded:
            return JobState.STAGING, None, "gear exited 0"
        if rec.boot_failed:
            return JobState.FAILED, FailureKind.BOOT_FAILURE, "the container did not start"
        if rec.timed_out:
            return JobState.FAILED, FailureKind.TIMEOUT, "stopped at the time limit"
        return JobState.FAILED, FailureKind.GEAR_ERROR, f"gear exited {rec.rc}"
    if state == SchedulerState.FAILED and rec is not None:
        if rec.timed_out:
            return JobState.FAILED, FailureKind.TIMEOUT, "stopped at the time limit"
        if rec.boot_failed:
            return JobState.FAILED, FailureKind.BOOT_FAILURE, "the container did not start"
        if rec.complete and rec.rc not in (None, 0):
            return JobState.FAILED, FailureKind.GEAR_ERROR, f"gear exited {rec.rc}"
    if state == SchedulerState.CANCELLED:
        who = "hpcgear" if cancelled_by_us else "scancel outside hpcgear"
        return JobState.CANCELLED, FailureKind.CANCELLED, f"cancelled ({who})"
    kind = {
        SchedulerState.TIMEOUT: FailureKind.TIMEOUT,
        SchedulerState.DEADLINE: FailureKind.TIMEOUT,
        SchedulerState.OUT_OF_MEMORY: FailureKind.OOM,
        SchedulerState.NODE_FAIL: FailureKind.NODE_FAILURE,
        SchedulerState.PREEMPTED: FailureKind.PREEMPTED,
        SchedulerState.BOOT_FAIL: FailureKind.BOOT_FAILURE,
        SchedulerState.REVOKED: FailureKind.LOST,
    }.get(state, FailureKind.GEAR_ERROR if rec and rec.complete else FailureKind.LOST)
    from hpcgear.scheduler.slurm_tables import describe_state

    return JobState.FAILED, kind, f"SLURM {state.value}: {describe_state(state).sentence}"


def record_end(
    ctx: ControllerContext,
    rt: SiteRuntime,
    job_id: str,
    state: SchedulerState,
    acc: Accounting | None,
    report: CycleReport,
) -> None:
    with job_session(ctx, job_id) as (s, job):
        if JobState(job.state).final or job.state == JobState.STAGING.value:
            return
        paths = attempt_paths(rt.site, job)
    rec = read_exit_record(rt, paths)
    with job_session(ctx, job_id) as (s, job):
        if JobState(job.state).final or job.state == JobState.STAGING.value:
            return
        verdict, kind, message = classify_end(state, rec, cancelled_by_us=False)
        info = dict(job.scheduler_info or {})
        info["accounting"] = acct_dict(acc)
        info["exit_record"] = exit_dict(rec)
        info["final_state"] = state.value
        fields: dict[str, Any] = {
            "scheduler_state": state.value,
            "scheduler_info": info,
            "finished": utcnow(),
            "pending_reason": None,
        }
        if acc is not None and acc.start_time and not job.started:
            fields["started"] = acc.start_time
        if verdict == JobState.STAGING:
            if job.state == JobState.QUEUED.value:
                transition(s, job, JobState.RUNNING, ctx.actor, "ran (seen after it ended)")
            transition(s, job, JobState.STAGING, ctx.actor, message, **fields)
        elif verdict == JobState.CANCELLED:
            transition(
                s,
                job,
                JobState.CANCELLED,
                ctx.actor,
                message,
                failure_kind=FailureKind.CANCELLED,
                **fields,
            )
            report.cancelled += 1
        else:
            assert kind is not None
            transition(s, job, JobState.FAILED, ctx.actor, message, failure_kind=kind, **fields)
            report.failed += 1
    report.finished += 1


def poll_jobs(ctx: ControllerContext, rt: SiteRuntime, report: CycleReport) -> None:
    """One queue query for every tracked job of the site; resolve the ones that left."""
    rt.recent_accounting = {}
    rt.recent_accounting_asked = set()
    rt.recent_statuses = {}
    rt.recent_polled = set()
    with ctx.db.session() as s:
        tracked = s.execute(
            select(
                Job.id,
                Job.native_id,
                Job.state,
                Job.last_seen,
                Job.array_id,
                Job.scheduler_state,
                Job.pending_reason,
                Job.state_seq,
            ).where(
                Job.site == rt.site.name,
                Job.state.in_((JobState.QUEUED.value, JobState.RUNNING.value)),
                Job.native_id.is_not(None),
            )
        ).all()
        awaiting_logs = awaiting_log_archive(s, rt.site.name)
    asked = [t.native_id for t in tracked] + [n for n in awaiting_logs.values() if n]
    if not asked:
        return
    statuses = rt.backend.poll(asked)  # raises: nothing changes
    rt.recent_statuses = statuses
    rt.recent_polled = set(asked)
    held = [
        (t.id, t.native_id)
        for t in tracked
        if t.state == JobState.QUEUED.value
        and (st := statuses.get(t.native_id)) is not None
        and st.reason == OWN_HOLD
    ]
    if held:
        try:
            release_interrupted(ctx, rt, held, report)
        except HpcgearError as exc:  # asked again next cycle; the poll goes on
            report.errors.append(f"release of {len(held)} held job(s): {exc.message}")
    now = utcnow()
    gone: list[Any] = []
    ended: list[tuple[Any, SchedulerStatus]] = []
    unchanged: list[str] = []
    changed: list[tuple[Any, SchedulerStatus]] = []
    for t in tracked:
        st = statuses.get(t.native_id)
        if st is None:
            gone.append(t)
        elif st.final:
            ended.append((t, st))
        elif _unchanged(t, st):
            last = aware(t.last_seen)
            if last is None or now - last > LAST_SEEN_REFRESH:
                unchanged.append(t.id)
        else:
            changed.append((t, st))
    if changed:
        record_statuses(ctx, rt, changed, now, report)
    if unchanged:
        # Nothing to tell about these jobs: one UPDATE keeps their last_seen
        # fresh (it only feeds the lost-job grace), not a transaction per job.
        with ctx.db.session() as s:
            for start in range(0, len(unchanged), 5000):
                s.execute(
                    update(Job)
                    .where(Job.id.in_(unchanged[start : start + 5000]))
                    .values(last_seen=now)
                    .execution_options(synchronize_session=False)
                )
    if not gone and not ended:
        return
    # One batched accounting query for every job that ended or left the queue, and
    # for jobs an earlier cycle left in staging (stage-out then asks nothing more).
    with ctx.db.session() as s:
        staging = s.scalars(
            select(Job.native_id).where(
                Job.site == rt.site.name,
                Job.state == JobState.STAGING.value,
                Job.native_id.is_not(None),
            )
        ).all()
    wanted = [t.native_id for t, _ in ended] + [t.native_id for t in gone] + list(staging)
    try:
        acct = rt.backend.accounting(wanted)
        answered = set(wanted)
    except HpcgearError as exc:
        if gone or exc.transient:
            # Jobs that left the queue need accounting, and an ended job recorded
            # while slurmdbd is unreachable would keep no usage figures (CPU time,
            # peak memory) for good: decide nothing this cycle, ask again next one.
            raise
        logger.info("accounting not available: %s", exc.message)
        acct, answered = {}, set()  # stage-out asks again for the jobs it finishes
    fault_point("poll.ended")
    rt.recent_accounting = dict(acct)
    rt.recent_accounting_asked = answered
    for t, st in ended:
        acc = ours(acct, t.native_id, t.id, t.array_id)
        try:
            with job_session(ctx, t.id) as (s, job):
                if acc is None and not _accounting_overdue(rt, job, now):
                    # sacct lags the queue (slurmdbd just back from an outage holds
                    # slurmctld's backlog): wait a little for the usage figures.
                    _await_accounting(s, job, now)
                    continue
                update_fields(s, job, last_seen=now)
            record_end(ctx, rt, t.id, st.state, acc, report)
        except StaleJobError:
            continue
    for t in gone:
        acc = ours(acct, t.native_id, t.id, t.array_id)
        try:
            if acc is not None and acc.category.final:
                record_end(ctx, rt, t.id, acc.state, acc, report)
                continue
            # No accounting (or not final yet): the job's own exit record decides,
            # once sacct had its chance. A job can leave the queue (MinJobAge) while
            # slurmdbd is down; back up, it still lacks slurmctld's backlog for a while,
            # and deciding now would keep no usage figures for good: it waits, as an
            # ended job still in the queue does.
            with job_session(ctx, t.id) as (s, job):
                paths = attempt_paths(rt.site, job)
                overdue = _accounting_overdue(rt, job, now)
            rec = read_exit_record(rt, paths)
            if rec is not None and rec.complete:
                if not overdue:
                    with job_session(ctx, t.id) as (s, job):
                        _await_accounting(s, job, now)
                    continue
                state = SchedulerState.COMPLETED if rec.succeeded else SchedulerState.FAILED
                record_end(ctx, rt, t.id, state, acc, report)
                continue
            last = aware(t.last_seen) or now
            if now - last > LOST_GRACE:
                with job_session(ctx, t.id) as (s, job):
                    fail_job(
                        s,
                        job,
                        ctx.actor,
                        FailureKind.LOST,
                        f"SLURM job {t.native_id} vanished: not in squeue, sacct or its "
                        "exit record for "
                        f"{int((now - last).total_seconds() // 60)} min",
                    )
                report.failed += 1
            else:
                with job_session(ctx, t.id) as (s, job):
                    if job.scheduler_state != "UNKNOWN":
                        update_fields(s, job, scheduler_state="UNKNOWN")
        except StaleJobError:
            continue


#: Rows per bulk status UPDATE (two bound parameters each: SQLite allows 32,766).
STATUS_CHUNK = 2000


def record_statuses(
    ctx: ControllerContext,
    rt: SiteRuntime,
    changed: list[tuple[Any, SchedulerStatus]],
    now: dt.datetime,
    report: CycleReport,
) -> None:
    """Record the new SLURM state/reason of many queued or running jobs at once.

    ``changed`` holds the rows read by the poll (id, state, state_seq, SLURM state,
    pending reason) with their new status. Jobs that end up with the same values
    (the first poll after an array went out: every task ``PENDING`` for the same
    reason) are written by ONE compare-and-set UPDATE per group, ``WHERE (id,
    state_seq) IN (...)``, with ``RETURNING id`` to learn which rows matched; their
    events (``pending_reason``, the ``queued -> running`` move) are appended in one
    executemany. A row someone else changed since the poll read it is reloaded and
    done job by job in a savepoint, as is a job SLURM would never start (it is
    cancelled and failed).
    """
    groups: dict[tuple[Any, ...], list[tuple[Any, SchedulerStatus]]] = {}
    alone: list[tuple[str, SchedulerStatus]] = []
    for t, st in changed:
        if st.never_starts:
            alone.append((t.id, st))
            continue
        reason = st.reason if st.category == StateCategory.WAITING else None
        starts = st.category == StateCategory.RUNNING and t.state == JobState.QUEUED.value
        key = (
            t.state,
            st.state.value if t.scheduler_state != st.state.value else None,
            reason != t.pending_reason,
            reason,
            (st.start_time or now) if starts else None,
            st.nodes if starts else None,
        )
        groups.setdefault(key, []).append((t, st))
    table = Job.__table__
    if ctx.fence is not None:
        ctx.fence.keep()
    with ctx.db.session() as s:
        if ctx.fence is not None:
            ctx.fence.check(s, rt.site.name)
        for key, members in groups.items():
            old_state, sched_state, reason_changed, reason, started, nodes = key
            values: dict[str, Any] = {
                "last_seen": now,
                "modified": now,
                "state_seq": table.c.state_seq + 1,
            }
            if sched_state is not None:
                values["scheduler_state"] = sched_state
            if reason_changed:
                values["pending_reason"] = reason
            new_state: JobState | None = None
            if started is not None:
                new_state = JobState.RUNNING
                check_transition(JobState(old_state), new_state)
                values["state"] = new_state.value
                values["started"] = started
            for start in range(0, len(members), STATUS_CHUNK):
                chunk = members[start : start + STATUS_CHUNK]
                stmt = (
                    table.update()
                    .where(
                        tuple_(table.c.id, table.c.state_seq).in_(
                            [(t.id, t.state_seq) for t, _ in chunk]
                        )
                    )
                    .values(values)
                    .returning(table.c.id)
                )
                done = set(s.execute(stmt).scalars())
                events: list[dict[str, Any]] = []
                for t, st in chunk:
                    if t.id not in done:
                        alone.append((t.id, st))  # someone else changed it: job by job
                        continue
                    if reason_changed and reason:
                        events.append(
                            {
                                "job_id": t.id,
                                "actor": ctx.actor,
                                "kind": "pending_reason",
                                "message": describe_reason(reason).sentence,
                                "data": {"reason": reason},
                            }
                        )
                    if new_state is not None:
                        events.append(
                            {
                                "job_id": t.id,
                                "actor": ctx.actor,
                                "kind": "state",
                                "old_state": old_state,
                                "new_state": new_state.value,
                                "message": f"running on {nodes or '?'}",
                                "data": {"nodes": nodes},
                            }
                        )
                record_events_many(s, events)
                if new_state is not None:
                    report.started += len(done)
                    logger.info("%d jobs: %s -> %s", len(done), old_state, new_state.value)
    for job_id, st in alone:
        try:
            with job_session(ctx, job_id) as (s, job):
                if job.state not in (JobState.QUEUED.value, JobState.RUNNING.value):
                    continue  # moved on meanwhile (finished, cancelled): not ours to touch
                apply_status_in(s, ctx, rt, job, st, now, report)
        except StaleJobError:
            continue


def _await_accounting(s: Session, job: Job, now: dt.datetime) -> None:
    """An ended job whose accounting ``sacct`` does not have yet waits for it (the
    wait starts the first time: :func:`_accounting_overdue`)."""
    info = dict(job.scheduler_info or {})
    info.setdefault("ended_seen", now.isoformat())
    update_fields(s, job, last_seen=now, scheduler_info=info)


def _accounting_overdue(rt: SiteRuntime, job: Job, now: dt.datetime) -> bool:
    """Whether an ended job still without accounting has waited :data:`ACCOUNTING_WAIT`
    (then it is decided without: its exit record is the second proof)."""
    if rt.site.scheduler != "slurm":
        return True
    seen = (job.scheduler_info or {}).get("ended_seen")
    try:
        first = aware(dt.datetime.fromisoformat(seen)) if isinstance(seen, str) else None
    except ValueError:
        first = None
    return first is not None and now - first >= ACCOUNTING_WAIT


def _unchanged(t: Any, st: SchedulerStatus) -> bool:
    """A queued/running job whose SLURM state and reason are what the row already says."""
    if st.never_starts or t.scheduler_state != st.state.value:
        return False
    if st.category == StateCategory.RUNNING and t.state == JobState.QUEUED.value:
        return False
    reason = st.reason if st.category == StateCategory.WAITING else None
    return bool(reason == t.pending_reason)


def apply_status(
    ctx: ControllerContext,
    rt: SiteRuntime,
    job_id: str,
    st: SchedulerStatus,
    now: dt.datetime,
    report: CycleReport,
) -> None:
    """A job still in the queue: record its SLURM state and pending reason."""
    with job_session(ctx, job_id) as (s, job):
        apply_status_in(s, ctx, rt, job, st, now, report)


def apply_status_in(
    s: Session,
    ctx: ControllerContext,
    rt: SiteRuntime,
    job: Job,
    st: SchedulerStatus,
    now: dt.datetime,
    report: CycleReport,
) -> None:
    """``apply_status`` inside the caller's transaction."""
    job_id = job.id
    fields: dict[str, Any] = {"last_seen": now}
    if job.scheduler_state != st.state.value:
        fields["scheduler_state"] = st.state.value
    reason = st.reason if st.category == StateCategory.WAITING else None
    if reason != job.pending_reason:
        fields["pending_reason"] = reason
        if reason:
            record_event(
                s,
                job,
                "pending_reason",
                ctx.actor,
                describe_reason(reason).sentence,
                data={"reason": reason},
            )
    if st.never_starts:
        update_fields(s, job, **fields)
        report.errors.append(f"{job_id}: never starts ({reason})")
        info = describe_reason(reason)
        rt.backend.cancel([st.native_id])
        fail_job(
            s,
            job,
            ctx.actor,
            FailureKind.REJECTED,
            f"SLURM would never start it: {reason}: {info.sentence}",
        )
        report.failed += 1
        return
    if st.category == StateCategory.RUNNING and job.state == JobState.QUEUED.value:
        fields["started"] = st.start_time or now
        transition(
            s,
            job,
            JobState.RUNNING,
            ctx.actor,
            f"running on {st.nodes or '?'}",
            data={"nodes": st.nodes},
            **fields,
        )
        report.started += 1
    else:
        update_fields(s, job, **fields)
