"""What a login-node user asks about one job: estimated start, the log's tail.

These reach the job's site (locally or over SSH) through the same adapters as
the controller; a failure to reach it is reported as "unknown", never raised,
because ``job show`` must answer even when the cluster is unreachable.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.controller.logs import job_log_text
from hpcgear.controller.sites import connect_site
from hpcgear.db.models import Job
from hpcgear.errors import HpcgearError
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.scheduler.slurm_start import build_start, parse_start
from hpcgear.storage.objects import ObjectStore

__all__ = ["estimated_start", "log_tail"]

logger = logging.getLogger(__name__)


def estimated_start(settings: Settings, job: Job) -> datetime | None:
    """SLURM's estimated start of a queued job (``squeue --start``), None if unknown."""
    if not job.native_id or job.state != "queued":
        return None
    try:
        site = SiteRegistry.from_settings(settings).get(job.site)
        if site.scheduler != "slurm":
            return None
        rt = connect_site(site, settings)
        try:
            res = rt.transport.run(build_start(job.native_id), timeout=30)
        finally:
            rt.close()
    except HpcgearError as exc:
        logger.info("job %s: no start estimate: %s", job.id, exc.message)
        return None
    return parse_start(res.stdout) if res.ok else None


def log_tail(
    session: Session, store: ObjectStore, settings: Settings, job: Job, lines: int = 20
) -> list[str]:
    """The last ``lines`` lines of the job's log (empty when it cannot be read)."""
    try:
        text = job_log_text(session, store, settings, job)
    except (HpcgearError, OSError) as exc:
        msg = exc.message if isinstance(exc, HpcgearError) else str(exc)
        return [f"(log unavailable: {msg})"]
    return text.rstrip("\n").splitlines()[-lines:]
