"""The controller's steps: each one moves jobs through one state transition.

    claim ─► resolve ─► stage-in ─► render ─► submit ─► poll ─► stage-out ─► record

Every step is idempotent and commits per job, so a controller killed at any
point loses nothing and duplicates nothing when it (or another one) restarts:

* *submit* is write-ahead: an ``sbatch`` event is committed before ``sbatch
  --hold`` runs; the SLURM id is committed before ``scontrol release``. A job
  in ``submitting`` whose intent was recorded is looked up by name
  (``hpcgear-<job-id>``) before anything is submitted again.
* *poll* asks the scheduler once per cycle for all tracked jobs; a failed query
  changes no job's state. Jobs that left the queue are resolved with one
  batched accounting query, then the job's own exit record.
* *stage-out* publishes every output file in one transaction; scratch is
  removed only after that commit.

The daemon (:mod:`hpcgear.controller.loop`) and cron (``hpcgear controller
once``) only call these steps.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.config.site import SiteConfig
from hpcgear.db.models import Gear, Job, JobEvent
from hpcgear.db.session import Database
from hpcgear.errors import HpcgearError, ImageError, InvalidInputError, StagingError
from hpcgear.gears.configjson import build_config_json
from hpcgear.gears.manifest import parse_manifest
from hpcgear.gears.reserved import split_reserved
from hpcgear.jobs.retry import retry_policy
from hpcgear.jobs.service import input_spec_from_json
from hpcgear.jobs.spec import GearRef, JobSpec, Resources
from hpcgear.jobs.transitions import StaleJobError, record_event, transition, update_fields
from hpcgear.render import JobPaths, build_runtime_argv, parse_exit_record, render_sbatch
from hpcgear.render.exit_record import ExitRecord
from hpcgear.runtimes.envfile import render_gear_env
from hpcgear.scheduler.base import (
    Accounting,
    SchedulerStatus,
    SchedulerUnavailableError,
    SubmitRejectedError,
)
from hpcgear.scheduler.slurm_tables import StateCategory, describe_reason
from hpcgear.states import FailureKind, JobState, SchedulerState
from hpcgear.storage.objects import ObjectStore

from .sites import SiteRuntime

logger = logging.getLogger(__name__)

PRIORITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
IN_FLIGHT = (JobState.SUBMITTING.value, JobState.QUEUED.value, JobState.RUNNING.value)
#: How long a job may be missing from the queue, the accounting and its exit record
#: before it counts as lost (squeue drops jobs after MinJobAge; sacct can lag).
LOST_GRACE = dt.timedelta(minutes=10)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class ControllerContext:
    """What every step needs: the database, storage, settings and who acts."""

    db: Database
    store: ObjectStore
    settings: Settings
    actor: str = field(default_factory=lambda: f"controller@{socket.gethostname()}")


@dataclass
class CycleReport:
    site: str
    claimed: int = 0
    submitted: int = 0
    adopted: int = 0
    started: int = 0
    finished: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return any(
            (
                self.claimed,
                self.submitted,
                self.adopted,
                self.started,
                self.finished,
                self.completed,
                self.failed,
                self.retried,
                self.cancelled,
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "site",
                "claimed",
                "submitted",
                "adopted",
                "started",
                "finished",
                "completed",
                "failed",
                "retried",
                "cancelled",
                "errors",
            )
        }


@contextmanager
def _job_session(ctx: ControllerContext, job_id: str) -> Iterator[tuple[Session, Job]]:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise InvalidInputError(f"job {job_id} vanished", "it was deleted meanwhile")
        yield s, job


# ------------------------------------------------------------------- resolve


def resolve_spec(session: Session, job: Job, site: SiteConfig, sif_path: str) -> JobSpec:
    """Build the frozen JobSpec for one attempt from its row and its gear."""
    gear = session.get(Gear, job.gear_id)
    assert gear is not None
    manifest = parse_manifest(gear.manifest, source=f"{gear.name}@{gear.version}")
    r = job.resources or {}
    resources = Resources(
        cpus=int(r.get("cpus") or 1),
        mem_mb=int(r.get("mem_mb") or 2048),
        time_minutes=int(r.get("time_minutes") or 60),
        gpus=int(r.get("gpus") or 0),
        gres=r.get("gres"),
        nodes=int(r.get("nodes") or 1),
        ntasks=int(r.get("ntasks") or 1),
        partition=r.get("partition"),
        qos=r.get("qos"),
        account=r.get("account"),
    )
    return JobSpec(
        job_id=job.id,
        attempt=job.attempt,
        gear=GearRef(
            name=gear.name,
            version=gear.version,
            manifest_sha256=gear.manifest_sha256,
            image_ref=gear.image_ref or "",
            image_digest=gear.image_digest or "",
            sif_path=sif_path,
            command=manifest.command,
            environment=manifest.environment,
            category=gear.category,
        ),
        config=dict(job.config or {}),
        inputs=tuple(input_spec_from_json(i) for i in job.inputs or []),
        destination_type=job.destination_type,
        destination_id=job.destination_id,
        resources=resources,
        site=site.name,
        user=_spec_user(job),
        tags=tuple(job.tags or ()),
        priority=job.priority,
        writable_tmpfs=r.get("writable"),
        runtime_debug=bool(r.get("debug")),
    )


def attempt_paths(site: SiteConfig, job: Job) -> JobPaths:
    """Where this job row's attempt lives on ``site``'s scratch."""
    return JobPaths.for_job(site.render_scratch_root(_spec_user(job)), job.id, job.attempt)


def config_json_for(session: Session, job: Job, spec: JobSpec) -> dict[str, Any]:
    gear = session.get(Gear, job.gear_id)
    assert gear is not None
    manifest = parse_manifest(gear.manifest, source=f"{gear.name}@{gear.version}")
    gear_config, _ = split_reserved(spec.config, declared=manifest.config_names)
    return build_config_json(
        gear_config,
        spec.inputs,
        spec.destination_type,
        spec.destination_id,
        manifest=manifest,
        job_id=job.id,
    )


# --------------------------------------------------------------------- claim


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
            with _job_session(ctx, job.id) as (s, row):
                if row.state != JobState.PENDING.value:
                    continue
                transition(s, row, JobState.SUBMITTING, ctx.actor, "claimed for submission")
        except StaleJobError:
            continue
        per_user[job.origin_id] = per_user.get(job.origin_id, 0) + 1
        per_project[job.project_id] = per_project.get(job.project_id, 0) + 1
        claimed.append(job.id)
    return claimed


# -------------------------------------------------------------------- submit


def _fail(s: Session, job: Job, actor: str, kind: FailureKind, message: str, **fields: Any) -> None:
    transition(
        s, job, JobState.FAILED, actor, message, failure_kind=kind, finished=utcnow(), **fields
    )


def _open_intents(s: Session, job_ids: Sequence[str]) -> set[str]:
    """Jobs whose sbatch may have run: an ``sbatch`` event after the last abandonment.

    Events are append-only, so an abandoned intent is cancelled by a later
    ``sbatch_abandoned`` event, never by editing the ``sbatch`` one.
    """
    if not job_ids:
        return set()
    rows = s.execute(
        select(JobEvent.job_id, JobEvent.kind, func.max(JobEvent.id))
        .where(
            JobEvent.job_id.in_(list(job_ids)),
            JobEvent.kind.in_(("sbatch", "sbatch_abandoned")),
        )
        .group_by(JobEvent.job_id, JobEvent.kind)
    ).all()
    last: dict[str, dict[str, int]] = {}
    for job_id, kind, max_id in rows:
        last.setdefault(job_id, {})[kind] = max_id
    return {j for j, k in last.items() if k.get("sbatch", 0) > k.get("sbatch_abandoned", 0)}


def _sbatch_intent(s: Session, job: Job) -> bool:
    """Whether an sbatch for this attempt may have run (write-ahead intent recorded)."""
    return job.id in _open_intents(s, [job.id])


def _attempt(
    ctx: ControllerContext, rt: SiteRuntime, job_id: str, sif: str
) -> tuple[JobSpec, JobPaths, dict[str, Any]]:
    """The frozen spec, job directory and config.json of one attempt."""
    with _job_session(ctx, job_id) as (s, job):
        spec = resolve_spec(s, job, rt.site, sif)
        return spec, attempt_paths(rt.site, job), config_json_for(s, job, spec)


def _stage(
    ctx: ControllerContext,
    rt: SiteRuntime,
    spec: JobSpec,
    paths: JobPaths,
    config_json: dict[str, Any],
    script_text: str,
    report: CycleReport,
) -> bool:
    """Stage one attempt in; a staging failure fails the job (input_staging)."""
    from hpcgear.staging.stagein import stage_in

    try:
        stage_in(
            rt.transport,
            ctx.store,
            spec,
            paths,
            config_json=config_json,
            gear_env=render_gear_env(spec),
            script_text=script_text,
        )
    except StagingError as exc:
        with _job_session(ctx, spec.job_id) as (s, job):
            _fail(s, job, ctx.actor, FailureKind.INPUT_STAGING, exc.message)
        report.failed += 1
        return False
    return True


def submit_job(ctx: ControllerContext, rt: SiteRuntime, job_id: str, report: CycleReport) -> None:
    """One ``submitting`` job: adopt it if SLURM has it, else stage in, render, submit."""
    site, backend = rt.site, rt.backend
    with _job_session(ctx, job_id) as (s, job):
        if job.state != JobState.SUBMITTING.value:
            return
        native_id, intent = job.native_id, _sbatch_intent(s, job)
    # 1. A recorded SLURM id: only the release may be missing.
    if native_id:
        backend.release([native_id])
        with _job_session(ctx, job_id) as (s, job):
            transition(
                s,
                job,
                JobState.QUEUED,
                ctx.actor,
                f"released {native_id}",
                submitted=job.submitted or utcnow(),
            )
        report.adopted += 1
        return
    # 2. sbatch may have run before a crash or an ambiguous failure: look it up by name.
    if intent:
        found = backend.lookup_by_name(f"hpcgear-{job_id}")
        if found:
            adopted = found[0]
            with _job_session(ctx, job_id) as (s, job):
                update_fields(s, job, native_id=adopted, submitted=utcnow())
                record_event(
                    s,
                    job,
                    "adopted",
                    ctx.actor,
                    f"found SLURM job {adopted} by name after an interrupted submit",
                    data={"native_id": adopted, "all": found},
                )
            if len(found) > 1:
                logger.warning(
                    "job %s: several SLURM jobs named hpcgear-%s: %s; cancelling the extras",
                    job_id,
                    job_id,
                    found[1:],
                )
                backend.cancel(found[1:])
            backend.release([adopted])
            with _job_session(ctx, job_id) as (s, job):
                transition(s, job, JobState.QUEUED, ctx.actor, f"adopted {adopted}")
            report.adopted += 1
            return
    # 3. Stage in, render and submit.
    try:
        with _job_session(ctx, job_id) as (s, job):
            gear = s.get(Gear, job.gear_id)
            assert gear is not None
            if not gear.image_digest:
                _fail(
                    s,
                    job,
                    ctx.actor,
                    FailureKind.REJECTED,
                    f"gear {gear.name}@{gear.version} has no built image",
                )
                report.failed += 1
                return
            digest = gear.image_digest
        sif = rt.ensure_image(ctx.store, digest)
        spec, paths, config_json = _attempt(ctx, rt, job_id, sif)
        script = render_sbatch(spec, site, paths)
    except ImageError as exc:
        # The image could not be placed in the site's cache: infrastructure, retryable.
        with _job_session(ctx, job_id) as (s, job):
            _fail(s, job, ctx.actor, FailureKind.BOOT_FAILURE, f"image cache: {exc.message}")
        report.failed += 1
        return
    except HpcgearError as exc:
        with _job_session(ctx, job_id) as (s, job):
            _fail(s, job, ctx.actor, FailureKind.REJECTED, exc.message)
        report.failed += 1
        return
    if not _stage(ctx, rt, spec, paths, config_json, script.text, report):
        return
    # Write-ahead: the intent is committed before sbatch runs.
    with _job_session(ctx, job_id) as (s, job):
        update_fields(s, job, script_sha256=script.sha256)
        record_event(
            s,
            job,
            "sbatch",
            ctx.actor,
            "submitting with --hold",
            data={
                "script": paths.sbatch,
                "script_sha256": script.sha256,
                "argv": build_runtime_argv(spec, site, paths),
            },
        )
    try:
        native = backend.submit(paths.sbatch, hold=True)
    except SubmitRejectedError as exc:
        with _job_session(ctx, job_id) as (s, job):
            _fail(s, job, ctx.actor, FailureKind.REJECTED, exc.slurm_message or exc.message)
        report.failed += 1
        return
    except SchedulerUnavailableError as exc:
        # Ambiguous or not: the next cycle looks the job up by name first.
        with _job_session(ctx, job_id) as (s, job):
            record_event(
                s, job, "sbatch_error", ctx.actor, exc.message, data={"ambiguous": exc.ambiguous}
            )
        report.errors.append(f"{job_id}: {exc.message}")
        return
    with _job_session(ctx, job_id) as (s, job):
        update_fields(s, job, native_id=native, submitted=utcnow(), last_seen=utcnow())
        record_event(
            s, job, "submitted", ctx.actor, f"SLURM job {native} (held)", data={"native_id": native}
        )
    backend.release([native])
    with _job_session(ctx, job_id) as (s, job):
        transition(s, job, JobState.QUEUED, ctx.actor, f"queued as {native}")
    report.submitted += 1


# ---------------------------------------------------------------------- poll


def _read_exit_record(rt: SiteRuntime, paths: JobPaths) -> ExitRecord | None:
    try:
        if not rt.transport.exists(paths.exit_json):
            return None
        return parse_exit_record(rt.transport.read_text(paths.exit_json), source=paths.exit_json)
    except (HpcgearError, OSError) as exc:
        logger.warning("cannot read %s: %s", paths.exit_json, exc)
        return None


def _exit_dict(rec: ExitRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {
        k: getattr(rec, k)
        for k in (
            "complete",
            "rc",
            "signal",
            "timed_out",
            "started",
            "boot_failed",
            "boot_attempts",
            "error",
            "host",
            "runtime_version",
            "start_time",
            "end_time",
            "elapsed_s",
        )
    }


def _acct_dict(acc: Accounting | None) -> dict[str, Any] | None:
    if acc is None:
        return None
    out: dict[str, Any] = {}
    for k in (
        "state_text",
        "exit_code",
        "exit_signal",
        "elapsed_seconds",
        "nodes",
        "partition",
        "qos",
        "account",
        "alloc_cpus",
        "req_mem",
        "max_rss_bytes",
        "total_cpu_seconds",
        "source",
        "cancelled_by_uid",
    ):
        out[k] = getattr(acc, k)
    out["state"] = acc.state.value
    for k in ("submit_time", "start_time", "end_time"):
        v = getattr(acc, k)
        out[k] = v.isoformat() if v else None
    return out


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


def _finish(
    ctx: ControllerContext,
    rt: SiteRuntime,
    job_id: str,
    state: SchedulerState,
    acc: Accounting | None,
    report: CycleReport,
) -> None:
    with _job_session(ctx, job_id) as (s, job):
        if JobState(job.state).final or job.state == JobState.STAGING.value:
            return
        paths = attempt_paths(rt.site, job)
    rec = _read_exit_record(rt, paths)
    with _job_session(ctx, job_id) as (s, job):
        if JobState(job.state).final or job.state == JobState.STAGING.value:
            return
        verdict, kind, message = classify_end(state, rec, cancelled_by_us=False)
        info = dict(job.scheduler_info or {})
        info["accounting"] = _acct_dict(acc)
        info["exit_record"] = _exit_dict(rec)
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


def _spec_user(job: Job) -> str:
    return job.origin_id if job.origin_type == "user" else "hpcgear"


def slurm_name(job_id: str, array_id: str | None) -> str:
    """The SLURM job name hpcgear gave this job (or its array)."""
    from hpcgear.render import array_slurm_name

    return array_slurm_name(array_id) if array_id else f"hpcgear-{job_id}"


def ours(
    acct: dict[str, Accounting], native_id: str, job_id: str, array_id: str | None
) -> Accounting | None:
    """The accounting record of ``native_id`` if it is this job's.

    SLURM job ids repeat after a controller's state is reset while slurmdbd keeps
    the old records; a record under another name belongs to an older job.
    """
    acc = acct.get(native_id)
    if acc is not None and acc.name and acc.name != slurm_name(job_id, array_id):
        logger.warning(
            "job %s: sacct record %s is named %r, not ours; ignored", job_id, native_id, acc.name
        )
        return None
    return acc


def poll_jobs(ctx: ControllerContext, rt: SiteRuntime, report: CycleReport) -> None:
    """One queue query for every tracked job of the site; resolve the ones that left."""
    with ctx.db.session() as s:
        tracked = s.execute(
            select(Job.id, Job.native_id, Job.state, Job.last_seen, Job.array_id).where(
                Job.site == rt.site.name,
                Job.state.in_((JobState.QUEUED.value, JobState.RUNNING.value)),
                Job.native_id.is_not(None),
            )
        ).all()
    if not tracked:
        return
    statuses = rt.backend.poll([t.native_id for t in tracked])  # raises: nothing changes
    now = utcnow()
    gone: list[Any] = []
    ended: list[tuple[Any, SchedulerStatus]] = []
    for t in tracked:
        st = statuses.get(t.native_id)
        if st is None:
            gone.append(t)
        elif st.final:
            ended.append((t, st))
        else:
            try:
                _apply_status(ctx, rt, t.id, st, now, report)
            except StaleJobError:
                continue
    if not gone and not ended:
        return
    # One batched accounting query for every job that ended or left the queue.
    try:
        acct = rt.backend.accounting([t.native_id for t, _ in ended] + [t.native_id for t in gone])
    except HpcgearError as exc:
        if gone:
            raise  # jobs that left the queue need accounting: decide nothing this cycle
        logger.info("accounting not available yet: %s", exc.message)
        acct = {}
    for t, st in ended:
        try:
            with _job_session(ctx, t.id) as (s, job):
                update_fields(s, job, last_seen=now)
            _finish(ctx, rt, t.id, st.state, ours(acct, t.native_id, t.id, t.array_id), report)
        except StaleJobError:
            continue
    for t in gone:
        acc = ours(acct, t.native_id, t.id, t.array_id)
        try:
            if acc is not None and acc.category.final:
                _finish(ctx, rt, t.id, acc.state, acc, report)
                continue
            # No accounting (or not final yet): the job's own exit record decides.
            with _job_session(ctx, t.id) as (s, job):
                paths = attempt_paths(rt.site, job)
            rec = _read_exit_record(rt, paths)
            if rec is not None and rec.complete:
                state = SchedulerState.COMPLETED if rec.succeeded else SchedulerState.FAILED
                _finish(ctx, rt, t.id, state, acc, report)
                continue
            last = _aware(t.last_seen) or now
            if now - last > LOST_GRACE:
                with _job_session(ctx, t.id) as (s, job):
                    _fail(
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
                with _job_session(ctx, t.id) as (s, job):
                    if job.scheduler_state != "UNKNOWN":
                        update_fields(s, job, scheduler_state="UNKNOWN")
        except StaleJobError:
            continue


def _apply_status(
    ctx: ControllerContext,
    rt: SiteRuntime,
    job_id: str,
    st: SchedulerStatus,
    now: dt.datetime,
    report: CycleReport,
) -> None:
    """A job still in the queue: record its SLURM state and pending reason."""
    with _job_session(ctx, job_id) as (s, job):
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
            _fail(
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


# ------------------------------------------------------------------- cancel


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
        with _job_session(ctx, r.id) as (s, job):
            record_event(s, job, "scancel", ctx.actor, f"scancel {r.native_id}")


# ------------------------------------------------------------------- retries


def schedule_retries(ctx: ControllerContext, rt: SiteRuntime, report: CycleReport) -> None:
    """Failed jobs whose failure kind allows another attempt get one (a new row)."""
    from hpcgear.jobs.service import retry_job

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
        with _job_session(ctx, job.id) as (s, row):
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
            new = retry_job(
                s,
                _site_admin_actor(s),
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


def _site_admin_actor(s: Session) -> str:
    from hpcgear.db.models import User

    login = s.scalar(select(User.login).where(User.site_admin.is_(True)).order_by(User.created))
    if login is None:
        raise InvalidInputError("no site admin exists", "run `hpcgear init`")
    return str(login)


# ----------------------------------------------------------------- stage-out


def stage_out_jobs(ctx: ControllerContext, rt: SiteRuntime, report: CycleReport) -> None:
    """Publish outputs of jobs in ``staging``, record provenance, then clean scratch."""
    from hpcgear.controller.finish import finish_job

    with ctx.db.session() as s:
        ids = s.scalars(
            select(Job.id).where(Job.site == rt.site.name, Job.state == JobState.STAGING.value)
        ).all()
    for job_id in ids:
        try:
            ok = finish_job(ctx, rt, job_id)
        except StaleJobError:
            continue
        if ok:
            report.completed += 1
        else:
            report.failed += 1


def keep_logs_of_failed(ctx: ControllerContext, rt: SiteRuntime) -> None:
    """Failed and cancelled attempts keep their log (stored with the job), then scratch goes."""
    from hpcgear.controller.finish import archive_failed_job

    with ctx.db.session() as s:
        rows = s.scalars(
            select(Job.id).where(
                Job.site == rt.site.name,
                Job.state.in_((JobState.FAILED.value, JobState.CANCELLED.value)),
                Job.native_id.is_not(None),
            )
        ).all()
        archived = (
            set(
                s.scalars(
                    select(JobEvent.job_id).where(
                        JobEvent.kind == "log_archived", JobEvent.job_id.in_(rows)
                    )
                ).all()
            )
            if rows
            else set()
        )
    todo = [j for j in rows if j not in archived]
    if not todo:
        return
    with ctx.db.session() as s:
        natives = dict(s.execute(select(Job.id, Job.native_id).where(Job.id.in_(todo))).all())
    # One queue query for all of them (raises: nothing changes this cycle).
    statuses = rt.backend.poll([n for n in natives.values() if n])
    for job_id in todo:
        st = statuses.get(natives.get(job_id) or "")
        if st is not None and not st.final:
            continue  # still in the queue (a cancel in flight): next cycle
        archive_failed_job(ctx, rt, job_id)


# --------------------------------------------------------------------- cycle


def run_cycle(ctx: ControllerContext, rt: SiteRuntime, *, claim_limit: int = 50) -> CycleReport:
    """One pass over a site: cancel, claim + submit, poll, stage out, retry."""
    report = CycleReport(site=rt.site.name)
    steps: tuple[tuple[str, Callable[[], None]], ...] = (
        ("cancel", lambda: cancel_requested(ctx, rt, report)),
        ("submit", lambda: _submit_all(ctx, rt, report, claim_limit)),
        ("poll", lambda: poll_jobs(ctx, rt, report)),
        ("stage-out", lambda: stage_out_jobs(ctx, rt, report)),
        ("logs", lambda: keep_logs_of_failed(ctx, rt)),
        ("retry", lambda: schedule_retries(ctx, rt, report)),
    )
    for name, step in steps:
        try:
            step()
        except HpcgearError as exc:
            # A failed query or an unreachable cluster changes no job's state.
            logger.warning("site %s: %s step failed: %s", rt.site.name, name, exc.message)
            report.errors.append(f"{name}: {exc.message}")
    return report


def _submit_all(
    ctx: ControllerContext, rt: SiteRuntime, report: CycleReport, claim_limit: int
) -> None:
    claimed = claim_jobs(ctx, rt, limit=claim_limit)
    report.claimed += len(claimed)
    with ctx.db.session() as s:
        rows = s.scalars(
            select(Job)
            .where(Job.site == rt.site.name, Job.state == JobState.SUBMITTING.value)
            .order_by(Job.created)
        ).all()
        intents = _open_intents(s, [j.id for j in rows])
    # Arrays whose sbatch may have run: adopt them together, by the array's name.
    pending_arrays = sorted(
        {j.array_id for j in rows if j.array_id and not j.native_id and j.id in intents}
    )
    for array_id in pending_arrays:
        try:
            adopt_or_reset_array(ctx, rt, array_id, report)
        except HpcgearError as exc:
            report.errors.append(f"array {array_id}: {exc.message}")
    singles: list[str] = []
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in rows:
        if job.array_id and job.id in intents and not job.native_id:
            continue  # handled above
        if job.native_id or job.id in intents:
            singles.append(job.id)
            continue
        key = (
            job.gear_id,
            _spec_user(job),
            dumps({k: v for k, v in (job.resources or {}).items() if k != "explain"}),
        )
        groups.setdefault(key, []).append(job)
    for group in groups.values():
        if len(group) < 2 or rt.site.scheduler != "slurm":
            singles.extend(j.id for j in group)
            continue
        size = _array_size_limit(rt)
        for i in range(0, len(group), size):
            chunk = [j.id for j in group[i : i + size]]
            if len(chunk) == 1:
                singles.extend(chunk)
                continue
            try:
                submit_array(ctx, rt, chunk, report)
            except StaleJobError:
                continue
            except HpcgearError as exc:
                logger.warning("array of %d jobs: submit failed: %s", len(chunk), exc.message)
                report.errors.append(f"array: {exc.message}")
    for job_id in singles:
        try:
            submit_job(ctx, rt, job_id, report)
        except StaleJobError:
            continue
        except HpcgearError as exc:
            logger.warning("job %s: submit step failed: %s", job_id, exc.message)
            report.errors.append(f"{job_id}: {exc.message}")


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _array_size_limit(rt: SiteRuntime) -> int:
    """Tasks per array: the site's max_size, capped by the live MaxArraySize."""
    live = rt.max_array_size
    if live is None:
        try:
            live = rt.backend.cluster_info().max_array_size
        except HpcgearError:
            live = 1001
        rt.max_array_size = live
    configured = rt.site.array.max_size
    return max(1, min(configured, live) if configured else live)


def submit_array(
    ctx: ControllerContext, rt: SiteRuntime, job_ids: Sequence[str], report: CycleReport
) -> None:
    """Stage in every job, then submit them as ONE job array (write-ahead, held)."""
    from hpcgear.render import ArrayPaths, render_array

    site, backend = rt.site, rt.backend
    with _job_session(ctx, job_ids[0]) as (s, job):
        gear = s.get(Gear, job.gear_id)
        assert gear is not None
        digest = gear.image_digest
    if not digest:
        for jid in job_ids:
            submit_job(ctx, rt, jid, report)  # fails each with the clear message
        return
    sif = rt.ensure_image(ctx.store, digest)
    specs: list[JobSpec] = []
    all_paths: list[JobPaths] = []
    configs: list[dict[str, Any]] = []
    for jid in job_ids:
        spec, paths, cfg = _attempt(ctx, rt, jid, sif)
        specs.append(spec)
        all_paths.append(paths)
        configs.append(cfg)
    array_id = f"a{secrets.token_hex(8)}"
    apaths = ArrayPaths.for_array(site.render_scratch_root(specs[0].user), array_id)
    script = render_array(
        specs,
        site,
        array_id=array_id,
        paths=all_paths,
        array_paths=apaths,
        max_array_size=rt.max_array_size,
    )
    staged = [
        i
        for i, (spec, paths, cfg) in enumerate(zip(specs, all_paths, configs, strict=True))
        if _stage(ctx, rt, spec, paths, cfg, script.text, report)
    ]
    if len(staged) < len(specs):
        # Re-render without the jobs that could not be staged; the rest stay one array.
        specs = [specs[i] for i in staged]
        all_paths = [all_paths[i] for i in staged]
        if not specs:
            return
        script = render_array(
            specs,
            site,
            array_id=array_id,
            paths=all_paths,
            array_paths=apaths,
            max_array_size=rt.max_array_size,
        )
    rt.transport.mkdir(apaths.root)
    rt.transport.write_text(apaths.sbatch, script.text, mode=0o700)
    for index, spec in enumerate(specs):  # write-ahead intent, per task
        with _job_session(ctx, spec.job_id) as (s, job):
            update_fields(
                s,
                job,
                script_sha256=script.sha256,
                array_id=array_id,
                scheduler_info={**(job.scheduler_info or {}), "array_index": index},
            )
            record_event(
                s,
                job,
                "sbatch",
                ctx.actor,
                f"submitting as task {index} of array {array_id} with --hold",
                data={
                    "array_id": array_id,
                    "index": index,
                    "script": apaths.sbatch,
                    "script_sha256": script.sha256,
                    "argv": build_runtime_argv(spec, site, all_paths[index]),
                },
            )
    try:
        base = backend.submit(apaths.sbatch, hold=True)
    except SubmitRejectedError as exc:
        for spec in specs:
            with _job_session(ctx, spec.job_id) as (s, job):
                _fail(s, job, ctx.actor, FailureKind.REJECTED, exc.slurm_message or exc.message)
        report.failed += len(specs)
        return
    except SchedulerUnavailableError as exc:
        report.errors.append(f"array {array_id}: {exc.message}")
        return  # the next cycle looks the array up by name
    _record_array(ctx, rt, [sp.job_id for sp in specs], base, report, how="submitted")


def _record_array(
    ctx: ControllerContext,
    rt: SiteRuntime,
    job_ids: Sequence[str],
    base: str,
    report: CycleReport,
    *,
    how: str,
) -> None:
    now = utcnow()
    for jid in job_ids:
        with _job_session(ctx, jid) as (s, job):
            index = int((job.scheduler_info or {}).get("array_index", 0))
            native = f"{base}_{index}"
            update_fields(s, job, native_id=native, submitted=now, last_seen=now)
            record_event(
                s,
                job,
                how,
                ctx.actor,
                f"SLURM array task {native} (held)",
                data={"native_id": native, "array_job_id": base},
            )
    rt.backend.release([base])
    for jid in job_ids:
        with _job_session(ctx, jid) as (s, job):
            transition(s, job, JobState.QUEUED, ctx.actor, f"queued as {job.native_id}")
    if how == "adopted":
        report.adopted += len(job_ids)
    else:
        report.submitted += len(job_ids)


def adopt_or_reset_array(
    ctx: ControllerContext, rt: SiteRuntime, array_id: str, report: CycleReport
) -> None:
    """An array whose sbatch may have run: adopt it by name, or submit its jobs again."""
    from hpcgear.render import array_slurm_name

    with ctx.db.session() as s:
        job_ids = list(
            s.scalars(
                select(Job.id).where(
                    Job.array_id == array_id, Job.state == JobState.SUBMITTING.value
                )
            ).all()
        )
    if not job_ids:
        return
    found = rt.backend.lookup_by_name(array_slurm_name(array_id))
    if found:
        if len(found) > 1:
            rt.backend.cancel(found[1:])
        _record_array(ctx, rt, job_ids, found[0], report, how="adopted")
        return
    # sbatch never created it: forget the intent so the jobs are submitted afresh.
    for jid in job_ids:
        with _job_session(ctx, jid) as (s, job):
            update_fields(s, job, array_id=None)
            record_event(
                s,
                job,
                "sbatch_abandoned",
                ctx.actor,
                f"array {array_id} was never created in SLURM; resubmitting",
                data={"array_id": array_id},
            )


__all__ = [
    "ControllerContext",
    "CycleReport",
    "attempt_paths",
    "cancel_requested",
    "claim_jobs",
    "classify_end",
    "config_json_for",
    "poll_jobs",
    "resolve_spec",
    "run_cycle",
    "schedule_retries",
    "stage_out_jobs",
    "submit_job",
]
