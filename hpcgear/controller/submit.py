"""submit: one ``submitting`` job gets a SLURM id (write-ahead, held, recorded, released).

* the ``sbatch`` intent event is committed before ``sbatch --hold`` runs;
* the SLURM id is committed before ``scontrol release``;
* a job whose intent was recorded is looked up by name (``hpcgear-<job-id>``)
  before anything is submitted again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpcgear.db.models import Job, JobEvent
from hpcgear.errors import HpcgearError, ImageError
from hpcgear.jobs.transitions import record_event, transition, update_fields
from hpcgear.render import build_runtime_argv, render_sbatch
from hpcgear.scheduler.base import SchedulerUnavailableError, SubmitRejectedError
from hpcgear.states import FailureKind, JobState

from .admit import fits_live_limits, release_held
from .context import ControllerContext, CycleReport, fail_job, fault_point, job_session, utcnow
from .resolve import image_digest_or_fail, prepare_attempt
from .sites import SiteRuntime
from .stagein import stage_attempt

logger = logging.getLogger(__name__)


def open_intents(s: Session, job_ids: Sequence[str]) -> set[str]:
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


def sbatch_intent(s: Session, job: Job) -> bool:
    """Whether an sbatch for this attempt may have run (write-ahead intent recorded)."""
    return job.id in open_intents(s, [job.id])


def submit_job(ctx: ControllerContext, rt: SiteRuntime, job_id: str, report: CycleReport) -> None:
    """One ``submitting`` job: adopt it if SLURM has it, else stage in, render, submit."""
    site, backend = rt.site, rt.backend
    with job_session(ctx, job_id) as (s, job):
        if job.state != JobState.SUBMITTING.value:
            return
        native_id, intent = job.native_id, sbatch_intent(s, job)
    # 1. A recorded SLURM id: only the release may be missing.
    if native_id:
        if not release_held(ctx, rt, [(job_id, native_id)], report):
            return
        with job_session(ctx, job_id) as (s, job):
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
            with job_session(ctx, job_id) as (s, job):
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
            if not release_held(ctx, rt, [(job_id, adopted)], report):
                return
            with job_session(ctx, job_id) as (s, job):
                transition(s, job, JobState.QUEUED, ctx.actor, f"adopted {adopted}")
            report.adopted += 1
            return
    # 3. Stage in, render and submit.
    try:
        digest = image_digest_or_fail(ctx, job_id, report)
        if digest is None:
            return
        sif = rt.ensure_image(ctx.store, digest)
        spec, paths, config_json = prepare_attempt(ctx, rt, job_id, sif)
        script = render_sbatch(spec, site, paths)
    except ImageError as exc:
        # The image could not be placed in the site's cache: infrastructure, retryable.
        with job_session(ctx, job_id) as (s, job):
            fail_job(s, job, ctx.actor, FailureKind.BOOT_FAILURE, f"image cache: {exc.message}")
        report.failed += 1
        return
    except HpcgearError as exc:
        with job_session(ctx, job_id) as (s, job):
            fail_job(s, job, ctx.actor, FailureKind.REJECTED, exc.message)
        report.failed += 1
        return
    if not fits_live_limits(ctx, rt, spec, report):
        return
    if not stage_attempt(ctx, rt, spec, paths, config_json, script.text, report):
        return
    fault_point("submit.staged")
    # Write-ahead: the intent is committed before sbatch runs (if the job is still ours).
    with job_session(ctx, job_id) as (s, job):
        if job.state != JobState.SUBMITTING.value:
            logger.info("job %s: %s before sbatch; not submitted", job_id, job.state)
            return
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
    fault_point("submit.intent")
    try:
        native = backend.submit(paths.sbatch, hold=True)
    except SubmitRejectedError as exc:
        with job_session(ctx, job_id) as (s, job):
            fail_job(s, job, ctx.actor, FailureKind.REJECTED, exc.slurm_message or exc.message)
        report.failed += 1
        return
    except SchedulerUnavailableError as exc:
        # Ambiguous or not: the next cycle looks the job up by name first.
        with job_session(ctx, job_id) as (s, job):
            record_event(
                s, job, "sbatch_error", ctx.actor, exc.message, data={"ambiguous": exc.ambiguous}
            )
        report.errors.append(f"{job_id}: {exc.message}")
        return
    fault_point("submit.sbatch")
    with job_session(ctx, job_id) as (s, job):
        update_fields(s, job, native_id=native, submitted=utcnow(), last_seen=utcnow())
        record_event(
            s, job, "submitted", ctx.actor, f"SLURM job {native} (held)", data={"native_id": native}
        )
    fault_point("submit.recorded")
    if not release_held(ctx, rt, [(job_id, native)], report):
        return
    fault_point("submit.released")
    with job_session(ctx, job_id) as (s, job):
        transition(s, job, JobState.QUEUED, ctx.actor, f"queued as {native}")
    report.submitted += 1
