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
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.db.models import Job
from hpcgear.db.session import Database
from hpcgear.errors import InvalidInputError
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
def job_session(ctx: ControllerContext, job_id: str) -> Iterator[tuple[Session, Job]]:
    """One transaction around one job row (committed on exit)."""
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise InvalidInputError(f"job {job_id} vanished", "it was deleted meanwhile")
        yield s, job


def fail_job(
    s: Session, job: Job, actor: str, kind: FailureKind, message: str, **fields: Any
) -> None:
    """Move ``job`` to ``failed`` with ``kind`` and a plain-words ``message``."""
    transition(
        s, job, JobState.FAILED, actor, message, failure_kind=kind, finished=utcnow(), **fields
    )


def spec_user(job: Job) -> str:
    """The account whose scratch the job uses: its requester, or ``hpcgear`` for rules."""
    return job.origin_id if job.origin_type == "user" else "hpcgear"


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)
