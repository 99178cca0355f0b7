"""Compare-and-set job state changes with an append-only event per change.

Every change is ``UPDATE jobs SET state=new, state_seq=seq+1 ... WHERE id=? AND
state_seq=seq``: if another process moved the job first the update touches no
row and the caller learns it lost the race (``StaleJobError``), on SQLite and
PostgreSQL alike. The event row is written in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from hpcgear.db.bulk import executemany
from hpcgear.db.models import Job, JobEvent
from hpcgear.errors import WriteConflictError
from hpcgear.states import FailureKind, JobState, check_transition

logger = logging.getLogger(__name__)


class StaleJobError(WriteConflictError):
    """Another process changed the job first; reload and decide again."""


def record_event(
    session: Session,
    job: Job,
    kind: str,
    actor: str,
    message: str | None = None,
    *,
    old_state: str | None = None,
    new_state: str | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    ev = JobEvent(
        job_id=job.id,
        actor=actor,
        kind=kind,
        old_state=old_state,
        new_state=new_state,
        message=message,
        data=data or {},
    )
    session.add(ev)
    return ev


def transition(
    session: Session,
    job: Job,
    new: JobState,
    actor: str,
    message: str | None = None,
    *,
    failure_kind: FailureKind | None = None,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> Job:
    """Move ``job`` to ``new`` if nobody else moved it since it was read."""
    old = JobState(job.state)
    check_transition(old, new)
    values: dict[str, Any] = {
        "state": new.value,
        "state_seq": job.state_seq + 1,
        "modified": dt.datetime.now(dt.UTC),
        **fields,
    }
    if failure_kind is not None:
        values["failure_kind"] = failure_kind.value
        values["failure_message"] = message
    if new.final or new == JobState.STAGING:
        from hpcgear.jobs.usage_columns import usage_columns

        for key, value in usage_columns(
            values.get("scheduler_info", job.scheduler_info),
            values.get("resources", job.resources),
            submitted=values.get("submitted", job.submitted),
            started=values.get("started", job.started),
            finished=values.get("finished", job.finished),
        ).items():
            values.setdefault(key, value)
    res = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state_seq == job.state_seq)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleJobError(
            f"job {job.id} changed while it was being moved to {new.value}",
            "another controller or user acted on it; the step is retried on the next cycle",
            transient=True,
        )
    for key, value in values.items():
        # The row already holds these values: record them as loaded, not as
        # changes, so the session does not UPDATE the row a second time.
        set_committed_value(job, key, value)
    record_event(
        session,
        job,
        "state",
        actor,
        message,
        old_state=old.value,
        new_state=new.value,
        data={**(data or {}), **({"failure_kind": failure_kind.value} if failure_kind else {})},
    )
    logger.info("job %s: %s -> %s (%s)", job.id, old.value, new.value, message or "")
    return job


def update_fields(session: Session, job: Job, **fields: Any) -> Job:
    """Change non-state fields (SLURM state, pending reason) under the same CAS guard."""
    values = {"state_seq": job.state_seq + 1, "modified": dt.datetime.now(dt.UTC), **fields}
    res = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state_seq == job.state_seq)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleJobError(
            f"job {job.id} changed concurrently", "retried on the next cycle", transient=True
        )
    for key, value in values.items():
        # The row already holds these values: record them as loaded, not as
        # changes, so the session does not UPDATE the row a second time.
        set_committed_value(job, key, value)
    return job


#: Rows per ``WHERE (id, state_seq) IN (...)`` statement (SQLite allows 32,766 parameters).
CAS_CHUNK = 2000


_EVENT_INSERT = JobEvent.__table__.insert()


def record_events_many(session: Session, events: Sequence[Mapping[str, Any]]) -> None:
    """Append many JobEvent rows (dicts of its columns) in one executemany."""
    if events:
        # The Core table insert (one executemany), not the ORM's bulk-insert path,
        # which costs several times more per row for thousands of events.
        defaults = {"data": {}, "ts": dt.datetime.now(dt.UTC), "old_state": None,
                    "new_state": None, "message": None}
        executemany(session, _EVENT_INSERT, events, defaults)


def transition_from(
    session: Session,
    messages: Mapping[str, str | None],
    old: JobState,
    new: JobState,
    actor: str,
) -> list[str]:
    """Move the jobs ``messages`` names (job id -> event message) from ``old`` to ``new``;
    the ids that moved, in ``messages`` order.

    The compare-and-set is on the state itself: ONE ``UPDATE ... WHERE id IN (...) AND
    state = old RETURNING id`` per :data:`CAS_CHUNK` jobs, so a job another process
    moved meanwhile (a cancel) is left as it is. For a step that owns the jobs while
    they are in ``old`` (the lease-holding controller's ``submitting`` jobs) and need
    not read them first. One event per moved job, in one insert.
    """
    check_transition(old, new)
    ids = list(messages)
    if not ids:
        return []
    now = dt.datetime.now(dt.UTC)
    table = Job.__table__
    done: set[str] = set()
    for start in range(0, len(ids), CAS_CHUNK):
        stmt = (
            table.update()
            .where(table.c.id.in_(ids[start : start + CAS_CHUNK]), table.c.state == old.value)
            .values(state=new.value, state_seq=table.c.state_seq + 1, modified=now)
            .returning(table.c.id)
        )
        done.update(session.execute(stmt).scalars())
    moved = [j for j in ids if j in done]
    record_events_many(
        session,
        [
            {
                "job_id": jid,
                "actor": actor,
                "kind": "state",
                "old_state": old.value,
                "new_state": new.value,
                "message": messages[jid],
            }
            for jid in moved
        ],
    )
    logger.info("%d jobs -> %s", len(moved), new.value)
    return moved
