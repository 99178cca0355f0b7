"""One pass over a site: cancel, claim + submit, poll, stage out, keep logs, retry.

The daemon and cron call :func:`run_cycle`; it only calls the step modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any

from sqlalchemy import select

from hpcgear.db.bulk import ByIdentity, shared_json
from hpcgear.db.models import Job
from hpcgear.errors import HpcgearError
from hpcgear.jobs.transitions import StaleJobError
from hpcgear.states import JobState

from .arrays import (
    ArraySender,
    HeldArray,
    adopt_or_reset_array,
    array_size_limit,
    prepared_arrays,
    release_arrays,
)
from .cancel import cancel_requested
from .claim import claim
from .context import ControllerContext, CycleReport, LeaseLostError, dumps, spec_user
from .finish import stage_out_jobs
from .logs import keep_logs_of_failed
from .poll import poll_jobs
from .retry import schedule_retries
from .sites import SiteRuntime
from .submit import open_intents, submit_job

logger = logging.getLogger(__name__)


def run_cycle(
    ctx: ControllerContext, rt: SiteRuntime, *, claim_limit: int | None = None
) -> CycleReport:
    """One pass over a site: cancel, claim + submit, poll, stage out, retry."""
    report = CycleReport(site=rt.site.name)
    steps: tuple[tuple[str, Callable[[], None]], ...] = (
        ("cancel", lambda: cancel_requested(ctx, rt, report)),
        ("submit", lambda: submit_pending(ctx, rt, report, claim_limit)),
        ("poll", lambda: poll_jobs(ctx, rt, report)),
        ("stage-out", lambda: stage_out_jobs(ctx, rt, report)),
        ("logs", lambda: keep_logs_of_failed(ctx, rt)),
        ("retry", lambda: schedule_retries(ctx, rt, report)),
    )
    for name, step in steps:
        try:
            step()
        except LeaseLostError as exc:
            # Another controller took the site over: stop here, it carries on.
            logger.warning("site %s: %s step stopped: %s", rt.site.name, name, exc.message)
            report.errors.append(f"{name}: {exc.message}")
            break
        except HpcgearError as exc:
            # A failed query or an unreachable cluster changes no job's state. The
            # report's errors are what the daemon and cron print (once per cycle).
            what = f"{name} step failed: {exc.message}"
            if exc.transient:
                what += " (transient: retried next cycle; no job is decided without an answer)"
            logger.debug("site %s: %s", rt.site.name, what)
            report.errors.append(what)
    return report


def submit_pending(
    ctx: ControllerContext, rt: SiteRuntime, report: CycleReport, claim_limit: int | None
) -> None:
    """Claim pending jobs and submit them: similar ones as job arrays (claimed by
    their array's intent), the others one by one; adopt arrays a crash left."""
    if rt.site.scheduler == "slurm":
        array_size_limit(rt)  # reads MaxArraySize and MaxJobCount once per connection
    taken = claim(ctx, rt, limit=claim_limit, batch=lambda rows: _batches(rt, rows))
    # An array's jobs count as claimed when its intent claims them (send_array): a
    # batch that cannot go out this cycle stays pending and is no progress.
    report.claimed += len(taken.claimed)
    with ctx.db.session() as s:
        rows = s.execute(
            select(
                Job.id, Job.array_id, Job.native_id, Job.gear_id, Job.origin_type,
                Job.origin_id, *shared_json(Job.resources), Job.created,
            )
            .where(Job.site == rt.site.name, Job.state == JobState.SUBMITTING.value)
            .order_by(Job.created)
        ).all()
        intents = open_intents(s, [j.id for j in rows])
    # Arrays whose sbatch may have run: adopt them together, by the array's name.
    pending_arrays = sorted(
        {j.array_id for j in rows if j.array_id and not j.native_id and j.id in intents}
    )
    for array_id in pending_arrays:
        try:
            adopt_or_reset_array(ctx, rt, array_id, report)
        except LeaseLostError:
            raise
        except HpcgearError as exc:
            report.errors.append(f"array {array_id}: {exc.message}")
    singles: list[str] = []
    fresh: list[Any] = []  # submitting, no intent: claimed one by one, or left by an error
    for job in rows:
        if job.array_id and job.id in intents and not job.native_id:
            continue  # handled above
        if job.native_id or job.id in intents:
            singles.append(job.id)
        else:
            fresh.append(job)
    batches, more = _batches(rt, fresh)
    singles.extend(more)
    # Arrays are prepared ahead (in a helper process where it pays) while the ones
    # before them are sent; once all are sent, ONE scontrol releases them.
    # Each array's sbatch overlaps the next one's intent and the last one's record.
    held: list[HeldArray] = []
    sender = ArraySender(ctx, rt, report, held)
    try:
        with closing(prepared_arrays(ctx, rt, [*taken.batches, *batches], report)) as arrays:
            for chunk, prepared in arrays:
                with _array_errors(report, f"array of {len(chunk)} jobs"):
                    ready = prepared()
                    if ready is not None:
                        sender.send(ready)
        with _array_errors(report, "array"):
            sender.finish()
    finally:
        sender.close()  # an sbatch still running is waited for
    # Left held should this raise (a lost lease): the poll releases them.
    release_arrays(ctx, rt, held, report)
    for job_id in singles:
        try:
            submit_job(ctx, rt, job_id, report)
        except StaleJobError:
            continue
        except LeaseLostError:
            raise
        except HpcgearError as exc:
            logger.warning("job %s: submit step failed: %s", job_id, exc.message)
            report.errors.append(f"{job_id}: {exc.message}")


@contextmanager
def _array_errors(report: CycleReport, what: str) -> Iterator[None]:
    """An array that cannot go out this cycle (a job changed meanwhile, SLURM or the
    database failed) is logged and reported; the other arrays go on. A lost lease stops
    the step."""
    try:
        yield
    except StaleJobError:
        pass  # retried next cycle
    except LeaseLostError:
        raise
    except HpcgearError as exc:
        logger.warning("%s: submit failed: %s", what, exc.message)
        report.errors.append(f"array: {exc.message}")


def _batches(rt: SiteRuntime, rows: Sequence[Any]) -> tuple[list[list[str]], list[str]]:
    """Rows (with ``gear_id``, ``origin_type``, ``origin_id`` and shared ``resources``)
    split into job arrays of the same gear, scratch user and resources (at most the
    site's array size each; on SLURM only) and the ids that go out one by one."""
    if rt.site.scheduler != "slurm":
        return [], [j.id for j in rows]
    groups: dict[tuple[Any, ...], list[str]] = {}
    # Jobs of a batch share their resources document (shared_json): keyed once each,
    # and each job's group found by what it is made of (the rows, and so the
    # documents whose ids are used, stay alive meanwhile).
    resource_keys = ByIdentity()
    keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for job in rows:
        parts = (job.gear_id, job.origin_type, job.origin_id, id(job.resources))
        key = keys.get(parts)
        if key is None:
            resources = resource_keys.get(
                job.resources,
                lambda r: dumps({k: v for k, v in (r or {}).items() if k != "explain"}),
            )
            key = keys[parts] = (job.gear_id, spec_user(job), resources)
        groups.setdefault(key, []).append(job.id)
    batches: list[list[str]] = []
    singles: list[str] = []
    size = array_size_limit(rt)
    for group in groups.values():
        for i in range(0, len(group), size):
            chunk = group[i : i + size]
            if len(chunk) < 2:
                singles.extend(chunk)
            else:
                batches.append(chunk)
    return batches, singles
