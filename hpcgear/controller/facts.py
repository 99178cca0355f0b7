"""What an attempt left behind: its exit record, accounting, log file and scratch dir.

Read by poll (verdicts), finish (stage-out) and logs (archiving); these
helpers change no job state.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Job, JobEvent
from hpcgear.errors import HpcgearError, StagingError
from hpcgear.render import JobPaths, parse_exit_record
from hpcgear.render.exit_record import ExitRecord
from hpcgear.scheduler.base import Accounting
from hpcgear.staging.stageout import StoredOutput, fetch_file, remove_job_dir
from hpcgear.states import JobState
from hpcgear.storage.objects import ObjectStore

from .context import ControllerContext, job_session
from .sites import SiteRuntime

logger = logging.getLogger(__name__)


def read_exit_record(rt: SiteRuntime, paths: JobPaths) -> ExitRecord | None:
    try:
        if not rt.transport.exists(paths.exit_json):
            return None
        return parse_exit_record(rt.transport.read_text(paths.exit_json), source=paths.exit_json)
    except (HpcgearError, OSError) as exc:
        logger.warning("cannot read %s: %s", paths.exit_json, exc)
        return None


def exit_dict(rec: ExitRecord | None) -> dict[str, Any] | None:
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


def acct_dict(acc: Accounting | None) -> dict[str, Any] | None:
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


def log_path(rt: SiteRuntime, paths: JobPaths, native_id: str | None) -> str | None:
    """The job's SLURM output file (``slurm-<id>.out``) on scratch, if any."""
    if native_id:
        candidate = paths.log_file(native_id)
        if rt.transport.exists(candidate):
            return candidate
    try:
        names = sorted(
            n
            for n in rt.transport.listdir(paths.meta_dir)
            if n.startswith("slurm-") and n.endswith(".out")
        )
    except (HpcgearError, OSError):
        return None
    return posixpath.join(paths.meta_dir, names[-1]) if names else None


def store_log(
    rt: SiteRuntime, store: ObjectStore, paths: JobPaths, job: Job, gear_name: str
) -> StoredOutput | None:
    """Copy the attempt's SLURM log into the object store (None when there is none)."""
    path = log_path(rt, paths, job.native_id)
    if path is None:
        return None
    try:
        return fetch_file(rt.transport, store, path, name=f"{gear_name}.log")
    except StagingError as exc:
        logger.warning("job %s: could not keep the log %s: %s", job.id, path, exc.message)
        return None


def snapshot(ctx: ControllerContext, job_id: str) -> Job:
    """A detached copy of the job row as committed now."""
    with job_session(ctx, job_id) as (_s, job):
        return job


def remove_scratch(rt: SiteRuntime, paths: JobPaths, job_id: str) -> None:
    """Remove an attempt's job dir; a failure is left to ``scratch gc``."""
    try:
        remove_job_dir(rt.transport, paths)
    except (HpcgearError, OSError) as exc:
        logger.warning(
            "job %s: scratch %s not removed (scratch gc will): %s", job_id, paths.root, exc
        )


def awaiting_log_archive(s: Session, site: str) -> dict[str, str | None]:
    """Failed and cancelled attempts of ``site`` whose log is not kept yet: job id -> native id."""
    rows = s.execute(
        select(Job.id, Job.native_id).where(
            Job.site == site,
            Job.state.in_((JobState.FAILED.value, JobState.CANCELLED.value)),
            Job.native_id.is_not(None),
        )
    ).all()
    if not rows:
        return {}
    archived = set(
        s.scalars(
            select(JobEvent.job_id).where(
                JobEvent.kind == "log_archived", JobEvent.job_id.in_([r.id for r in rows])
            )
        ).all()
    )
    return {r.id: r.native_id for r in rows if r.id not in archived}
