"""Scheduler queries per controller cycle do not grow with the number of tracked jobs.

Issue 10's target: at most 2 scheduler queries per cycle (one ``squeue``, one
``sacct`` for everything that ended, finishing included) whether 10, 1,000 or
10,000 jobs are tracked. The real controller cycle and the real ``SlurmBackend``
run; the fake sits at the subprocess boundary only: a small SLURM that answers
``squeue``/``sacct`` argv from a job table, in SLURM's own output formats, and
counts every command it is asked to run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from hpcgear.config.site import load_site_text
from hpcgear.controller.context import ControllerContext
from hpcgear.controller.cycle import run_cycle
from hpcgear.controller.sites import SiteRuntime
from hpcgear.db.models import Container, Gear, Job, JobEvent
from hpcgear.db.session import Database, create_db_engine, upgrade
from hpcgear.scheduler.runner import CompletedCommand
from hpcgear.scheduler.slurm import SlurmBackend
from hpcgear.scheduler.transport import LocalTransport
from hpcgear.storage.objects import ObjectStore

REPO = Path(__file__).resolve().parents[2]
QUERIES = ("squeue", "sacct", "scontrol", "sinfo")

SITE = """\
name: t
scheduler: slurm
scratch_root: {scratch}/{{user}}
storage_root: {storage}
runtime:
  image_cache: {images}
partitions:
  debug: {{max_time: 2h, default: true}}
"""


class FakeSlurm:
    """squeue/sacct answers from a job table (native id -> (state, reason)); counts calls.

    ``squeue --jobs=A,B`` lists the jobs asked for (an array's id lists all its
    tasks), ``squeue --me`` lists every job; ``sacct --jobs=`` gives an allocation
    row and a ``.batch`` step row per ended job it knows.
    """

    def __init__(self) -> None:
        self.queue: dict[str, tuple[str, str]] = {}
        self.accounting: dict[str, str] = {}
        self.names: dict[str, str] = {}  # native id -> job name (hpcgear-<job id>)
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        argv = tuple(argv)
        self.calls.append(argv)
        if argv[0] == "squeue":
            return CompletedCommand(argv, 0, self._squeue(argv), "", 0.0)
        if argv[0] == "sacct":
            return CompletedCommand(argv, 0, self._sacct(argv), "", 0.0)
        if argv[0] == "scancel":
            return CompletedCommand(argv, 0, "", "", 0.0)
        if argv[:2] == ("scontrol", "release"):
            for native in argv[2].split(","):
                state, _reason = self.queue[native]
                self.queue[native] = (state, "None")
            return CompletedCommand(argv, 0, "", "", 0.0)
        return CompletedCommand(argv, 1, "", f"{argv[0]}: not in this fake\n", 0.0)

    @staticmethod
    def _ids(argv: tuple[str, ...]) -> set[str] | None:
        for a in argv:
            if a.startswith("--jobs="):
                return set(a.removeprefix("--jobs=").split(","))
        return None

    def _squeue(self, argv: tuple[str, ...]) -> str:
        asked = self._ids(argv)
        lines = []
        for native, (state, reason) in self.queue.items():
            base, _, task = native.partition("_")
            if asked is not None and native not in asked and base not in asked:
                continue
            lines.append(
                f"{native}|{base}|{task or 'N/A'}|{state}|{reason}|"
                f"{'vm' if state != 'PENDING' else ''}|debug|0:01|10:00|"
                f"2026-12-01T00:00:00|N/A|normal|acct|1|hpcgear:x:1|{self.names.get(native, '')}"
            )
        return "\n".join(lines) + "\n" if lines else ""

    def _sacct(self, argv: tuple[str, ...]) -> str:
        """Rows in the ``--format=`` fields asked for; steps unless ``--allocations``."""
        asked = self._ids(argv) or set()
        fields = next(a for a in argv if a.startswith("--format=")).removeprefix(
            "--format=").split(",")
        rows = []
        for native, state in self.accounting.items():
            if native not in asked and native.partition("_")[0] not in asked:
                continue
            alloc = dict.fromkeys(fields, "")
            alloc |= dict(JobID=native, JobIDRaw=native, JobName=self.names.get(native, ""),
                         State=state, ExitCode="0:0", ElapsedRaw="1",
                         Submit="2026-12-01T00:00:00", Start="2026-12-01T00:00:01",
                         End="2026-12-01T00:00:02", NodeList="vm", Partition="debug",
                         QOS="normal", Account="acct", AllocCPUS="1", ReqMem="100M",
                         TimelimitRaw="10", Reason="None", TotalCPU="00:00.100")
            alloc = {f: alloc[f] for f in fields}
            step = dict.fromkeys(fields, "")
            step |= dict(JobID=f"{native}.batch", State=state, ElapsedRaw="1",
                         MaxRSS="1024K", TotalCPU="00:00.100")
            step = {f: step[f] for f in fields}
            rows.append("|".join(alloc.values()))
            if "--allocations" not in argv:
                rows.append("|".join(step.values()))
        return "\n".join(rows) + "\n" if rows else ""

    def queries(self) -> list[str]:
        return [c[0] for c in self.calls if c[0] in QUERIES]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One migrated SQLite database with users, a project and a gear (copied per test)."""
    from hpcgear.gears.service import install_gear
    from hpcgear.hierarchy import service as svc

    root = tmp_path_factory.mktemp("pollscale")
    engine = create_db_engine(f"sqlite:///{root / 'base.db'}", create_dirs=True)
    upgrade(engine)
    db = Database(engine)
    sif = root / "x.sif"
    sif.write_bytes(b"sif")
    with db.session() as s:
        svc.add_user(s, None, "admin", site_admin=True)
        svc.add_user(s, "admin", "alice")
        svc.create_group(s, "admin", "g")
        svc.create_project(s, "admin", "g/p")
        svc.ensure_path(s, "admin", "g/p/s/ses")
        install_gear(s, ObjectStore(root / "store"), "admin", REPO / "containers" / "test-gear",
                     image=str(sif))
    db.dispose()
    yield {"root": root, "db": root / "base.db", "store": root / "store"}


def _populate(db: Database, rows: list[dict[str, Any]]) -> None:
    with db.session() as s:
        gear = s.scalars(select(Gear)).one()
        dest = s.scalars(select(Container).where(Container.type == "session")).one()
        common = dict(gear_id=gear.id, site="t", config={}, inputs=[],
                      resources={"cpus": 1, "mem_mb": 100, "time_minutes": 10},
                      destination_type="session", destination_id=dest.id,
                      project_id=dest.project_id, tags=["hpc"], origin_type="user",
                      origin_id="alice", attempt=1, state_seq=1, scheduler_info={})
        s.execute(insert(Job), [{**common, **r} for r in rows])


def _controller(base: dict[str, Any], tmp_path: Path, db: Database,
                slurm: FakeSlurm) -> tuple[ControllerContext, SiteRuntime]:
    """The controller's context and the test site on ``slurm``."""
    from hpcgear.config.settings import default_settings

    site = load_site_text(SITE.format(scratch=tmp_path / "scr", storage=tmp_path / "st",
                                      images=tmp_path / "img"))
    ctx = ControllerContext(db=db, store=ObjectStore(base["store"]),
                            settings=default_settings(tmp_path / "c.yaml"), actor="ctl")
    rt = SiteRuntime(site=site, transport=LocalTransport(), backend=SlurmBackend(slurm),
                     local_files=True, max_array_size=1001, max_job_count=100_000)
    return ctx, rt


def _cycle_queries(base: dict[str, Any], tmp_path: Path, tracked: int) -> tuple[list[str], Any]:
    """Run one whole controller cycle with ``tracked`` jobs in SLURM's queue."""
    import shutil


    shutil.copy(base["db"], tmp_path / "h.db")
    db = Database(create_db_engine(f"sqlite:///{tmp_path / 'h.db'}"))
    slurm = FakeSlurm()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    rows: list[dict[str, Any]] = []
    # The bulk: half array tasks (as the controller submits them), half single
    # jobs (worst case for the id list); pending and unchanged since last cycle.
    for i in range(tracked):
        native = f"{500_000 + i // 1000}_{i % 1000}" if i % 2 else str(1_000_000 + i)
        rows.append(dict(id=f"q{i:09d}", state="queued", native_id=native,
                         scheduler_state="PENDING", pending_reason="Priority",
                         last_seen=old))
        slurm.queue[native] = ("PENDING", "Priority")
    # A fixed handful that do something this cycle, at every scale:
    for i in range(3):  # started running
        rows.append(dict(id=f"r{i}", state="queued", native_id=f"2000{i}",
                         scheduler_state="PENDING", pending_reason="Priority", last_seen=old))
        slurm.queue[f"2000{i}"] = ("RUNNING", "None")
    for i in range(4):  # ended: still in squeue (MinJobAge) as COMPLETED / FAILED
        rows.append(dict(id=f"e{i}", state="running", native_id=f"3000{i}",
                         scheduler_state="RUNNING", last_seen=old))
        state = "COMPLETED" if i % 2 else "FAILED"
        slurm.queue[f"3000{i}"] = (state, "None")
        slurm.accounting[f"3000{i}"] = state
    for i in range(2):  # gone from squeue: sacct knows them
        rows.append(dict(id=f"g{i}", state="running", native_id=f"4000{i}",
                         scheduler_state="RUNNING", last_seen=old))
        slurm.accounting[f"4000{i}"] = "COMPLETED"
    for i in range(2):  # left in staging by an earlier cycle (needs accounting)
        rows.append(dict(id=f"st{i}", state="staging", native_id=f"5000{i}",
                         scheduler_state="COMPLETED", last_seen=old))
        slurm.accounting[f"5000{i}"] = "COMPLETED"
    for i in range(2):  # failed earlier: their logs are still to keep
        rows.append(dict(id=f"f{i}", state="failed", native_id=f"6000{i}",
                         scheduler_state="FAILED", failure_kind="gear_error", last_seen=old))
    slurm.names = {r["native_id"]: f"hpcgear-{r['id']}" for r in rows}
    _populate(db, rows)

    ctx, rt = _controller(base, tmp_path, db, slurm)
    report = run_cycle(ctx, rt)
    with db.session() as s:
        states = dict(s.execute(select(Job.id, Job.state).where(
            ~Job.id.like("q%"))).all())
        kept = set(s.scalars(select(JobEvent.job_id).where(JobEvent.kind == "log_archived")))
    db.dispose()
    return slurm.queries(), (report, states, kept)


@pytest.mark.parametrize("tracked", [10, 1000, 10_000])
def test_scheduler_queries_per_cycle_do_not_grow(
        base: dict[str, Any], tmp_path: Path, tracked: int) -> None:
    queries, (report, states, kept) = _cycle_queries(base, tmp_path, tracked)
    # the cycle did its work: started, ended, vanished, staged and failed jobs all moved
    assert all(states[f"r{i}"] == "running" for i in range(3)), states
    assert all(states[f"e{i}"] in ("failed", "complete") for i in range(4)), states
    assert all(states[f"g{i}"] != "running" for i in range(2)), states
    assert all(states[f"st{i}"] != "staging" for i in range(2)), states
    assert {"f0", "f1", "e0", "e2"} <= kept, kept
    assert report.finished >= 6
    # ...with one squeue and one sacct, at 10 and at 10,000 tracked jobs alike
    assert sorted(queries) == ["sacct", "squeue"], queries


def test_first_poll_records_new_jobs_in_bulk_and_skips_rows_changed_meanwhile(
        base: dict[str, Any], tmp_path: Path) -> None:
    """The first poll after an array went out: every task's first SLURM state in a
    few UPDATEs (not one per job), events as before, and a job another process
    changed while ``squeue`` ran is redone from its fresh row (a cancelled one is
    left alone)."""
    import shutil

    from sqlalchemy import event, update

    from hpcgear.controller.context import CycleReport
    from hpcgear.controller.poll import poll_jobs

    shutil.copy(base["db"], tmp_path / "h.db")
    db = Database(create_db_engine(f"sqlite:///{tmp_path / 'h.db'}"))
    n = 3000
    rows = [dict(id=f"n{i:06d}", state="queued", native_id=f"700_{i}") for i in range(n)]
    _populate(db, rows)

    class Racing(FakeSlurm):
        """Another process acts on two jobs while squeue runs."""

        def run(self, argv: Sequence[str], *, timeout: float,
                input: str | None = None) -> CompletedCommand:
            if argv[0] == "squeue":
                with db.session() as s:
                    s.execute(update(Job).where(Job.id == "n000001").values(
                        state_seq=Job.state_seq + 1, scheduler_info={"touched": True}))
                    s.execute(update(Job).where(Job.id == "n000002").values(
                        state_seq=Job.state_seq + 1, state="cancelled"))
            return super().run(argv, timeout=timeout, input=input)

    slurm = Racing()
    for i in range(n):
        slurm.queue[f"700_{i}"] = ("PENDING", "BeginTime")
    slurm.queue["700_3"] = ("RUNNING", "None")
    slurm.queue["700_4"] = ("RUNNING", "None")
    ctx, rt = _controller(base, tmp_path, db, slurm)
    updates: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            updates.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    report = CycleReport(site="t")
    poll_jobs(ctx, rt, report)
    event.remove(db.engine, "before_cursor_execute", count)

    # a handful of statements (two groups, chunked), not one per job
    assert len(updates) <= 6, len(updates)
    assert report.started == 2
    with db.session() as s:
        got = {r.id: r for r in s.execute(select(
            Job.id, Job.state, Job.scheduler_state, Job.pending_reason, Job.state_seq,
            Job.started, Job.scheduler_info, Job.last_seen))}
        reasons = s.execute(select(JobEvent.job_id, JobEvent.data).where(
            JobEvent.kind == "pending_reason")).all()
        moves = s.execute(select(JobEvent.job_id, JobEvent.old_state, JobEvent.new_state)
                          .where(JobEvent.kind == "state")).all()
    db.dispose()
    pending = [f"n{i:06d}" for i in range(n) if i not in (2, 3, 4)]
    for jid in pending:
        row = got[jid]
        assert (row.state, row.scheduler_state, row.pending_reason) == (
            "queued", "PENDING", "BeginTime"), row
        assert row.last_seen is not None
    # every row written once more (CAS counter moved), the raced one twice
    assert got["n000000"].state_seq == 2
    assert got["n000001"].state_seq == 3 and got["n000001"].scheduler_info == {"touched": True}
    # the job cancelled meanwhile is not rewritten
    assert (got["n000002"].state, got["n000002"].scheduler_state) == ("cancelled", None)
    for jid in ("n000003", "n000004"):
        assert (got[jid].state, got[jid].scheduler_state) == ("running", "RUNNING")
        assert got[jid].started is not None
    assert sorted(j for j, _ in reasons) == pending
    assert all(d == {"reason": "BeginTime"} for _, d in reasons)
    assert sorted(moves) == [("n000003", "queued", "running"), ("n000004", "queued", "running")]


def test_poll_releases_queued_tasks_a_crash_left_held(
        base: dict[str, Any], tmp_path: Path) -> None:
    """An array's tasks are ``queued`` with their SLURM ids before ``scontrol release``:
    a controller that died in between leaves them held by its own ``--hold``
    (``JobHeldUser``). The next poll releases them in one command, with an event
    each; an administrator's hold (``JobHeldAdmin``) is left alone."""
    import shutil

    from hpcgear.controller.context import CycleReport
    from hpcgear.controller.poll import poll_jobs

    shutil.copy(base["db"], tmp_path / "h.db")
    db = Database(create_db_engine(f"sqlite:///{tmp_path / 'h.db'}"))
    _populate(db, [dict(id=f"h{i}", state="queued", native_id=f"800_{i}") for i in range(5)])
    slurm = FakeSlurm()
    for i in range(3):
        slurm.queue[f"800_{i}"] = ("PENDING", "JobHeldUser")
    slurm.queue["800_3"] = ("PENDING", "JobHeldAdmin")
    slurm.queue["800_4"] = ("PENDING", "Priority")
    ctx, rt = _controller(base, tmp_path, db, slurm)
    report = CycleReport(site="t")
    poll_jobs(ctx, rt, report)
    releases = [c for c in slurm.calls if c[:2] == ("scontrol", "release")]
    assert releases == [("scontrol", "release", "800_0,800_1,800_2")], slurm.calls
    assert slurm.queue["800_3"] == ("PENDING", "JobHeldAdmin")
    assert not report.errors, report.errors
    with db.session() as s:
        events = dict(s.execute(select(JobEvent.job_id, JobEvent.message).where(
            JobEvent.kind == "release")).all())
    assert sorted(events) == ["h0", "h1", "h2"], events
    assert "interrupted submission" in events["h0"]
    # released: the next poll has nothing more to release
    slurm.calls.clear()
    poll_jobs(ctx, rt, CycleReport(site="t"))
    assert not [c for c in slurm.calls if c[:2] == ("scontrol", "release")]
    db.dispose()
