"""Read append-only feeds (``change_log``, ``job_events``) incrementally, exactly once.

A cursor row remembers the highest id read. Ids are handed out when a row is
inserted, but on PostgreSQL transactions commit in any order: a reader may see
id 11 while id 10 is still uncommitted. Passing 10 for good would lose it, so
every id skipped over is kept in the cursor's ``gaps`` list and looked up again
on the next read until it appears or is older than :data:`GAP_GRACE` (then
its transaction rolled back). On SQLite, writers are serialised and ids have
no gaps, so the list stays empty.

Each batch's work and the cursor move commit together, and the move is a
compare-and-set: when two evaluators race, the second one's batch is rolled
back and it stops (:class:`CursorMoved`), so nothing is processed twice.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpcgear.db.models import RuleCursor
from hpcgear.errors import HpcgearError

CHANGES = "change_log"
JOB_EVENTS = "job_events"
GAP_GRACE_SECONDS = 3600.0
#: A longer run of missing ids is a sequence jump (PostgreSQL caches ids), not transactions.
MAX_GAP_RUN = 1000
MAX_GAPS = 10_000


class CursorMoved(HpcgearError):
    """Another evaluator moved the cursor first; this batch was rolled back."""


@dataclass(slots=True)
class CursorState:
    name: str
    position: int
    gaps: list[tuple[int, float]] = field(default_factory=list)  # (id, first seen, epoch)

    @property
    def gap_ids(self) -> list[int]:
        return [g for g, _ in self.gaps]


def read_cursor(session: Session, name: str, *, lock: bool = True) -> CursorState:
    """The cursor (created at 0 when missing); ``lock`` takes the row lock on PostgreSQL."""
    row = session.get(RuleCursor, name, with_for_update=lock or None, populate_existing=True)
    if row is None:
        try:
            session.add(RuleCursor(name=name, position=0, gaps=[]))
            session.flush()
        except IntegrityError:
            raise CursorMoved(
                f"cursor {name} was created by another evaluator",
                "run again; it continues where the other stopped",
                transient=True,
            ) from None
        return CursorState(name, 0, [])
    return CursorState(name, int(row.position), [(int(g), float(t)) for g, t in (row.gaps or [])])


def advance(
    state: CursorState, ids_read: list[int], found_gaps: set[int], now: float | None = None
) -> CursorState:
    """The cursor after reading ``ids_read`` (ascending, all > position) and finding
    ``found_gaps`` (old gap ids that have now appeared)."""
    now = time.time() if now is None else now
    gaps = [(g, t) for g, t in state.gaps if g not in found_gaps and now - t < GAP_GRACE_SECONDS]
    expected = state.position + 1
    for i in ids_read:
        if i > expected and i - expected <= MAX_GAP_RUN:
            gaps.extend((g, now) for g in range(expected, i))
        expected = max(expected, i + 1)
    position = max([state.position, *ids_read])
    return CursorState(state.name, position, gaps[-MAX_GAPS:])


def save_cursor(session: Session, old: CursorState, new: CursorState) -> None:
    """Compare-and-set the cursor from ``old`` to ``new``; CursorMoved if it moved meanwhile."""
    gaps: list[list[Any]] = [[g, t] for g, t in new.gaps]
    if new.position == old.position and new.gaps == old.gaps:
        return
    res = session.execute(
        update(RuleCursor)
        .where(RuleCursor.name == old.name, RuleCursor.position == old.position)
        .values(position=new.position, gaps=gaps, updated=dt.datetime.now(dt.UTC))
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise CursorMoved(
            f"cursor {old.name} moved while this batch was evaluated",
            "another `hpcgear rules evaluate` or controller is evaluating; nothing was lost",
            transient=True,
        )
