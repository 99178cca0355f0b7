"""The login-node read paths: Core only, and the same answers as the ORM services.

``hpcgear jobs`` and ``hpcgear job show`` read through :mod:`hpcgear.jobs.queries`
and :mod:`hpcgear.hierarchy.access` (SQLAlchemy Core) so they never import
``sqlalchemy.orm`` or the models (issue 10: <= 400 ms with 100,000 jobs). These
tests hold both halves of that: what the commands import, and that the Core
functions give what :mod:`hpcgear.jobs.service` / :mod:`hpcgear.hierarchy.permissions`
give, visibility rules and refusals included. (The listing's statement and the role
lookup are written once, in the Core modules, and the ORM services run them on their
session; these tests hold the two ways of reading them, rows and models, to one answer.)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from hpcgear.db.models import Gear, Job, JobEvent
from hpcgear.db.session import Database
from hpcgear.errors import HpcgearError, NotFoundError, PermissionDeniedError
from hpcgear.hierarchy import access, permissions
from hpcgear.hierarchy import service as hs
from hpcgear.hierarchy.users import set_user_flags
from hpcgear.jobs import queries, service
from tests.conftest import CliEnv, modules_loaded_by

ADMIN = "root-admin"
USERS = ("alice", "bob", "carol", "dave", "eve", "frank", "nobody")
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _job(i: int, gear_id: int, dest: Any, origin: str, state: str = "complete") -> Job:
    return Job(
        id=f"j{i:03d}", gear_id=gear_id, state=state, site="local",
        destination_type=dest.type, destination_id=dest.id, project_id=dest.project_id,
        origin_id=origin, config={"n": i}, inputs=[], resources={"cpus": 1},
        tags=["t"] if i % 2 else [], created=T0 + dt.timedelta(minutes=i),
        modified=T0 + dt.timedelta(minutes=i),
        wall_seconds=60 if state == "complete" else None, cpu_used_seconds=30.0,
        max_rss_mb=100,
    )  # fmt: skip


@pytest.fixture
def world(db: Database) -> Database:
    """Two groups, three projects, users with roles at each level, jobs everywhere.

    Job ``j<i>`` goes to ``dests[i % 4]``, started by ``origins[i % 4]``; ``j099``
    (by the admin) has the group ``other`` as its destination. alice: read-only on
    group lab (so every lab project); bob: read-write on lab/p1 only, started the
    other/q jobs; carol: no role, started the lab/p2 jobs; dave: admin of other/q,
    started the lab/p1 project-level jobs; eve: a role on lab, but disabled; frank:
    read-only on group other; nobody: registered, no role, no jobs.
    """
    with db.session() as s:
        hs.add_user(s, None, ADMIN, site_admin=True)
        for login in USERS:
            hs.add_user(s, ADMIN, login)
        hs.create_group(s, ADMIN, "lab")
        hs.create_group(s, ADMIN, "other")
        for p in ("lab/p1", "lab/p2", "other/q"):
            hs.create_project(s, ADMIN, p)
        hs.grant_role(s, ADMIN, "alice", "lab", "read-only")
        hs.grant_role(s, ADMIN, "bob", "lab/p1", "read-write")
        hs.grant_role(s, ADMIN, "dave", "other/q", "admin")
        hs.grant_role(s, ADMIN, "eve", "lab", "admin")
        hs.grant_role(s, ADMIN, "frank", "other", "read-only")
        set_user_flags(s, ADMIN, "eve", disabled=True)
        dests = [
            hs.ensure_path(s, ADMIN, "lab/p1/s1/ses/acq"),
            hs.ensure_path(s, ADMIN, "lab/p2/s2/ses"),
            hs.ensure_path(s, ADMIN, "other/q/s3"),
            hs.resolve_container(s, "lab/p1"),
        ]
        group = hs.resolve_container(s, "other")
        gear = Gear(name="g", version="1.0", manifest={}, manifest_sha256="x",
                    installed_by=ADMIN)
        s.add(gear)
        s.flush()
        origins = (ADMIN, "carol", "bob", "dave")
        states = ("complete", "failed", "queued", "running", "cancelled")
        for i in range(24):
            s.add(_job(i, gear.id, dests[i % 4], origins[i % 4], states[i % 5]))
        s.add(_job(99, gear.id, group, ADMIN))  # a job whose destination is a group
        s.flush()
        s.add(JobEvent(job_id="j001", actor=ADMIN, kind="created", new_state="pending",
                       message="created", data={"x": 1}, ts=T0))
        s.add(JobEvent(job_id="j001", actor="controller", kind="state", old_state="pending",
                       new_state="failed", message="boom", data={}, ts=T0))
    return db


def _outcome(fn: Any, *args: Any, **kw: Any) -> Any:
    """What ``fn(*args, **kw)`` returns, or the type and message of the error it raises."""
    try:
        return ("ok", fn(*args, **kw))
    except HpcgearError as exc:
        return ("error", type(exc).__name__, exc.message)


LISTINGS: list[dict[str, Any]] = [
    {},
    {"mine": True},
    {"state": "failed"},
    {"state": "bogus"},
    {"project": "lab/p1"},
    {"project": "lab/p2", "state": "queued"},
    {"project": "other/q"},
    {"project": "lab/nope"},
    {"project": "nogroup/p"},
    {"limit": 3},
]


@pytest.mark.parametrize("actor", [ADMIN, *USERS, "stranger"])
def test_core_listing_matches_orm(world: Database, actor: str) -> None:
    def orm_list(s: Any, **kw: Any) -> Any:
        return service.jobs_to_dicts(s, service.list_jobs(s, actor, **kw))

    def core_list(conn: Any, **kw: Any) -> Any:
        return queries.job_dicts(conn, queries.list_jobs(conn, actor, **kw))

    for kw in LISTINGS:
        with world.session() as s:
            orm = _outcome(orm_list, s, **kw)
        with world.connect() as conn:
            core = _outcome(core_list, conn, **kw)
        assert core == orm, (actor, kw)


def test_visibility_rules_hold(world: Database) -> None:
    """The equality above is only worth something if the rules bite: spot-check them."""

    def ids(actor: str) -> set[str]:
        with world.connect() as conn:
            return {j.id for j in queries.list_jobs(conn, actor, limit=1000)}

    def by_slot(*slots: int) -> set[str]:
        return {f"j{i:03d}" for i in range(24) if i % 4 in slots}

    assert len(ids(ADMIN)) == 25
    assert ids("alice") == by_slot(0, 1, 3)  # a group role covers every project of it
    assert ids("bob") == by_slot(0, 3, 2)  # lab/p1 by role, other/q as the starter
    assert ids("carol") == by_slot(1)  # only what she started
    assert ids("dave") == by_slot(2, 3)
    assert ids("frank") == by_slot(2) | {"j099"}  # a group's projects, a group destination
    assert ids("nobody") == set()
    with world.connect() as conn, pytest.raises(PermissionDeniedError, match="disabled"):
        queries.list_jobs(conn, "eve")


@pytest.mark.parametrize("actor", [ADMIN, *USERS, "stranger"])
def test_core_job_show_matches_orm(world: Database, actor: str) -> None:
    def orm_show(s: Any, job_id: str) -> Any:
        return service.job_to_dict(s, service.get_job(s, actor, job_id), events=True)

    def core_show(conn: Any, job_id: str) -> Any:
        data = queries.job_dicts(conn, [queries.get_job(conn, actor, job_id)])[0]
        data["events"] = [queries.event_dict(e) for e in queries.job_events_of(conn, job_id)]
        return data

    for job_id in ("j000", "j001", "j002", "j003", "j099", "missing"):
        with world.session() as s:
            orm = _outcome(orm_show, s, job_id)
        with world.connect() as conn:
            core = _outcome(core_show, conn, job_id)
        assert core == orm, (actor, job_id)


def test_core_efficiency_and_last_led_match_orm(world: Database) -> None:
    from hpcgear.controller.status import last_led, record_cycle
    from hpcgear.jobs.efficiency import efficiency

    record_cycle(world, {"site": "local"}, "host:1", now=T0)
    for site in ("local", "elsewhere"):
        with world.session() as s, world.connect() as conn:
            assert queries.last_led(conn, site) == last_led(s, site)
    with world.session() as s, world.connect() as conn:
        for job_id in ("j000", "j001"):
            assert efficiency(queries.get_job(conn, ADMIN, job_id)) == efficiency(
                service.get_job(s, ADMIN, job_id)
            )


@pytest.mark.parametrize("actor", [ADMIN, *USERS, "stranger"])
def test_core_role_checks_match_orm(world: Database, actor: str) -> None:
    for path in ("lab", "lab/p1", "lab/p2", "other/q", "lab/p1/s1/ses/acq"):
        for needed in access.RoleName:
            with world.session() as s:
                c = hs.resolve_container(s, path)

                def orm_check(c: Any = c, needed: Any = needed, s: Any = s) -> Any:
                    user = permissions.require_role(s, actor, c, needed, "testing")
                    return (user.login, permissions.effective_role(s, user, c))

                orm = _outcome(orm_check)
            with world.connect() as conn:
                row = access.get_container(conn, c.id)

                def core_check(row: Any = row, needed: Any = needed) -> Any:
                    user = access.require_role(conn, actor, row, needed, "testing")
                    return (user.login, access.effective_role(conn, user, row))

                core = _outcome(core_check)
            assert core == orm, (actor, path, needed)


def test_core_project_resolution_matches_orm(world: Database) -> None:
    for path in ("lab/p1", "other/q", "lab/nope", "nogroup/p", "lab", "lab/p1/s1", "lab//p1"):
        with world.session() as s:
            orm = _outcome(lambda s, p: hs.resolve_container(s, p, min_depth=2, max_depth=2).id,
                           s, path)
        with world.connect() as conn:
            core = _outcome(lambda c, p: access.resolve_project(c, p).id, conn, path)
        assert core == orm, path
    with world.connect() as conn, pytest.raises(NotFoundError):
        access.resolve_project(conn, "lab/nope")


def test_one_table_definition_for_core_and_orm() -> None:
    from hpcgear.db import models, tables

    assert models.Base.metadata is tables.metadata
    for model, table in ((models.Job, tables.jobs), (models.User, tables.users),
                         (models.Container, tables.containers), (models.Gear, tables.gears),
                         (models.Role, tables.roles), (models.JobEvent, tables.job_events),
                         (models.ApiKey, tables.api_keys),
                         (models.ControllerLease, tables.controller_leases),
                         (models.ControllerStatus, tables.controller_status)):
        assert model.__table__ is table


# ------------------------------------------------------------ what the commands import

_PROBE = """
import sys
from hpcgear.cli.main import main
code = main(sys.argv[1:], standalone=False)
import json
loaded = [m for m in ("sqlalchemy.orm", "hpcgear.db.models", "hpcgear.jobs.service",
                      "hpcgear.hierarchy.service", "hpcgear.controller.status")
          if m in sys.modules]
# asyncio and importlib.metadata stay deferred (hpcgear/cli/startup.py)
loaded += [m for m in ("asyncio.events", "email") if m in sys.modules]
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def _loaded(env: CliEnv, *argv: str) -> list[str]:
    return modules_loaded_by(_PROBE, ["--config", str(env.config), *argv])


def test_jobs_and_job_show_never_import_the_orm(cli_env: CliEnv, tmp_path: Path) -> None:
    env = cli_env
    db = Database.open(_url(env))
    try:
        with db.session() as s:
            login = env.ok("whoami", "--json").json()["user"]
            hs.create_group(s, login, "lab")
            hs.create_project(s, login, "lab/p")
            dest = hs.ensure_path(s, login, "lab/p/s/ses")
            gear = Gear(name="g", version="1", manifest={}, manifest_sha256="x",
                        installed_by=login)
            s.add(gear)
            s.flush()
            s.add(_job(1, gear.id, dest, login, "cancelled"))
    finally:
        db.dispose()
    for argv in (["jobs"], ["jobs", "--json", "--project", "lab/p"], ["job", "show", "j001"],
                 ["job", "show", "j001", "--json"]):
        assert _loaded(env, *argv) == [], argv
    # The probe sees what it should: a command that does use the ORM shows up.
    assert "sqlalchemy.orm" in _loaded(env, "ls", "lab/p")


def _url(env: CliEnv) -> str:
    import yaml

    return str(yaml.safe_load(env.config.read_text())["database_url"])


def test_bare_postgresql_url_picks_psycopg2_else_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from sqlalchemy.engine import make_url

    from hpcgear.db.session import _with_driver

    def driver(url: str) -> str:
        return str(_with_driver(make_url(url)).drivername)

    assert driver("postgresql+psycopg://u@h/db") == "postgresql+psycopg"  # explicit: kept
    assert driver("sqlite:///x.db") == "sqlite"
    has_psycopg2 = importlib.util.find_spec("psycopg2") is not None
    assert driver("postgresql://u@h/db") == (
        "postgresql+psycopg2" if has_psycopg2 else "postgresql+psycopg"
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "psycopg2" else real(name, *a))
    assert driver("postgresql://u@h/db") == "postgresql+psycopg"


# ------------------------------------------------------------------ upload in Core


def _upload_orm(db: Database, store: Any, actor: str, path: str, srcs: list[Path]) -> Any:
    from hpcgear.ingest.upload import upload_deidentified

    return db.write(lambda s: upload_deidentified(s, store, actor, path, srcs))


def _upload_core(db: Database, store: Any, actor: str, path: str, srcs: list[Path]) -> Any:
    from hpcgear.hierarchy.uploads import store_upload

    with db.connect() as conn:
        return store_upload(conn, store, actor, path, srcs)


def _tree(db: Database, project: str) -> Any:
    """Everything an upload wrote below ``project``, without ids and times."""
    from sqlalchemy import select

    from hpcgear.db.tables import change_log, containers, file_versions, files

    with db.connect() as conn:
        p = access.resolve_project(conn, project)
        cs = {c.id: c for c in conn.execute(select(containers)
                                             .where(containers.c.project_id == p.id))}

        def where(cid: str | None) -> str:
            parts = []
            while cid in cs:  # the project's own label differs by design
                c = cs[cid]
                parts.append(c.type if c.type == "project" else f"{c.type}:{c.label}")
                cid = cs[cid].parent_id
            return "/".join(reversed(parts))

        conts = sorted(
            (where(c.id), c.label_key == c.label, c.natural_key, c.info, c.tags, c.created_by,
             [where(getattr(c, f"{lvl}_id")) for lvl in ("project", "subject", "session",
                                                          "acquisition")])
            for c in cs.values()
        )  # fmt: skip
        fs = {f.id: f for f in conn.execute(select(files).where(files.c.project_id == p.id))}
        frows = sorted((where(f.container_id), f.name, f.current_version, f.type, f.modality,
                        f.classification, f.tags, f.info) for f in fs.values())
        vers = sorted((fs[v.file_id].name, v.version, v.hash, v.size, v.origin_type, v.origin_id)
                      for v in conn.execute(select(file_versions)
                                            .where(file_versions.c.file_id.in_(list(fs)))))
        logs = [(lg.kind, where(lg.container_id), fs[lg.file_id].name, lg.file_version, lg.actor)
                for lg in conn.execute(select(change_log)
                                       .where(change_log.c.file_id.in_(list(fs)))
                                       .order_by(change_log.c.seq))]
    return conts, frows, vers, logs


def test_core_upload_stores_what_the_orm_upload_stores(world: Database, tmp_path: Path) -> None:
    from hpcgear.storage.objects import ObjectStore

    store = ObjectStore(tmp_path / "store")
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    for rel, text in (("a.nii.gz", "a"), ("b.txt", "b"), ("d/c.json", "{}"),
                      ("d/e/f.dcm", "f")):
        (src / rel).write_text(text)
    with world.session() as s:  # two empty projects: one per path, the same uploads
        for p in ("lab/p3", "lab/p4"):
            hs.create_project(s, ADMIN, p)
            hs.grant_role(s, ADMIN, "bob", p, "read-write")
    steps: list[tuple[str, list[Path]]] = [
        ("s1/ses/acq", [src / "a.nii.gz", src / "b.txt"]),
        ("s1/ses/acq", [src / "a.nii.gz"]),  # identical bytes: unchanged
        ("s1/ses", [src / "d"]),  # a directory, recursively
        ("s2", [src / "b.txt"]),
    ]
    for i, (rel, srcs) in enumerate(steps):
        if i == 3:
            (src / "b.txt").write_text("b, changed")
            steps.append(("s1/ses/acq", [src / "b.txt"]))  # a new version
        orm = _upload_orm(world, store, "bob", f"lab/p3/{rel}", srcs)
        core = _upload_core(world, store, "bob", f"lab/p4/{rel}", srcs)
        strip = [(r.name, r.version, r.hash, r.size, r.created) for r in orm]
        assert [(r.name, r.version, r.hash, r.size, r.created) for r in core] == strip, rel
    assert _tree(world, "lab/p4") == _tree(world, "lab/p3")
    assert len(_tree(world, "lab/p4")[2]) == 6


def test_core_upload_refuses_what_the_orm_upload_refuses(world: Database, tmp_path: Path) -> None:
    from hpcgear.db.models import ProjectDeidProfile
    from hpcgear.storage.objects import ObjectStore

    store = ObjectStore(tmp_path / "store")
    ok = tmp_path / "ok.txt"
    ok.write_text("x")
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "ok.txt").write_text("y")
    empty = tmp_path / "empty"
    empty.mkdir()
    with world.session() as s:
        ses = hs.ensure_path(s, ADMIN, "lab/p1/s1/ses")
        hs.create_child(s, ses, "analysis", "an1", ADMIN)
    cases: list[tuple[str, str, list[Path]]] = [
        ("alice", "lab/p1/s9", [ok]),  # read-only
        ("stranger", "lab/p1/s9", [ok]),
        ("eve", "lab/p1/s9", [ok]),  # disabled
        ("bob", "lab/p2/s9", [ok]),  # a role on p1 only
        ("bob", "lab/nope/s9", [ok]),
        ("bob", "nogroup/p/s9", [ok]),
        ("bob", "lab", [ok]),
        ("bob", "lab/p1/s1/ses/an1", [ok]),  # an analysis takes no uploads
        ("bob", "lab/p1/s1/ses/an1/x", [ok]),
        ("bob", "lab/p1/ bad", [ok]),
        ("bob", "lab/p1/s9", [tmp_path / "missing.txt"]),
        ("bob", "lab/p1/s9", [empty]),
        ("bob", "lab/p1/s9", [ok, twin]),  # two files named ok.txt
        ("bob", "lab/p1/s9", []),
    ]
    for actor, path, srcs in cases:
        orm = _outcome(_upload_orm, world, store, actor, path, srcs)
        core = _outcome(_upload_core, world, store, actor, path, srcs)
        assert orm[0] == "error" and core == orm, (actor, path)
    with world.connect() as conn:
        assert access.get_container(conn, "s9") is None
    with world.session() as s:  # a de-identification profile: the ORM path's job
        p1 = hs.resolve_container(s, "lab/p1")
        s.add(ProjectDeidProfile(project_id=p1.id, name="p", sha256="x", text="", set_by=ADMIN))
    assert _upload_core(world, store, "bob", "lab/p1/s8", [ok]) is None
    assert _tree(world, "lab/p1")[1] == []  # nothing stored


def test_upload_never_imports_the_orm(cli_env: CliEnv, tmp_path: Path) -> None:
    env = cli_env
    env.ok("group", "create", "lab")
    env.ok("project", "create", "lab/p")
    f = tmp_path / "one.txt"
    f.write_text("one")
    assert _loaded(env, "upload", "lab/p/s/ses", str(f)) == []
    f.write_text("two")
    assert _loaded(env, "upload", "lab/p/s/ses", str(f), "--json") == []
    assert env.ok("ls", "lab/p/s/ses").out.count("v2") == 1
