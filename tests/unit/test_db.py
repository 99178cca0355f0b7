"""Database layer on SQLite and PostgreSQL: migrations, services, storage refs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hpcgear.db.models import Base, ChangeLog, FileVersion
from hpcgear.db.session import (
    Database,
    alembic_head_revision,
    check_schema,
    create_db_engine,
    current_revision,
    head_revision,
)
from hpcgear.errors import AlreadyExistsError, DatabaseError, PermissionDeniedError
from hpcgear.hierarchy import service as svc
from hpcgear.storage.objects import ObjectStore


def test_migrations_match_models(db: Database) -> None:
    """Autogenerate against the migrated DB finds nothing: models and migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    check_schema(db.engine)
    assert current_revision(db.engine) == head_revision() == alembic_head_revision() == "0010"


def test_empty_database_is_refused(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(DatabaseError, match="empty") as info:
        check_schema(engine)
    assert "hpcgear init" in info.value.hint


def _setup(db: Database) -> None:
    with db.session() as s:
        svc.add_user(s, None, "admin", site_admin=True)
        svc.create_group(s, "admin", "g")
        svc.create_project(s, "admin", "g/p")


def test_versions_and_shared_bytes(db: Database, tmp_path: Path) -> None:
    _setup(db)
    store = ObjectStore(tmp_path / "store")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("same bytes")
    b.write_text("same bytes")
    with db.session() as s:
        r1 = svc.upload_files(s, store, "admin", "g/p/s1/ses1/acq1", [a])[0]
        r2 = svc.upload_files(s, store, "admin", "g/p/s1/ses1/acq2", [b])[0]
    assert r1.hash == r2.hash, "identical bytes are stored once"
    a.write_text("new bytes")
    with db.session() as s:
        r3 = svc.upload_files(s, store, "admin", "g/p/s1/ses1/acq1", [a])[0]
    assert r3.version == 2
    # deleting v1 of a.txt must keep the bytes b.txt still uses
    with db.session() as s:
        removed = svc.delete_file_version(s, store, "admin", "g/p/s1/ses1/acq1/a.txt", 1)
    assert removed is False and store.exists(r1.hash)
    with db.session() as s:
        removed = svc.delete_file_version(s, store, "admin", "g/p/s1/ses1/acq2/b.txt", 1)
    assert removed is True and not store.exists(r1.hash)
    assert store.exists(r3.hash)
    with db.session() as s:
        kinds = [c.kind for c in s.scalars(select(ChangeLog).order_by(ChangeLog.seq))]
        versions = s.scalars(select(FileVersion.version)).all()
    assert kinds == ["file.version"] * 3
    assert versions == [2]


def test_ancestor_ids_and_natural_keys(db: Database) -> None:
    _setup(db)
    with db.session() as s:
        acq = svc.ensure_path(s, "admin", "g/p/sub/ses/acq")
        assert acq.group_id == "g" and acq.project_id and acq.subject_id and acq.session_id
        assert acq.acquisition_id == acq.id
        ses = svc.resolve_container(s, "g/p/sub/ses")
        ses.natural_key = "1.2.3"
        s.flush()
        assert acq.session_id == ses.id
    with pytest.raises(AlreadyExistsError), db.session() as s:
        svc.create_project(s, "admin", "g/p")


def test_denied_changes_nothing(db: Database, tmp_path: Path) -> None:
    _setup(db)
    with db.session() as s:
        svc.add_user(s, "admin", "eve")
    with pytest.raises(PermissionDeniedError), db.session() as s:
        svc.ensure_path(s, "eve", "g/p/x/y")
    with db.session() as s:
        assert svc.list_path(s, "admin", "g/p") == []


def test_concurrent_sessions_sqlite_wal(tmp_path: Path) -> None:
    """Two writers on the embedded SQLite wait for each other instead of failing."""
    import threading

    from hpcgear.db.session import upgrade

    engine = create_db_engine(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(engine)
    db = Database(engine)
    _setup(db)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                with db.session() as s:
                    svc.ensure_path(s, "admin", f"g/p/sub{n}/ses{i}")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.session() as s:
        assert len(svc.list_path(s, "admin", "g/p")) == 4
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_write_runs_again_after_a_lost_compare_and_set(db) -> None:  # type: ignore[no-untyped-def]
    """A user's write that lost a job CAS to the controller (StaleJobError) is run
    again as a whole, with fresh reads, instead of failing (issue 11, chaos tier)."""
    from hpcgear.jobs.transitions import StaleJobError

    calls: list[int] = []

    def fn(s):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise StaleJobError("job x changed while it was being moved to cancelled")
        return "done"

    assert db.write(fn) == "done"
    assert len(calls) == 2

    def always(s):  # type: ignore[no-untyped-def]
        raise StaleJobError("job x changed concurrently")

    with pytest.raises(StaleJobError):
        db.write(always, attempts=3)


def _log_change(database: Database, container: str) -> None:
    with database.session() as s:
        s.add(ChangeLog(kind="container.meta", container_id=container, actor="test"))


def test_change_watch_sees_what_a_waiting_controller_looks_for(
        db: Database, db_url: str) -> None:
    """The daemon's cheap wake-up look: on SQLite ``PRAGMA data_version`` tells whether
    anyone committed since the last look (another process, or another connection of
    this one); on PostgreSQL a LISTEN connection hears migration 0009's triggers (jobs
    inserted or changing state or site, the change log growing), and nothing else."""
    import time

    from sqlalchemy import text

    pg = not db_url.startswith("sqlite")

    def news(watch: Any) -> bool:  # a notification takes a moment to arrive
        deadline = time.monotonic() + 5
        while not watch.changed():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def quiet(watch: Any) -> bool:
        time.sleep(0.2 if pg else 0)
        return not watch.changed()

    urls = [db_url]
    if pg:  # both drivers: psycopg2 serves bare URLs, psycopg 3 explicit ones
        urls.append(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    for url in urls:
        own = db if url == db_url else Database(create_db_engine(url))
        watch = own.change_watch()
        try:
            assert watch.precise, url
            assert watch.changed(), "the first look is never taken as 'nothing new'"
            assert quiet(watch), "nothing committed since the last look"
            with own.session() as s:  # a read commits nothing
                s.scalar(select(ChangeLog.seq))
            assert quiet(watch)
            other = Database(create_db_engine(db_url))  # another process's connection
            try:
                _log_change(other, "c1")
            finally:
                other.dispose()
            assert news(watch), "another connection committed"
            assert quiet(watch)
            _log_change(own, "c2")  # this process's pool: another connection too
            assert news(watch)
            assert quiet(watch)
            if pg:  # the triggers: any statement moving jobs (even none), nothing else
                with own.engine.begin() as conn:
                    conn.execute(text("UPDATE jobs SET site = site WHERE 1 = 0"))
                assert news(watch)
                with own.engine.begin() as conn:
                    conn.execute(text("UPDATE jobs SET last_seen = NULL WHERE 1 = 0"))
                    conn.execute(text("UPDATE users SET disabled = disabled WHERE 1 = 0"))
                assert quiet(watch)
            watch.close()  # a new connection: what happened meanwhile is unknown
            assert watch.changed()
            assert quiet(watch)
        finally:
            watch.close()
            if own is not db:
                own.dispose()


def test_the_claims_index_orders_a_sites_jobs_by_creation_and_migrates_both_ways(
        db_url: str) -> None:
    """0008 widens ix_jobs_state_site to (state, site, created): the claim reads a site's
    pending jobs oldest first without sorting them; downgrading restores the old one."""
    from alembic import command
    from sqlalchemy import inspect

    from hpcgear.db.session import alembic_config, upgrade

    engine = create_db_engine(db_url, create_dirs=True)
    try:
        def job_indexes() -> dict[str, list[str]]:
            return {ix["name"]: list(ix["column_names"])
                    for ix in inspect(engine).get_indexes("jobs")}

        upgrade(engine, "0004")
        assert job_indexes()["ix_jobs_state_site"] == ["state", "site"]
        upgrade(engine)
        indexes = job_indexes()
        assert indexes["ix_jobs_state_site_created"] == ["state", "site", "created"]
        assert "ix_jobs_state_site" not in indexes
        if db_url.startswith("sqlite"):
            with engine.connect() as conn:
                plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE site = 's' AND "
                    "state = 'pending' ORDER BY created"))
            assert "ix_jobs_state_site_created" in plan and "TEMP B-TREE" not in plan, plan
        command.downgrade(alembic_config(engine), "0004")
        indexes = job_indexes()
        assert indexes["ix_jobs_state_site"] == ["state", "site"]
        assert "ix_jobs_state_site_created" not in indexes
    finally:
        engine.dispose()


def test_an_array_tasks_index_moves_between_its_column_and_json_both_ways(
        db_url: str) -> None:
    """0010 makes an array task's index a column: upgrading fills it from the JSON key
    older controllers wrote (an array in flight is adopted by it), downgrading writes
    it back into that key; a job of no array gets no index either way."""
    import json

    from alembic import command
    from sqlalchemy import text

    from hpcgear.db.models import Gear, Job
    from hpcgear.db.session import alembic_config, upgrade

    engine = create_db_engine(db_url, create_dirs=True)
    try:
        upgrade(engine)
        own = Database(engine)
        with own.session() as s:
            svc.add_user(s, None, "admin", site_admin=True)
            svc.create_group(s, "admin", "g")
            svc.create_project(s, "admin", "g/p")
            dest = svc.ensure_path(s, "admin", "g/p/s/ses")
            gear = Gear(name="g", version="1", manifest={}, manifest_sha256="x",
                        installed_by="admin")
            s.add(gear)
            s.flush()
            for jid, array_id, index in (("task7", "a1", 7), ("single", None, None)):
                s.add(Job(
                    id=jid, gear_id=gear.id, state="submitting", site="local",
                    destination_type=dest.type, destination_id=dest.id, origin_id="admin",
                    config={}, inputs=[], resources={}, tags=[], array_id=array_id,
                    array_index=index, scheduler_info={"kept": True},
                ))  # fmt: skip

        def info() -> dict[str, Any]:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT id, scheduler_info FROM jobs")).all()
            return {r[0]: r[1] if isinstance(r[1], dict) else json.loads(r[1]) for r in rows}

        command.downgrade(alembic_config(engine), "0009")
        assert info() == {"task7": {"kept": True, "array_index": 7}, "single": {"kept": True}}
        upgrade(engine)
        with own.session() as s:
            assert s.get(Job, "task7").array_index == 7  # type: ignore[union-attr]
            assert s.get(Job, "single").array_index is None  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_a_daemon_checkpoints_the_wal_after_its_writes_not_during_them(
        db: Database, db_url: str) -> None:
    """``hold_checkpoints`` (the daemon): on SQLite this process's commits let the WAL
    grow past SQLite's 1,000-page autocheckpoint instead of copying it mid-burst, and
    ``checkpoint`` copies it all afterwards without waking the daemon's own change
    watch. Other processes keep SQLite's default. Nothing to do on PostgreSQL."""
    from hpcgear.db.session import HELD_CHECKPOINT_PAGES

    db.hold_checkpoints()
    db.hold_checkpoints()  # idempotent
    if not db_url.startswith("sqlite"):
        db.checkpoint()  # no-op, no error
        return

    def pragma(database: Database, sql: str) -> tuple[Any, ...]:
        with database.engine.connect() as conn:
            return tuple(conn.exec_driver_sql(sql).one())

    assert pragma(db, "PRAGMA wal_autocheckpoint") == (HELD_CHECKPOINT_PAGES,)
    other = Database(create_db_engine(db_url))
    try:
        assert pragma(other, "PRAGMA wal_autocheckpoint") == (1000,)
    finally:
        other.dispose()
    db.checkpoint()
    watch = db.change_watch()
    try:
        with db.engine.begin() as conn:  # ~6 MB in 12 commits, past 1,000 pages
            conn.exec_driver_sql("CREATE TABLE ballast (b BLOB)")
        for _ in range(12):
            with db.engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO ballast VALUES (randomblob(500000))")
        assert watch.changed()
        assert not watch.changed()
        # The log still holds every page written: no commit above copied it (with
        # SQLite's default the commit past 1,000 pages would have, and the log restarted).
        busy, log, done = db.checkpoint() or (None, 0, 0)
        assert busy == 0 and log > 1000 and done == log, (busy, log, done)
        assert not watch.changed(), "a checkpoint is not a commit: the daemon stays asleep"
    finally:
        watch.close()


def test_recording_an_array_reads_its_own_rows_not_every_queued_job(db: Database,
                                                                     db_url: str) -> None:
    """Without statistics SQLite weighed ``state = ?`` like ``array_id = ?`` and walked
    the state index over every queued job of the site to record one array's tasks;
    the array statements keep state out of index selection (``+state``). PostgreSQL,
    which plans from its statistics, gets the plain column (``+`` is no text operator
    there)."""
    from hpcgear.controller import arrays

    for stmt in (arrays._RECORD_QUEUED, arrays._QUEUED_EVENTS):
        sql = str(stmt.compile(dialect=db.engine.dialect))
        if not db_url.startswith("sqlite"):
            assert "+jobs.state" not in sql and "jobs.state = " in sql, sql
            continue
        with db.engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + sql, (None,) * sql.count("?")))
        assert "ix_jobs_array_id" in plan and "ix_jobs_state" not in plan, plan
