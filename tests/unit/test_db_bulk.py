"""db.bulk: the driver-level executemany stores exactly what SQLAlchemy's own path
stores, and shared_json decodes each distinct document once (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from sqlalchemy import bindparam, event, false, select

from hpcgear.db import bulk
from hpcgear.db.session import Database
from hpcgear.db.tables import controller_status, users

STATUS_INSERT = controller_status.insert()  # JSON and timestamps, no foreign keys


def _rows(prefix: str, now: dt.datetime) -> list[dict[str, Any]]:
    shared: dict[str, Any] = {"same": ["for", "all"], "n": 1}
    return [
        {
            "site": f"{prefix}{i}",
            "holder": f"it's \"quoted\" ; {i}\n",
            "last_cycle": now,
            "last_clean_cycle": None if i % 2 else now - dt.timedelta(seconds=i),
            "cycles": i,
            "last_report": shared if i % 3 else {"own": i, "text": "é ✓"},
            "recent_errors": [],
        }
        for i in range(7)
    ]


def _stored(db: Database, prefix: str) -> list[tuple[Any, ...]]:
    c = controller_status.c
    with db.session() as s:
        rows = s.execute(
            select(c.site, c.holder, c.last_cycle, c.last_clean_cycle, c.cycles,
                   c.last_report, c.recent_errors)
            .where(c.site.like(f"{prefix}%"))
            .order_by(c.site)
        ).all()
    return [(r[0].removeprefix(prefix), *r[1:]) for r in rows]


@contextlib.contextmanager
def _paths(db: Database) -> Iterator[list[str]]:
    """Which path each executemany took: "driver" (db.bulk's) or "sqlalchemy"."""
    taken: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
             many: bool) -> None:
        if many:
            taken.append("sqlalchemy" if context.compiled is not None else "driver")

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        yield taken
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)


def test_executemany_stores_what_sqlalchemy_stores(db: Database) -> None:
    now = dt.datetime(2026, 12, 4, 20, 1, 2, 345678, tzinfo=dt.UTC)
    with db.session() as s, _paths(db) as taken:
        s.execute(STATUS_INSERT, _rows("sa-", now))
        assert bulk.executemany(s, STATUS_INSERT, _rows("bulk-", now)) == 7
    fast = "driver" if db.engine.dialect.name == "sqlite" else "sqlalchemy"
    assert taken[-1] == fast
    # The same rows with the values they share given once, as defaults.
    shared = ("last_cycle", "recent_errors")
    own = [{k: v for k, v in r.items() if k not in shared} for r in _rows("def-", now)]
    with db.session() as s:
        defaults = {"last_cycle": now, "recent_errors": []}
        assert bulk.executemany(s, STATUS_INSERT, own, defaults) == 7
    via_sqlalchemy, via_bulk = _stored(db, "sa-"), _stored(db, "bulk-")
    assert len(via_bulk) == 7
    assert via_bulk == via_sqlalchemy == _stored(db, "def-")
    assert via_bulk[0][-2] == {"own": 0, "text": "é ✓"}
    assert via_bulk[1][-2] == {"same": ["for", "all"], "n": 1}


def test_executemany_update_counts_only_rows_its_guard_matches(db: Database) -> None:
    """An UPDATE with row values, a value shared by all rows and literals of its own
    (the guard, ``+ 1``): only rows the guard matches change and count."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with db.session() as s:
        s.execute(users.insert(), [
            {"login": f"u{i}", "site_admin": i == 1, "disabled": False, "created": t0}
            for i in range(4)
        ])
    later = dt.datetime(2026, 6, 1, 12, 30, tzinfo=dt.UTC)
    stmt = (
        users.update()
        .where(users.c.login == bindparam("b_login"), users.c.site_admin == false())
        .values(disabled=bindparam("v_disabled"), created=bindparam("v_when"))
    )
    rows = [{"b_login": f"u{i}", "v_disabled": True, "v_when": later} for i in (0, 1, 2, 9)]
    with db.session() as s, _paths(db) as taken:
        assert bulk.executemany(s, stmt, rows) == 2  # u1 is an admin, u9 does not exist
    assert taken == ["driver" if db.engine.dialect.name == "sqlite" else "sqlalchemy"]
    with db.session() as s:
        # SQLite gives back naive UTC timestamps, PostgreSQL aware ones.
        got = {r.login: (r.disabled, r.created.replace(tzinfo=None))
               for r in s.execute(select(users))}
    t0, later = t0.replace(tzinfo=None), later.replace(tzinfo=None)
    assert got == {"u0": (True, later), "u1": (False, t0), "u2": (True, later),
                   "u3": (False, t0)}


def test_executemany_compiles_a_reused_statement_once(db: Database) -> None:
    now = dt.datetime.now(dt.UTC)
    with db.session() as s:
        bulk.executemany(s, STATUS_INSERT, _rows("one-", now))
        size = len(bulk._COMPILED)
        bulk.executemany(s, STATUS_INSERT, _rows("two-", now))
        assert len(bulk._COMPILED) == size
    assert len(_stored(db, "two-")) == 7


def test_executemany_fills_python_defaults_the_rows_leave_out(db: Database) -> None:
    """Rows without ``created`` (a default computed in Python) still get it."""
    with db.session() as s, _paths(db) as taken:
        assert bulk.executemany(s, users.insert(), [
            {"login": "d1", "site_admin": False, "disabled": False},
            {"login": "d2", "site_admin": True, "disabled": False},
        ]) == 2
    assert taken == ["sqlalchemy"]
    with db.session() as s:
        created = s.scalars(select(users.c.created).order_by(users.c.login)).all()
    assert len(created) == 2 and all(c is not None for c in created)


def test_executemany_takes_rows_with_different_keys_and_their_defaults(db: Database) -> None:
    """Rows that leave out different keys (or give one the defaults also give) are
    stored with the defaults filling what each row leaves out."""
    now = dt.datetime(2026, 12, 4, 22, 0, tzinfo=dt.UTC)
    base = {"holder": "h", "cycles": 0, "last_report": {}}
    rows = [
        {**base, "site": "mix-0"},
        {**base, "site": "mix-1", "recent_errors": ["own"]},
        {**base, "site": "mix-2", "last_cycle": now + dt.timedelta(hours=1)},
    ]
    with db.session() as s, _paths(db) as taken:
        assert bulk.executemany(
            s, STATUS_INSERT, rows, {"last_cycle": now, "recent_errors": []}
        ) == 3
    assert taken == ["sqlalchemy"]
    c = controller_status.c
    with db.session() as s:
        got = {r.site: (r.last_cycle.replace(tzinfo=None), r.recent_errors) for r in s.execute(
            select(c.site, c.last_cycle, c.recent_errors).where(c.site.like("mix-%")))}
    naive = now.replace(tzinfo=None)
    assert got == {"mix-0": (naive, []), "mix-1": (naive, ["own"]),
                   "mix-2": (naive + dt.timedelta(hours=1), [])}


def test_executemany_of_no_rows_does_nothing(db: Database) -> None:
    with db.session() as s:
        assert bulk.executemany(s, STATUS_INSERT, []) == 0


def test_shared_json_gives_equal_documents_as_one_object(db: Database) -> None:
    now = dt.datetime.now(dt.UTC)
    with db.session() as s:
        bulk.executemany(s, STATUS_INSERT, _rows("j-", now))
    c = controller_status.c
    with db.session() as s:
        rows = s.execute(
            select(c.site, *bulk.shared_json(c.last_report, c.recent_errors))
            .where(c.site.like("j-%")).order_by(c.site)
        ).all()
    data = {r.site: r.last_report for r in rows}
    assert all(r.recent_errors == [] for r in rows)
    assert data["j-0"] == {"own": 0, "text": "é ✓"}
    assert data["j-3"] == {"own": 3, "text": "é ✓"}
    assert data["j-1"] == {"same": ["for", "all"], "n": 1}
    if db.engine.dialect.name == "sqlite":  # PostgreSQL's driver decodes JSONB itself
        assert data["j-1"] is data["j-2"] is data["j-4"]
    assert data["j-0"] is not data["j-3"]
