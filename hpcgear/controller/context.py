"""What every controller step shares: the context, the cycle report, per-job sessions.

The steps (:mod:`claim`, :mod:`submit`, :mod:`arrays`, :mod:`poll`, :mod:`finish`,
:mod:`retry`, :mod:`logs`, :mod:`cancel`) import this module and the helpers
below it (:mod:`resolve`, :mod:`stagein`, :mod:`facts`), never each other;
:mod:`cycle` runs them in order and :mod:`loop` runs cycles.

Every step is idempotent and commits per job, so a controller killed at any
point loses nothing and duplicates nothing when it (or another one) restarts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.db.models import Job
from hpcgear.db.session import Database
from hpcgear.errors import InvalidInputError, LeaderConflictError
from hpcgear.jobs.transitions import transition
from hpcgear.states import FailureKind, JobState
from hpcgear.storage.objects import ObjectStore

logger = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(t: dt.datetime | None) -> dt.datetime | None:
    """``t`` with a UTC timezone (SQLite hands back naive datetimes)."""
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class LeaseLostError(LeaderConflictError):
    """This controller no longer leads the job's site: its write is refused."""


class Fence(Protocol):
    """Guards every job write a step makes (see :mod:`hpcgear.controller.lease`)."""

    def keep(self) -> None:
        """Renew the leases this controller holds when they are due (own transaction)."""

    def check(self, session: Session, site: str) -> None:
        """Raise :class:`LeaseLostError` unless this controller leads ``site``.

        Called inside the job's own transaction, so a takeover cannot slip in
        between the check and the write.
        """


@dataclass
class ControllerContext:
    """What every step needs: the database, storage, settings and who acts.

    ``fence`` is set by the controller loop; without it (tools, tests) job
    writes are guarded only by each job's compare-and-set.
    """

    db: Database
    store: ObjectStore
    settings: Settings
    actor: str = field(default_factory=lambda: f"controller@{socket.gethostname()}")
    fence: Fence | None = None


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
def job_session(ctx: ControllerContext, job_id: str) -> Iterator[tuple[Session, Job]]:
    """One transaction around one job row (committed on exit), fenced by the site lease."""
    if ctx.fence is not None:
        ctx.fence.keep()
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise InvalidInputError(f"job {job_id} vanished", "it was deleted meanwhile")
        if ctx.fence is not None:
            ctx.fence.check(s, job.site)
        yield s, job


def heartbeat(ctx: ControllerContext) -> None:
    """Renew the site leases if due; call it inside long loops that write nothing."""
    if ctx.fence is not None:
        ctx.fence.keep()


def fail_job(
    s: Session, job: Job, actor: str, kind: FailureKind, message: str, **fields: Any
) -> None:
    """Move ``job`` to ``failed`` with ``kind`` and a plain-words ``message``."""
    transition(
        s, job, JobState.FAILED, actor, message, failure_kind=kind, finished=utcnow(), **fields
    )


def spec_user(job: Any) -> str:
    """The account whose scratch the job uses: its requester, or ``hpcgear`` for rules
    (``job``: an ORM ``Job`` or a Core row with ``origin_type`` and ``origin_id``)."""
    return job.origin_id if job.origin_type == "user" else "hpcgear"


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


# ------------------------------------------------------------ fault injection

#: Every named point a controller passes in a job's life, in order. Tests set
#: ``HPCGEAR_FAULT=<point>:<n>[:kill|raise|sleep<seconds>]`` to die (SIGKILL, the
#: default) or raise :class:`InjectedFault` the n-th time the point is reached, or
#: to stall there from the n-th hit on, so each step of a job's life can be
#: crashed or slowed on purpose (tests/chaos).
FAULT_POINTS = (
    "claim.after",
    "submit.staged",
    "submit.intent",
    "submit.sbatch",
    "submit.recorded",
    "submit.released",
    "array.intent",
    "array.sbatch",
    "array.recorded",
    "poll.ended",
    "finish.fetched",
    "finish.published",
    "logs.stored",
    "retry.before",
)
_fault_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised at a fault point named by ``HPCGEAR_FAULT`` (tests only)."""


def fault_point(name: str) -> None:
    """Die or raise here if ``HPCGEAR_FAULT`` names this point (a no-op otherwise)."""
    spec = os.environ.get("HPCGEAR_FAULT")
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    count, _, how = rest.partition(":")
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    nth = int(count) if count.isdigit() else 1
    if how.startswith("sleep"):  # a slow step, from the n-th hit on (two-leader tests)
        if _fault_hits[name] >= nth:
            time.sleep(float(how[5:] or 5))
        return
    if _fault_hits[name] != nth:
        return
    logger.warning("fault injection: %s at %s (hit %d)", how or "kill", name, _fault_hits[name])
    if how == "raise":
        raise InjectedFault(f"injected fault at {name}")
    os.kill(os.getpid(), signal.SIGKILL)
