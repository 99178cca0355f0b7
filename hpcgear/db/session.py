"""Engine and session handling.

SQLite is the embedded default (WAL journal, busy timeout, foreign keys on);
PostgreSQL is used when several hosts share state. Opening a database checks
that it is reachable and at the current migration, so a typo in a URL gives one
clear error instead of a traceback from deep inside a command.
"""

from __future__ import annotations

import ast
import functools
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)

if TYPE_CHECKING:
    # sqlalchemy.orm is imported when the first session opens: a command that
    # only needs Core (whoami, jobs, job show, the schema check) does not pay for
    # the ORM; it reads through ``Database.connect()``.
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session, sessionmaker

from hpcgear.errors import DatabaseError, WriteConflictError

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: WAL pages a long-lived process's commits let accumulate before one of them copies
#: them into the database file (:meth:`Database.hold_checkpoints`). SQLite's default is
#: 1,000 pages (4 MB); this is 64 MB of 4 KB pages.
HELD_CHECKPOINT_PAGES = 16_384
WRITE_ATTEMPTS = 8
T = TypeVar("T")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def create_db_engine(url: str, *, create_dirs: bool = False) -> Engine:
    """Create an engine; for SQLite set WAL, a busy timeout and foreign keys."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(
            f"database URL {url!r} is not a valid SQLAlchemy URL",
            "use sqlite:////abs/path.db or postgresql://user@host:5432/db",
        ) from exc
    parsed = _with_driver(parsed)
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            path = Path(db)
            if create_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.parent.exists():
                raise DatabaseError(
                    f"database directory {path.parent} does not exist",
                    "run `hpcgear init` first, or fix database_url",
                )
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
        if parsed.drivername == "postgresql+psycopg2":
            # No HSTORE columns here: skip the pg_type lookup of its oids on every connect.
            kwargs["use_native_hstore"] = False
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(
            f"no driver for database URL {_redact(url)}: {exc}",
            "for PostgreSQL install hpcgear[postgres] and use postgresql://",
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "savepoint", _sqlite_savepoint_in_transaction)
    elif parsed.get_backend_name() == "postgresql":
        event.listen(engine, "before_cursor_execute", _refuse_nul_parameters)
    return engine


def _with_driver(url: URL) -> URL:
    """A bare ``postgresql://`` URL: psycopg2 when installed, else psycopg (3).

    Every CLI call pays for importing its driver: psycopg2 loads in a fraction of
    the time psycopg 3 and its SQLAlchemy dialect take (about 0.1-0.2 s), which a
    login-node command feels. An explicit ``postgresql+DRIVER://`` is kept.
    """
    if url.drivername != "postgresql":
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is not None:
        return url.set(drivername="postgresql+psycopg2")
    return url.set(drivername="postgresql+psycopg")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


def _refuse_nul_parameters(
    _conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any, _many: bool
) -> None:
    """One clear error for a NUL character in any bound text (PostgreSQL).

    PostgreSQL text cannot hold NUL, so a value carrying one can neither be stored
    nor match anything stored. Stores refuse it earlier with the field's name
    (:func:`hpcgear.text.check_storable`); this catches every other path, a
    lookup by a hostile path or label among them, before the driver raises.
    """
    if parameters and _has_nul(parameters):
        from hpcgear.errors import InvalidInputError

        raise InvalidInputError(
            "the value contains a NUL character (\\x00), which cannot be stored or matched",
            "remove the NUL character from the name, path or value",
        )


def _sqlite_savepoint_in_transaction(conn: Any, _name: str) -> None:
    """Open the write transaction before a SAVEPOINT on SQLite.

    The sqlite3 module opens a transaction implicitly only before INSERT/UPDATE/
    DELETE. A SAVEPOINT issued first (after only SELECTs) starts a transaction of
    its own, and its RELEASE then COMMITS it: a later rollback of the session (a
    fenced write refused, an error) would leave the savepoint's writes stored.
    """
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        dbapi.execute("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def check_connection(engine: Engine) -> None:
    """Raise DatabaseError unless the database answers."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (OperationalError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else "?"
        raise DatabaseError(
            f"cannot connect to database {_redact(str(engine.url))}: {reason}",
            "check that the server runs and the URL (HPCGEAR_DATABASE_URL or config) is right",
            transient=True,
        ) from exc


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.M)


@functools.cache
def head_revision() -> str | None:
    """The newest migration, read from the ``revision`` lines of the version files.

    Every CLI call checks the schema; reading a few small files instead of
    building Alembic's script directory spares each call importing Alembic and
    Mako (about 0.1-0.3 s). ``alembic_head_revision`` is the reference a unit
    test compares this with.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        values = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" not in values:
            continue
        revisions.add(str(ast.literal_eval(values["revision"])))
        down = ast.literal_eval(values.get("down_revision", "None"))
        parents.update([down] if isinstance(down, str) else list(down or ()))
    heads = sorted(revisions - parents)
    if len(heads) > 1:
        return alembic_head_revision()  # Alembic explains several heads best
    return heads[0] if heads else None


def alembic_head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    cfg = alembic_config(create_engine("sqlite://"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    return str(head) if head else None


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in ``alembic_version`` (None without the table)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rev = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return str(rev) if rev else None


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations; returns (before, after) revisions."""
    from alembic import command

    check_connection(engine)
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), revision)
    after = current_revision(engine)
    logger.info("database %s upgraded %s -> %s", _redact(str(engine.url)), before, after)
    return before, after


def _stamped_revision(engine: Engine) -> str | None:
    """``alembic_version`` in ONE query (the common case), or None when that fails."""
    try:
        with engine.connect() as conn:
            rev = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except SQLAlchemyError:
        return None  # no table, or no connection: the careful path says which
    return str(rev) if rev else None


def check_schema(engine: Engine) -> None:
    """Raise DatabaseError unless the schema is at the migration head.

    Every CLI call runs this: one query when the schema is current; the
    connection check and the table inspection run only to explain a problem.
    """
    head = head_revision()
    if head is not None and _stamped_revision(engine) == head:
        return
    check_connection(engine)
    current = current_revision(engine)
    if current is None:
        tables = inspect(engine).get_table_names()
        what = "is empty" if not tables else "has no hpcgear schema"
        raise DatabaseError(
            f"database {_redact(str(engine.url))} {what}",
            "run `hpcgear init` (new instance) or `hpcgear db upgrade`",
        )
    if current != head:
        raise DatabaseError(
            f"database schema is at revision {current}, this hpcgear needs {head}",
            "run `hpcgear db upgrade`",
        )


class Database:
    """An engine plus a session factory; ``with db.session() as s`` commits or rolls back."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._factory: sessionmaker[Session] | None = None
        self._held_checkpoints = False

    @classmethod
    def open(cls, url: str, *, check: bool = True) -> Database:
        engine = create_db_engine(url)
        if check:
            check_schema(engine)
        return cls(engine)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A Core connection in one transaction, committed on success (the Core
        read paths: :mod:`hpcgear.hierarchy.access`, :mod:`hpcgear.jobs.queries`)."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def session(self) -> Iterator[Session]:
        if self._factory is None:
            from sqlalchemy.orm import sessionmaker

            self._factory = sessionmaker(self.engine, expire_on_commit=False)
        s = self._factory()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def write(self, fn: Callable[[Session], T], *, attempts: int = WRITE_ATTEMPTS) -> T:
        """Run ``fn(session)`` in one transaction, retried when it raced another writer.

        A race shows up as a unique violation (two writers created the same child
        container or file version), a PostgreSQL serialization failure or deadlock,
        or SQLite's "database is locked" after the busy timeout. The whole
        transaction is rolled back and run again with a short random back-off, so
        ``fn`` must be safe to repeat (it sees the other writer's committed rows on
        the next attempt). What still fails after ``attempts`` becomes a transient
        DatabaseError, never a raw driver error.
        """

        def once() -> T:
            with self.session() as s:
                return fn(s)

        return retry_conflicts(once, attempts=attempts)

    def hold_checkpoints(self, pages: int = HELD_CHECKPOINT_PAGES) -> None:
        """Move this process's SQLite checkpoints out of its bursts of writes and into
        :meth:`checkpoint` (the daemon calls it before it waits for work).

        In WAL mode the commit that takes the write-ahead log past
        ``wal_autocheckpoint`` pages (1,000 by default) also copies the whole log into
        the database file and syncs it: about 12 ms, every third commit of a
        10,000-job submission, on the critical path of the next array. Here this
        process's connections checkpoint on commit only past ``pages``, so a burst
        commits without copying and :meth:`checkpoint` copies the log afterwards.
        The log stays bounded (``pages`` at most) and other processes keep their own
        setting. Nothing on PostgreSQL or an in-memory database.
        """
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return
        if self._held_checkpoints:
            return
        self._held_checkpoints = True

        def autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
            cur.close()

        event.listen(self.engine, "connect", autocheckpoint)
        self.engine.dispose(close=True)  # pooled connections reconnect with the setting

    def checkpoint(self) -> tuple[int, int, int] | None:
        """After :meth:`hold_checkpoints`: copy the WAL into the database file now, as
        far as no reader needs it (``PASSIVE``: waits for no one); SQLite's answer
        (busy, pages in the log, pages copied), or None when not held. Cheap when the
        log holds nothing new; a failure is only logged (the next one, or the next
        commit past the limit, copies it)."""
        if not self._held_checkpoints:
            return None
        try:
            with self.engine.connect() as conn:
                busy, log, done = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        except SQLAlchemyError:
            logger.debug("checkpoint failed", exc_info=True)
            return None
        return int(busy), int(log), int(done)

    def change_watch(self) -> ChangeWatch:
        """A :class:`ChangeWatch` on this database (close it when done)."""
        return ChangeWatch(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


#: The channel migration 0009's triggers notify on PostgreSQL when jobs change state or
#: site or the change log grows (what a waiting controller looks for).
WORK_CHANNEL = "hpcgear_work"


class ChangeWatch:
    """Whether anything a waiting controller looks for may have changed since the last
    look, cheaply, so that it runs its real queries only then.

    - SQLite file: ``PRAGMA data_version`` on a connection kept for the watch. It changes
      when any other connection commits (another process's, or another of this
      process's pool), and reading it reads no table: microseconds.
    - PostgreSQL: ``LISTEN hpcgear_work`` on a connection of its own (autocommit, out of
      the pool). Migration 0009's triggers notify on every statement that inserts jobs,
      changes a job's state or site, or adds to the change log; a look reads what the
      server already sent, without a round trip.

    ``precise`` says a False answer can be trusted; with a driver that cannot listen
    (or an in-memory database) every look answers True and the caller queries at its
    own pace. A failed look answers True and reconnects at the next one.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        url = engine.url
        backend = url.get_backend_name()
        self._kind = ""
        if backend == "sqlite" and url.database not in (None, "", ":memory:"):
            self._kind = "sqlite"
        elif backend == "postgresql" and url.get_driver_name() in ("psycopg2", "psycopg"):
            self._kind = url.get_driver_name()
        self.precise = bool(self._kind)
        self._conn: Any = None
        self._seen: int | None = None  # SQLite: the last data_version; None: say True

    def changed(self) -> bool:
        """True when something may have changed since the last look (or when unsure)."""
        if not self.precise:
            return True
        try:
            if self._conn is None:
                self._conn = self._open()
                return True  # what happened before the connection is unknown
            return self._sqlite_changed(self._conn) if self._kind == "sqlite" else self._notified()
        except Exception:  # unsure: the caller looks with its queries
            logger.debug("change watch: the look failed", exc_info=True)
            self.close()
            return True

    def _open(self) -> Any:
        raw = self._engine.raw_connection()
        if self._kind == "sqlite":
            self._sqlite_changed(raw)
            return raw
        conn: Any = raw.driver_connection
        raw.detach()  # autocommit and LISTEN must never go back to the pool
        conn.rollback()  # a pool pre-ping may have opened a transaction
        conn.autocommit = True
        conn.cursor().execute(f"LISTEN {WORK_CHANNEL}")
        return conn

    def _sqlite_changed(self, conn: Any) -> bool:
        cur = conn.cursor()
        try:
            cur.execute("PRAGMA data_version")
            version = int(cur.fetchone()[0])
        finally:
            cur.close()
        news = version != self._seen
        self._seen = version
        return news

    def _notified(self) -> bool:
        if self._kind == "psycopg2":
            self._conn.poll()  # reads what the server sent; no round trip
            got = bool(self._conn.notifies)
            self._conn.notifies.clear()
            return got
        return any(True for _ in self._conn.notifies(timeout=0))  # psycopg 3.2+

    def close(self) -> None:
        self._seen = None  # another connection's numbers are not comparable
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except Exception:  # closing a broken connection
                logger.debug("change watch: close failed", exc_info=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def retry_conflicts(fn: Callable[[], T], *, attempts: int = WRITE_ATTEMPTS) -> T:
    """Call ``fn()`` (which opens and commits its own transaction) again while it
    fails with a write conflict (:func:`is_write_conflict`, or a lost compare-and-set:
    :class:`WriteConflictError`, e.g. the controller moved a job the user cancels);
    see :meth:`Database.write`."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except WriteConflictError as exc:
            if attempt == attempts:
                raise
            logger.info("write conflict (%s), retrying (%d)", exc.message, attempt)
            time.sleep(random.uniform(0.01, 0.05) * attempt)  # noqa: S311 - jitter only
        except (IntegrityError, OperationalError) as exc:
            if not is_write_conflict(exc):
                raise
            if attempt == attempts:
                raise DatabaseError(
                    f"the database stayed busy with other writers ({_first_line(exc)})",
                    "run the command again; nothing was changed",
                    transient=True,
                ) from exc
            logger.info("write conflict (%s), retrying (%d)", _first_line(exc), attempt)
            time.sleep(random.uniform(0.01, 0.05) * attempt)  # noqa: S311 - jitter only
    raise AssertionError("unreachable")


_RETRY_SQLSTATES = frozenset({"23505", "40001", "40P01"})  # unique, serialization, deadlock


def is_write_conflict(exc: BaseException) -> bool:
    """Whether a driver error means "another writer raced us; run it again"."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate is not None:
        return str(sqlstate) in _RETRY_SQLSTATES
    text = str(orig).lower()
    if isinstance(exc, IntegrityError):
        return "unique constraint failed" in text
    return "database is locked" in text or "database is busy" in text


def lock_for_update(session: Session, obj: Any) -> None:
    """Lock ``obj``'s row until the transaction ends and reload it (read-modify-write).

    PostgreSQL: ``SELECT ... FOR UPDATE`` (a concurrent writer waits for our commit,
    then reads our result). SQLite has no row locks: the transaction takes the
    database write lock (``BEGIN IMMEDIATE``, or it already holds it after a write),
    waiting up to the busy timeout; the row is then re-read, so nobody can change
    it between our read and our commit.
    """
    mapper = type(obj)
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        dbapi = conn.connection.dbapi_connection
        if dbapi is not None and not dbapi.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        session.refresh(obj)
        return
    pk = inspect(mapper).primary_key
    ident = inspect(obj).identity
    stmt = select(mapper).where(*(col == val for col, val in zip(pk, ident, strict=True)))
    # Consuming the row is what reloads the object (populate_existing).
    session.execute(stmt.with_for_update().execution_options(populate_existing=True)).scalar_one()
