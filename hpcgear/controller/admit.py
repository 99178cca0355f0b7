"""Admission around sbatch: live limits before it, the job's state before release.

* :func:`fits_live_limits`: a request SLURM would never start is failed as
  ``rejected`` before ``sbatch`` (live partition limits, cached per site).
* :func:`release_held`: right before ``scontrol release`` the job's state is
  read again; a job cancelled meanwhile is scancelled instead of released, and
  a release SLURM refuses (it would never start) scancels the held job and
  fails it as ``rejected`` with SLURM's reason in plain words (:func:`release`).
* :func:`release_interrupted`: ``queued`` jobs SLURM still holds with hpcgear's
  own ``--hold`` (a controller died between recording an array's SLURM ids and
  its release) are released by the poll.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select

from hpcgear.db.models import Job
from hpcgear.jobs.transitions import StaleJobError, record_events_many
from hpcgear.scheduler.base import ReleaseRefusedError, base_native_id
from hpcgear.scheduler.limits import request_misfit
from hpcgear.scheduler.slurm_tables import describe_reason
from hpcgear.spec import JobSpec, Resources
from hpcgear.states import FailureKind, JobState

from .context import ControllerContext, CycleReport, fail_job, job_session
from .sites import SiteRuntime

logger = logging.getLogger(__name__)


def fits_live_limits(
    ctx: ControllerContext, rt: SiteRuntime, spec: JobSpec, report: CycleReport,
    misfits: dict[Resources, str | None] | None = None,
) -> bool:
    """False (and the job failed as rejected) when no partition could ever run it.

    ``misfits``: answers so far by request, for many jobs checked against the same
    live partitions (an array's tasks share one request: checked once)."""
    if rt.site.scheduler != "slurm":
        return True
    if misfits is None:
        why = request_misfit(spec.resources, rt.live_partitions())
    elif spec.resources in misfits:
        why = misfits[spec.resources]
    else:
        why = misfits[spec.resources] = request_misfit(spec.resources, rt.live_partitions())
    if why is None:
        return True
    with job_session(ctx, spec.job_id) as (s, job):
        fail_job(s, job, ctx.actor, FailureKind.REJECTED, f"SLURM would never start it: {why}")
    report.failed += 1
    return False


def plain_refusal(slurm_message: str) -> str:
    """SLURM's refusal of a release, with what it means."""
    low = slurm_message.lower()
    if "partition configuration" in low:
        return (
            f"SLURM will never start it: {slurm_message} "
            f"({describe_reason('PartitionConfig').sentence})"
        )
    return f"SLURM refused to start it: {slurm_message}"


def release_held(
    ctx: ControllerContext,
    rt: SiteRuntime,
    jobs: Sequence[tuple[str, str]],
    report: CycleReport,
    *,
    release_id: str | None = None,
) -> list[str]:
    """Release held SLURM jobs ``(job id, SLURM id)``; returns the job ids released.

    ``release_id`` releases them together (an array's base id). Jobs no longer
    ``submitting`` (cancelled during sbatch) are scancelled instead. The states
    are re-checked in ONE fenced transaction, however many jobs an array holds.
    """
    live: list[tuple[str, str]] = []
    stray: list[str] = []
    if ctx.fence is not None:
        ctx.fence.keep()
    with ctx.db.session() as s:
        if ctx.fence is not None:
            ctx.fence.check(s, rt.site.name)
        ids = [j for j, _ in jobs]
        states: dict[str, str] = {}
        for start in range(0, len(ids), 5000):  # Core rows: an array may hold 1,000s
            for r in s.execute(
                select(Job.id, Job.state).where(Job.id.in_(ids[start : start + 5000]))
            ):
                states[r.id] = r.state
        events = []
        for job_id, native in jobs:
            state = states.get(job_id)
            if state == JobState.SUBMITTING.value:
                live.append((job_id, native))
                continue
            stray.append(native)
            if state is not None:
                events.append(
                    {
                        "job_id": job_id,
                        "actor": ctx.actor,
                        "kind": "scancel",
                        "message": f"scancel {native}: the job became {state} while it was "
                        "being submitted",
                    }
                )
        record_events_many(s, events)
    if stray:
        rt.backend.cancel(stray)
    if not live:
        return []
    return release(ctx, rt, live, report, release_ids=[release_id] if release_id else ())


def release(
    ctx: ControllerContext,
    rt: SiteRuntime,
    live: Sequence[tuple[str, str]],
    report: CycleReport,
    *,
    release_ids: Sequence[str] = (),
) -> list[str]:
    """``scontrol release`` of held jobs ``(job id, SLURM id)`` (together as
    ``release_ids``, the base ids of their arrays, when given: one command for several
    arrays); the job ids released. A release SLURM refuses scancels those jobs (their
    whole array) and fails them as ``rejected``."""
    targets = list(release_ids) or [n for _, n in live]
    try:
        rt.backend.release(targets)
    except ReleaseRefusedError as exc:
        refused: list[tuple[str, str, str]] = []
        for job_id, native in live:
            msg = exc.refused.get(native) or exc.refused.get(base_native_id(native))
            if msg is not None:
                refused.append((job_id, native, msg))
        if not refused:
            raise
        rt.backend.cancel(
            sorted({base_native_id(n) if release_ids else n for _, n, _ in refused})
        )
        with ctx.db.session() as s:
            rows = {
                j.id: j
                for j in s.scalars(select(Job).where(Job.id.in_([j for j, _, _ in refused])))
            }
            for job_id, native, msg in refused:
                logger.warning("job %s: SLURM refused to release %s: %s", job_id, native, msg)
                job = rows.get(job_id)
                if job is None:
                    continue
                try:
                    fail_job(s, job, ctx.actor, FailureKind.REJECTED, plain_refusal(msg))
                except StaleJobError:
                    continue
                report.failed += 1
        gone = {j for j, _, _ in refused}
        return [j for j, _ in live if j not in gone]
    return [j for j, _ in live]


#: SLURM's pending reason for a job its owner holds: hpcgear's own ``sbatch --hold``
#: (an administrator's ``scontrol hold`` shows as ``JobHeldAdmin`` and is left alone).
OWN_HOLD = "JobHeldUser"


def release_interrupted(
    ctx: ControllerContext, rt: SiteRuntime, jobs: Sequence[tuple[str, str]], report: CycleReport
) -> list[str]:
    """Release ``queued`` jobs ``(job id, SLURM id)`` still held by hpcgear's own
    ``--hold``: an array's tasks are ``queued`` with their SLURM ids before the
    release, so a controller that died in between leaves them held. The job ids
    released, each with a ``release`` event."""
    released = release(ctx, rt, jobs, report)
    natives = dict(jobs)
    with ctx.db.session() as s:
        record_events_many(
            s,
            [
                {
                    "job_id": jid,
                    "actor": ctx.actor,
                    "kind": "release",
                    "message": f"scontrol release {natives[jid]}: still held after an "
                    "interrupted submission",
                }
                for jid in released
            ],
        )
    logger.info("released %d job(s) held since an interrupted submission", len(released))
    return released
