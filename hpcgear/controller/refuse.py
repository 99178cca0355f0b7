"""refuse: pending jobs of a disabled user are failed before the claim, never submitted.

A user disabled after queueing work (``hpcgear user disable NAME``) could otherwise
still have those jobs run on the cluster. The claim step hands its pending jobs
through :func:`refuse_disabled_users`: a user-requested job whose requester is
disabled fails as ``rejected`` with a message naming the reason and the fix;
jobs of rules and of enabled users pass on unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Job, User
from hpcgear.jobs.transitions import StaleJobError
from hpcgear.states import FailureKind

from .context import ControllerContext, fail_job

logger = logging.getLogger(__name__)


def disabled_message(login: str) -> str:
    """Why a disabled user's job was refused, and what to do about it."""
    return (
        f"not submitted: its requester {login!r} is disabled in this hpcgear instance; "
        f"a site admin can run `hpcgear user enable {login}`, then `hpcgear job retry` it"
    )


def refuse_disabled_users(
    ctx: ControllerContext, s: Session, site: str, jobs: Sequence[Any]
) -> list[Any]:
    """``jobs`` (ORM ``Job`` rows or Core rows with ``id``, ``origin_type`` and
    ``origin_id``) without those of disabled requesters, which are failed as ``rejected``.

    Runs inside the claim's transaction (one query for the requesters); a job
    another process moved meanwhile is left alone.
    """
    logins = {j.origin_id for j in jobs if j.origin_type == "user"}
    if not logins:
        return list(jobs)
    disabled = set(
        s.scalars(select(User.login).where(User.login.in_(logins), User.disabled.is_(True)))
    )
    if not disabled:
        return list(jobs)
    keep: list[Any] = []
    refused = 0
    for job in jobs:
        if job.origin_type == "user" and job.origin_id in disabled:
            row = job if isinstance(job, Job) else s.get(Job, job.id)
            try:
                if row is None:
                    raise StaleJobError(f"job {job.id} vanished", "")
                fail_job(s, row, ctx.actor, FailureKind.REJECTED, disabled_message(job.origin_id))
            except StaleJobError:
                continue
            refused += 1
            continue
        keep.append(job)
    if refused:
        if ctx.fence is not None:
            ctx.fence.check(s, site)  # a stale leader's refusals roll back with the claim
        logger.warning("site %s: %d pending job(s) of disabled user(s) %s failed as rejected",
                       site, refused, ", ".join(sorted(disabled)))
    return keep
