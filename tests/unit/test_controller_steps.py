"""Controller steps without a cluster: verdicts, claim caps, retries, leases, unknown state.

Fakes sit at the subprocess boundary only: the real ``SlurmBackend`` runs on a
runner that answers like a SLURM whose queue and accounting no longer know
the job. Database tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hpcgear.config.site import load_site_text
from hpcgear.controller.claim import claim_jobs
from hpcgear.controller.context import ControllerContext, CycleReport
from hpcgear.controller.lease import acquire_lease, release_lease
from hpcgear.controller.poll import LOST_GRACE, classify_end, poll_jobs
from hpcgear.controller.retry import schedule_retries
from hpcgear.controller.sites import SiteRuntime
from hpcgear.db.models import Job
from hpcgear.db.session import Database
from hpcgear.errors import ManifestError
from hpcgear.render.exit_record import ExitRecord
from hpcgear.scheduler.runner import CompletedCommand
from hpcgear.scheduler.slurm import SlurmBackend
from hpcgear.scheduler.transport import LocalTransport
from hpcgear.states import FailureKind, JobState, SchedulerState
from hpcgear.storage.objects import ObjectStore

REPO = Path(__file__).resolve().parents[2]


def _rec(**kw: Any) -> ExitRecord:
    base: dict[str, Any] = dict(
        complete=True, job_id="j", attempt=1, rc=0, signal=None, timed_out=False, started=True,
        boot_failed=False, boot_attempts=1, error=None, host="n1", runtime_version="1.4",
        slurm_job_id="1", slurm_array_task_id=None, start_time=None, end_time=None,
        elapsed_s=1)
    base.update(kw)
    return ExitRecord(**base)


@pytest.mark.parametrize(
    ("state", "rec", "expect"),
    [
        (SchedulerState.COMPLETED, _rec(), (JobState.STAGING, None)),
        (SchedulerState.COMPLETED, None, (JobState.FAILED, FailureKind.LOST)),
        (SchedulerState.COMPLETED, _rec(rc=2), (JobState.FAILED, FailureKind.GEAR_ERROR)),
        (SchedulerState.COMPLETED, _rec(rc=255, started=False, boot_failed=True),
         (JobState.FAILED, FailureKind.BOOT_FAILURE)),
        (SchedulerState.FAILED, _rec(rc=143, signal="TERM", timed_out=True),
         (JobState.FAILED, FailureKind.TIMEOUT)),
        (SchedulerState.FAILED, _rec(rc=1), (JobState.FAILED, FailureKind.GEAR_ERROR)),
        (SchedulerState.FAILED, _rec(complete=True, started=False, error="input file missing"),
         (JobState.FAILED, FailureKind.INPUT_STAGING)),
        (SchedulerState.TIMEOUT, None, (JobState.FAILED, FailureKind.TIMEOUT)),
        (SchedulerState.OUT_OF_MEMORY, _rec(rc=0), (JobState.FAILED, FailureKind.OOM)),
        (SchedulerState.NODE_FAIL, None, (JobState.FAILED, FailureKind.NODE_FAILURE)),
        (SchedulerState.PREEMPTED, None, (JobState.FAILED, FailureKind.PREEMPTED)),
        (SchedulerState.BOOT_FAIL, None, (JobState.FAILED, FailureKind.BOOT_FAILURE)),
        (SchedulerState.CANCELLED, None, (JobState.CANCELLED, FailureKind.CANCELLED)),
    ],
)
def test_success_needs_two_proofs(state: SchedulerState, rec: ExitRecord | None,
                                  expect: tuple[JobState, FailureKind | None]) -> None:
    verdict, kind, message = classify_end(state, rec, cancelled_by_us=False)
    assert (verdict, kind) == expect, message
    assert message


def test_oom_with_rc0_is_not_success() -> None:
    """SLURM's word wins over a record written before the kernel killed the step."""
    verdict, kind, _ = classify_end(SchedulerState.OUT_OF_MEMORY, _rec(), cancelled_by_us=False)
    assert verdict == JobState.FAILED and kind == FailureKind.OOM


# ----------------------------------------------------------------- fixtures

SITE = """\
name: t
scheduler: slurm
scratch_root: {scratch}/{{user}}
storage_root: {storage}
runtime:
  image_cache: {images}
partitions:
  debug: {{max_time: 2h, default: true}}
limits:
  max_in_flight_per_user: 2
  max_in_flight_per_project: 3
  submit_rate_per_minute: 10
"""


class GoneRunner:
    """A SLURM that forgot everything: empty squeue and sacct (the subprocess boundary)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        self.calls.append(tuple(argv))
        return CompletedCommand(tuple(argv), 0, "", "", 0.0)


@pytest.fixture
def setup(db: Database, tmp_path: Path) -> tuple[ControllerContext, SiteRuntime]:
    from hpcgear.config.settings import default_settings
    from hpcgear.gears.service import install_gear
    from hpcgear.hierarchy import service as svc

    site = load_site_text(SITE.format(scratch=tmp_path / "scr", storage=tmp_path / "st",
                                      images=tmp_path / "img"))
    store = ObjectStore(tmp_path / "store")
    sif = tmp_path / "x.sif"
    sif.write_bytes(b"sif")
    with db.session() as s:
        svc.add_user(s, None, "admin", site_admin=True)
        for u in ("alice", "bob"):
            svc.add_user(s, "admin", u)
        svc.create_group(s, "admin", "g")
        for p in ("p1", "p2"):
            svc.create_project(s, "admin", f"g/{p}")
            svc.ensure_path(s, "admin", f"g/{p}/s/ses")
        install_gear(s, store, "admin", REPO / "containers" / "test-gear", image=str(sif))
    ctx = ControllerContext(db=db, store=store, settings=default_settings(tmp_path / "c.yaml"),
                            actor="test-controller")
    rt = SiteRuntime(site=site, transport=LocalTransport(),
                     backend=SlurmBackend(GoneRunner()), local_files=True)
    return ctx, rt


def _job(ctx: ControllerContext, *, user: str, project: str, state: str = "pending",
         **kw: Any) -> str:
    from sqlalchemy import select

    from hpcgear.db.models import Container, Gear
    from hpcgear.hierarchy.service import new_id

    with ctx.db.session() as s:
        gear = s.scalars(select(Gear)).first()
        assert gear is not None
        dest = s.scalars(select(Container).where(Container.type == "session")).all()
        d = next(c for c in dest if c.project_id == project)
        job = Job(id=new_id(), gear_id=gear.id, state=state, site="t",
                  config=kw.pop("config", {}), inputs=[],
                  resources={"cpus": 1, "mem_mb": 100, "time_minutes": 10},
                  destination_type="session", destination_id=d.id, project_id=project,
                  tags=["hpc"], origin_type="user", origin_id=user, **kw)
        s.add(job)
        return job.id


def _project_ids(ctx: ControllerContext) -> dict[str, str]:
    from sqlalchemy import select

    from hpcgear.db.models import Container

    with ctx.db.session() as s:
        return {c.label: c.id for c in s.scalars(select(Container).where(
            Container.type == "project"))}


def test_claim_respects_in_flight_caps_and_rate(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:
    ctx, rt = setup
    pid = _project_ids(ctx)
    alice = [_job(ctx, user="alice", project=pid["p1"]) for _ in range(4)]
    bob = [_job(ctx, user="bob", project=pid["p1"]) for _ in range(2)]
    bob2 = [_job(ctx, user="bob", project=pid["p2"]) for _ in range(2)]
    claimed = claim_jobs(ctx, rt, limit=50)
    # per user <= 2, project p1 <= 3 in flight
    assert sum(j in claimed for j in alice) == 2
    assert sum(j in claimed for j in bob + bob2) == 2
    assert sum(j in claimed for j in alice + bob) <= 3
    with ctx.db.session() as s:
        states = {s.get(Job, j).state for j in claimed}  # type: ignore[union-attr]
    assert states == {"submitting"}
    # nothing more fits until something finishes
    assert claim_jobs(ctx, rt, limit=50) == []


def test_failed_query_changes_nothing_and_lost_after_grace(
        setup: tuple[ControllerContext, SiteRuntime], tmp_path: Path) -> None:
    ctx, rt = setup
    pid = _project_ids(ctx)
    now = dt.datetime.now(dt.UTC)
    recent = _job(ctx, user="alice", project=pid["p1"], state="queued", native_id="101",
                  last_seen=now)
    old = _job(ctx, user="alice", project=pid["p1"], state="running", native_id="102",
               last_seen=now - LOST_GRACE - dt.timedelta(minutes=1))
    report = CycleReport(site="t")
    poll_jobs(ctx, rt, report)
    with ctx.db.session() as s:
        r, o = s.get(Job, recent), s.get(Job, old)
        assert r is not None and o is not None
        assert r.state == "queued" and r.scheduler_state == "UNKNOWN", "grace: not yet lost"
        assert o.state == "failed" and o.failure_kind == "lost"
    squeues = [c for c in rt.backend.runner.calls if c[0] == "squeue"]  # type: ignore[attr-defined]
    assert len(squeues) == 1, "one squeue per cycle for every tracked job"
    assert "101" in " ".join(squeues[0]) and "102" in " ".join(squeues[0])


def test_retry_policy_site_and_gear(setup: tuple[ControllerContext, SiteRuntime]) -> None:
    ctx, rt = setup
    pid = _project_ids(ctx)
    oom = _job(ctx, user="alice", project=pid["p1"], state="failed", failure_kind="oom")
    gear_err = _job(ctx, user="alice", project=pid["p1"], state="failed",
                    failure_kind="gear_error")
    report = CycleReport(site="t")
    schedule_retries(ctx, rt, report)
    schedule_retries(ctx, rt, report)  # idempotent: still one retry
    from sqlalchemy import select

    with ctx.db.session() as s:
        retries = s.scalars(select(Job).where(Job.previous_id.in_([oom, gear_err]))).all()
        assert [r.previous_id for r in retries] == [oom]
        assert retries[0].resources["mem_mb"] == 200, "oom retries with doubled memory"
        assert retries[0].attempt == 2
    assert report.retried == 1


def test_gear_retry_policy_is_validated() -> None:
    from hpcgear.gears.retry import gear_retry_policies

    ok = gear_retry_policies({"custom": {"hpcgear": {"retry": {"oom": {"max_attempts": 4}}}}})
    assert ok[FailureKind.OOM].max_attempts == 4
    with pytest.raises(ManifestError, match="unknown failure kind"):
        gear_retry_policies({"custom": {"hpcgear": {"retry": {"oops": {"max_attempts": 4}}}}})
    with pytest.raises(ManifestError, match="max_attempts"):
        gear_retry_policies({"custom": {"hpcgear": {"retry": {"oom": {"max_attempts": 99}}}}})


def test_one_leader_per_site(setup: tuple[ControllerContext, SiteRuntime]) -> None:
    ctx, _rt = setup
    assert acquire_lease(ctx, "t", "host-a:1", seconds=60)
    assert not acquire_lease(ctx, "t", "host-b:2", seconds=60), "second controller waits"
    assert acquire_lease(ctx, "t", "host-a:1", seconds=60), "the leader renews"
    release_lease(ctx, "t", "host-a:1")
    assert acquire_lease(ctx, "t", "host-b:2", seconds=1)
    time.sleep(1.2)
    assert acquire_lease(ctx, "t", "host-a:1", seconds=60), "an expired lease is taken over"


def _wait_for_lease(db_file: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Block until the daemon leads a site (its signal handlers are installed by then)."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with sqlite3.connect(db_file) as con:
            if con.execute("select count(*) from controller_leases").fetchone()[0]:
                return
        time.sleep(0.2)
    raise AssertionError("the daemon took no site lease within the timeout")


def test_sigterm_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "HPCGEAR_CONFIG": str(tmp_path / "c.yaml"),
           "XDG_DATA_HOME": str(tmp_path / "d")}
    hg = [sys.executable, "-m", "hpcgear"]
    subprocess.run([*hg, "init", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--storage",
                    str(tmp_path / "st"), "--scratch", str(tmp_path / "scr")], env=env,
                   check=True, capture_output=True)
    proc = subprocess.Popen([*hg, "controller", "run", "--interval", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lease(tmp_path / "x.db", proc)
        proc.send_signal(signal.SIGHUP)  # reload: keeps running
        time.sleep(2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0
    out = subprocess.run([*hg, "db", "status", "--json"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["revision"]


def test_accounting_of_a_reused_job_id_is_ignored() -> None:
    """After a SLURM state reset, sacct may hold an older job under the same id."""
    from hpcgear.controller.facts import ours
    from hpcgear.scheduler.base import Accounting

    mine = Accounting(native_id="91", state=SchedulerState.COMPLETED, name="hpcgear-abc")
    old = Accounting(native_id="91", state=SchedulerState.FAILED, name="hpcgear-zzz")
    task = Accounting(native_id="7_1", state=SchedulerState.COMPLETED,
                      name="hpcgear-array-a1")
    assert ours({"91": mine}, "91", "abc", None) is mine
    assert ours({"91": old}, "91", "abc", None) is None
    assert ours({"7_1": task}, "7_1", "job-x", "a1") is task
    assert ours({}, "91", "abc", None) is None


def test_prepare_attempts_match_the_single_job_path(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:
    """An array's specs, job directories and config.json (built from Core rows, shared
    parts once) are exactly what the one-job path builds for each job, configs that
    differ (including reserved keys split off) kept apart."""
    from hpcgear.controller.resolve import (
        attempt_paths,
        config_json_for,
        prepare_attempts,
        resolve_spec,
    )

    ctx, rt = setup
    pid = _project_ids(ctx)
    configs = [{"label": "a", "num_files": 2}, {"label": "b"}, {"label": "a", "num_files": 2},
               {"label": "a", "slurm-time": "10m"}, {}]
    ids = [_job(ctx, user=u, project=pid["p1"], config=c)
           for u, c in zip(("alice", "bob", "alice", "bob", "alice"), configs, strict=True)]
    attempts, rows = prepare_attempts(ctx, rt, ids, "/img/x.sif")
    assert sorted(rows) == sorted(ids) and all(r.state == "pending" for r in rows.values())
    with ctx.db.session() as s:
        for jid, (spec, paths, cfg) in zip(ids, attempts, strict=True):
            job = s.get(Job, jid)
            assert job is not None
            one = resolve_spec(s, job, rt.site, "/img/x.sif")
            assert spec == one
            assert paths == attempt_paths(rt.site, job)
            assert cfg == config_json_for(s, job, one)
    assert [a[2]["config"] for a in attempts] == [
        {"label": "a", "num_files": 2}, {"label": "b"}, {"label": "a", "num_files": 2},
        {"label": "a"}, {}]
    assert attempts[0][2]["config"] is not attempts[2][2]["config"]  # no shared documents
    assert [a[2]["job"]["id"] for a in attempts] == ids


def test_transition_from_moves_only_jobs_still_in_the_old_state(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:
    """The state-guarded bulk move: a job cancelled meanwhile stays cancelled and gets no
    event; one UPDATE per chunk; each moved job gets its own message."""
    from sqlalchemy import event, select, update

    from hpcgear.db.models import JobEvent
    from hpcgear.jobs import transitions
    from hpcgear.jobs.transitions import transition_from
    from hpcgear.states import StateTransitionError

    ctx, _rt = setup
    pid = _project_ids(ctx)
    ids = [_job(ctx, user="alice", project=pid["p1"]) for _ in range(5)]
    with ctx.db.session() as s:
        s.execute(update(Job).where(Job.id.in_(ids)).values(state="submitting"))
        s.execute(update(Job).where(Job.id == ids[2]).values(state="cancelled"))
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            statements.append(statement)

    old_chunk = transitions.CAS_CHUNK
    transitions.CAS_CHUNK = 2  # 5 jobs: 3 statements
    event.listen(ctx.db.engine, "before_cursor_execute", count)
    try:
        with ctx.db.session() as s:
            moved = transition_from(s, {j: f"queued as {n}_0" for n, j in enumerate(ids)},
                                    JobState.SUBMITTING, JobState.QUEUED, "test")
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", count)
        transitions.CAS_CHUNK = old_chunk
    assert len(statements) == 3
    assert moved == [ids[0], ids[1], ids[3], ids[4]]
    with ctx.db.session() as s:
        got = dict(s.execute(select(Job.id, Job.state).where(Job.id.in_(ids))).all())
        events = dict(s.execute(select(JobEvent.job_id, JobEvent.message)
                                .where(JobEvent.new_state == "queued")).all())
    assert got == {j: ("cancelled" if j == ids[2] else "queued") for j in ids}
    assert events == {j: f"queued as {n}_0" for n, j in enumerate(ids) if j != ids[2]}
    with pytest.raises(StateTransitionError, match="complete"), ctx.db.session() as s:
        transition_from(s, {ids[0]: None}, JobState.PENDING, JobState.COMPLETE, "test")


def test_daemon_wakes_on_new_work_and_exit_records(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:
    """Between cycles the daemon waits for the interval unless work or an exit record appears."""
    import threading

    from hpcgear.controller.loop import Controller
    from hpcgear.controller.resolve import attempt_paths

    ctx, rt = setup
    pid = _project_ids(ctx)
    ctl = Controller(settings_path=None, ctx=ctx, site_names=["t"])
    ctl._runtimes = {"t": rt}
    seq, pending = ctl._work_marks()
    t0 = time.monotonic()
    ctl._sleep(1.2, seq, pending)
    assert time.monotonic() - t0 >= 1.1, "nothing new: it sleeps the interval"
    threading.Timer(0.3, lambda: _job(ctx, user="alice", project=pid["p1"])).start()
    t0 = time.monotonic()
    ctl._sleep(30, seq, pending)
    assert time.monotonic() - t0 < 10, "a new pending job wakes it"
    # ...within a wake tick (0.1 s): the check is a database query, cheap enough to run
    # ten times a second, so a batch does not wait half a second to start
    # (a 0.5 s tick would average 0.3 s over these offsets)
    delays = []
    created: list[float] = []

    def new_job() -> None:
        created.append(time.monotonic())
        _job(ctx, user="alice", project=pid["p1"])

    for offset in (0.05, 0.2, 0.35):
        seq, pending = ctl._work_marks()
        threading.Timer(offset, new_job).start()
        ctl._sleep(30, seq, pending)
        delays.append(time.monotonic() - created[-1])
    assert sum(delays) / len(delays) < 0.2, delays
    seq, pending = ctl._work_marks()
    running = _job(ctx, user="bob", project=pid["p2"], state="running", native_id="77")
    with ctx.db.session() as s:
        exit_json = attempt_paths(rt.site, s.get(Job, running)).exit_json  # type: ignore[arg-type]
    Path(exit_json).parent.mkdir(parents=True)
    threading.Timer(0.3, lambda: Path(exit_json).write_text("{}")).start()
    t0 = time.monotonic()
    ctl._sleep(30, seq, pending)
    assert time.monotonic() - t0 < 10, "an exit record wakes it"
    # the same record wakes it again once a recheck is due (slurmdbd records a job's
    # end a second or two after its exit record): not at every look, not only at the
    # poll interval
    from hpcgear.controller.loop import EXIT_RECHECK

    t0 = time.monotonic()
    ctl._sleep(30, seq, pending)
    assert EXIT_RECHECK - 0.1 <= time.monotonic() - t0 < 10, "a recheck is due"
    # after a failed step (SLURM unreachable) exit records do not cut the wait short
    ctl._exit_seen.clear()
    t0 = time.monotonic()
    ctl._sleep(3, seq, pending, watch_exits=False)
    assert time.monotonic() - t0 >= 2.9, "a failing query is not repeated on every exit record"


def test_a_quiet_wait_queries_only_after_a_commit(
        setup: tuple[ControllerContext, SiteRuntime], monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon looks for new work every QUICK_WAKE_TICK with its change watch (one
    ``PRAGMA data_version`` on SQLite, the LISTEN connection's buffer on PostgreSQL) and
    runs its work queries only when something was committed; new work wakes it."""
    import threading

    from hpcgear.controller.loop import QUICK_WAKE_TICK, WAKE_TICK, Controller

    ctx, rt = setup
    pid = _project_ids(ctx)
    ctl = Controller(settings_path=None, ctx=ctx, site_names=["t"])
    ctl._runtimes = {"t": rt}
    seq, pending = ctl._work_marks()
    calls: list[float] = []
    real = ctl._work_marks

    def counted() -> tuple[int, int]:
        calls.append(time.monotonic())
        return real()

    monkeypatch.setattr(ctl, "_work_marks", counted)
    try:
        ctl._sleep(0.6, seq, pending, watch_exits=False)
        assert ctl._watch is not None and ctl._watch.precise
        assert QUICK_WAKE_TICK < WAKE_TICK
        assert len(calls) == 1, "about 30 looks, one query: the first look's"
        calls.clear()
        threading.Timer(0.2, lambda: _job(ctx, user="alice", project=pid["p1"])).start()
        t0 = time.monotonic()
        ctl._sleep(30, seq, pending, watch_exits=False)
        assert time.monotonic() - t0 < 10, "a new pending job wakes it"
        assert calls, "the commit made it query"
    finally:
        ctl.close()


def test_warm_up_compiles_the_sites_templates_before_the_first_batch(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:
    from hpcgear.controller.loop import Controller
    from hpcgear.render.environment import template_environment

    ctx, rt = setup
    ctl = Controller(settings_path=None, ctx=ctx, site_names=["t"])
    ctl._runtimes = {"t": rt}
    template_environment.cache_clear()
    ctl.warm_up()
    cache = template_environment(rt.site.template_dir).cache
    assert cache is not None
    assert {"array.sbatch.j2", "job.sbatch.j2", "_run.bash.j2"} <= {n for _l, n in cache}


class DbdDownRunner:
    """squeue answers (job 201 COMPLETED, still in the queue); sacct cannot reach slurmdbd."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        self.calls.append(tuple(argv))
        if argv[0] == "squeue":
            row = ("201|201|N/A|COMPLETED|None|vm|debug|0:05|10:00|2026-12-04T03:00:00|"
                   "2026-12-04T03:00:01|normal|acct|1||hpcgear-x")
            return CompletedCommand(tuple(argv), 0, row + "\n", "", 0.0)
        return CompletedCommand(
            tuple(argv), 1, "",
            "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent "
            "connection to host:localhost:6819: Connection refused\n", 0.0)


def test_an_ended_job_waits_for_accounting_while_slurmdbd_is_down(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:
    """slurmdbd down (issue 11 chaos tier): an ended job is not decided without its
    accounting; the poll step fails as transient and the job keeps its state."""
    from hpcgear.scheduler.base import SchedulerUnavailableError

    ctx, rt = setup
    rt.backend = SlurmBackend(DbdDownRunner())
    pid = _project_ids(ctx)
    jid = _job(ctx, user="alice", project=pid["p1"], state="running", native_id="201",
               last_seen=dt.datetime.now(dt.UTC), scheduler_state="RUNNING")
    with pytest.raises(SchedulerUnavailableError) as err:
        poll_jobs(ctx, rt, CycleReport(site="t"))
    assert "Connection refused" in err.value.message
    with ctx.db.session() as s:
        job = s.get(Job, jid)
        assert job is not None and job.state == "running"
        assert not (job.scheduler_info or {}).get("accounting")


class DbdBackRunner(DbdDownRunner):
    """slurmdbd is back but has not received slurmctld's backlog: sacct answers empty."""

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        if argv[0] == "sacct":
            self.calls.append(tuple(argv))
            return CompletedCommand(tuple(argv), 0, "", "", 0.0)
        return super().run(argv, timeout=timeout, input=input)


def _poll_through_the_accounting_wait(ctx: ControllerContext, rt: SiteRuntime,
                                     jid: str) -> Job:
    """Poll once (the ended job, with no sacct record yet, waits for it), move the start
    of its wait ACCOUNTING_WAIT back, poll again; the job's row after that."""
    from hpcgear.controller.poll import ACCOUNTING_WAIT

    poll_jobs(ctx, rt, CycleReport(site="t"))
    with ctx.db.session() as s:
        job = s.get(Job, jid)
        assert job is not None and job.state == "running", "waits for sacct"
        seen = dt.datetime.fromisoformat(job.scheduler_info["ended_seen"])
        job.scheduler_info = {"ended_seen": (seen - ACCOUNTING_WAIT).isoformat()}
    poll_jobs(ctx, rt, CycleReport(site="t"))
    with ctx.db.session() as s:
        job = s.get(Job, jid)
        assert job is not None
        return job


def test_an_ended_job_waits_a_little_for_lagging_accounting(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:
    """After a slurmdbd outage sacct lags the queue: the ended job waits (up to
    ACCOUNTING_WAIT) for its usage figures, then is decided without them."""
    ctx, rt = setup
    rt.backend = SlurmBackend(DbdBackRunner())
    pid = _project_ids(ctx)
    jid = _job(ctx, user="alice", project=pid["p1"], state="running", native_id="201",
               last_seen=dt.datetime.now(dt.UTC), scheduler_state="RUNNING")
    job = _poll_through_the_accounting_wait(ctx, rt, jid)
    assert job.state == "failed", "decided once the wait is over"
    assert "no exit record" in (job.failure_message or "")


def test_a_job_that_left_the_queue_waits_a_little_for_lagging_accounting(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:
    """A job can leave the queue (MinJobAge) while slurmdbd is down; once slurmdbd is
    back, sacct still lacks slurmctld's backlog for a while. Its exit record is
    complete, but deciding on it at once would keep no usage figures for good: it waits
    (up to ACCOUNTING_WAIT) as an ended job still in the queue does, then is decided."""
    import json

    from hpcgear.controller.resolve import attempt_paths

    ctx, rt = setup
    rt.backend = SlurmBackend(GoneRunner())  # squeue and sacct know nothing
    pid = _project_ids(ctx)
    jid = _job(ctx, user="alice", project=pid["p1"], state="running", native_id="201",
               last_seen=dt.datetime.now(dt.UTC), scheduler_state="RUNNING")
    with ctx.db.session() as s:
        exit_json = Path(attempt_paths(rt.site, s.get(Job, jid)).exit_json)  # type: ignore[arg-type]
    exit_json.parent.mkdir(parents=True)
    exit_json.write_text(json.dumps({
        "schema": 1, "complete": True, "job_id": jid, "attempt": 1, "rc": 0, "signal": None,
        "timed_out": False, "started": True, "boot_failed": False, "boot_attempts": 1,
        "error": None, "host": "n1", "runtime_version": None, "slurm_job_id": "201",
        "slurm_array_task_id": None, "start_time": None, "end_time": None, "elapsed_s": 1,
    }))
    job = _poll_through_the_accounting_wait(ctx, rt, jid)
    assert job.state == "staging", "decided on its exit record"
