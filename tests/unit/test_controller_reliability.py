"""Issue 11's controller defects, each pinned: leases (cron, dead holders, fencing),
submit re-checks around sbatch, never-starting requests, SIGHUP, disk leaks,
system retries and the fault-injection hook.

Fakes sit at the subprocess boundary only (a runner answering like SLURM);
database tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hpcgear.controller.context import (
    ControllerContext,
    CycleReport,
    InjectedFault,
    LeaseLostError,
    fault_point,
    job_session,
)
from hpcgear.controller.lease import SiteLease, acquire_lease, holder_is_gone
from hpcgear.controller.sites import SiteRuntime
from hpcgear.controller.submit import submit_job
from hpcgear.db.models import ControllerLease, Job, JobEvent
from hpcgear.jobs.transitions import update_fields
from hpcgear.scheduler.runner import CompletedCommand
from hpcgear.scheduler.slurm import SlurmBackend
from hpcgear.scheduler.testing import load_recording
from tests.conftest import CliEnv
from tests.unit.test_controller_steps import _job, _project_ids, setup  # noqa: F401

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


class FakeSlurm:
    """Answers sbatch/scontrol/scancel/squeue/sacct like the dev cluster (recorded text)."""

    def __init__(self, *, refuse_release: str | None = None,
                 on_sbatch: Callable[[], None] | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.refuse_release = refuse_release
        self.on_sbatch = on_sbatch
        self.partitions = load_recording(FIXTURES / "scontrol_show_partition.json").stdout
        self.nodes = load_recording(FIXTURES / "sinfo_nodes.json").stdout

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        a = tuple(argv)
        self.calls.append(a)

        def ok(out: str = "", rc: int = 0, err: str = "") -> CompletedCommand:
            return CompletedCommand(a, rc, out, err, 0.0)

        if a[0] == "sbatch":
            if self.on_sbatch is not None:
                self.on_sbatch()
            return ok("555\n")
        if a[0] == "scontrol" and "release" in a:
            if self.refuse_release:
                return ok(rc=1, err=f"{self.refuse_release} for job 555\n")
            return ok()
        if a[0] == "scontrol" and "partition" in a:
            return ok(self.partitions)
        if a[0] == "sinfo":
            return ok(self.nodes)
        return ok()

    def named(self, command: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if command in " ".join(c[:3])]


def _rt(rt: SiteRuntime, runner: FakeSlurm, ctx: ControllerContext | None = None
        ) -> SiteRuntime:
    """The setup's site on ``runner``; the gear image counts as cached (no apptainer here)."""
    from sqlalchemy import select

    from hpcgear.db.models import Gear

    fresh = SiteRuntime(site=rt.site, transport=rt.transport, backend=SlurmBackend(runner),
                        local_files=True)
    assert ctx is not None
    with ctx.db.session() as s:
        fresh._images_checked.update(d for d in s.scalars(select(Gear.image_digest)) if d)
    return fresh


def _submitting(ctx: ControllerContext, pid: str, **resources: int) -> str:
    jid = _job(ctx, user="alice", project=pid, state="submitting")
    if resources:
        with job_session(ctx, jid) as (s, job):
            update_fields(s, job, resources={**job.resources, **resources})
    return jid


def _row(ctx: ControllerContext, jid: str) -> Job:
    with ctx.db.session() as s:
        job = s.get(Job, jid)
        assert job is not None
        return job


def _events(ctx: ControllerContext, jid: str) -> list[JobEvent]:
    from sqlalchemy import select

    with ctx.db.session() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == jid)
                              .order_by(JobEvent.id)).all())


# ------------------------------------------------------------------- leases


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_gone_holder_on_this_host_does_not_block(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    ctx, _ = setup
    host = socket.gethostname()
    dead = f"{host}:{_dead_pid()}"
    assert holder_is_gone(dead)
    assert acquire_lease(ctx, "t", dead, seconds=600)
    assert acquire_lease(ctx, "t", f"{host}:{os.getpid()}", seconds=60), \
        "a SIGKILLed controller's lease must not block its successor"
    alive = f"{host}:{os.getppid()}"
    assert not holder_is_gone(alive)
    assert acquire_lease(ctx, "u", alive, seconds=600)
    assert not acquire_lease(ctx, "u", f"{host}:{os.getpid()}", seconds=60), \
        "a live holder keeps its lease"
    assert not acquire_lease(ctx, "u", "other-host:1", seconds=60)


def test_a_stale_leader_write_is_refused_and_the_lease_is_renewed(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    from hpcgear.controller.claim import claim_jobs
    from hpcgear.controller.cycle import run_cycle

    ctx, rt = setup
    pid = _project_ids(ctx)["p1"]
    jid = _job(ctx, user="alice", project=pid)
    lease = SiteLease(ctx.db, "host-a:1", seconds=3)
    ctx.fence = lease
    assert acquire_lease(ctx, "t", "host-a:1", seconds=3)
    lease.taken("t")
    # Renewal during a pass: once a third of the lease has passed, a job write renews it.
    time.sleep(1.2)
    with ctx.db.session() as s:
        before = s.get(ControllerLease, "t").expires  # type: ignore[union-attr]
    with job_session(ctx, jid) as (_s, _job_row):
        pass
    with ctx.db.session() as s:
        after = s.get(ControllerLease, "t").expires  # type: ignore[union-attr]
    assert after > before, "the lease is renewed during the pass, not only once per pass"
    # Another controller takes over (our lease expired while we were stuck).
    with ctx.db.session() as s:
        row = s.get(ControllerLease, "t")
        assert row is not None
        row.expires = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert acquire_lease(ctx, "t", "host-b:2", seconds=60)
    with pytest.raises(LeaseLostError, match="no longer leads site t"):
        claim_jobs(ctx, rt)
    assert _row(ctx, jid).state == "pending", "the stale leader's write was refused"
    report = run_cycle(ctx, rt)
    assert any("no longer leads" in e for e in report.errors)
    assert _row(ctx, jid).state == "pending"


def test_controller_once_releases_and_refuses_to_run_silently(cli_env: CliEnv) -> None:
    from hpcgear.config.settings import load_settings
    from hpcgear.db.session import Database

    cli_env.ok("controller", "once")
    cli_env.ok("controller", "once")  # a second run right after is not a silent no-op
    db = Database.open(load_settings(str(cli_env.config)).database_url)
    with db.session() as s:
        assert s.query(ControllerLease).count() == 0, "once releases its lease on exit"
        s.add(ControllerLease(site="local", holder="elsewhere:1",
                              expires=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3),
                              heartbeat=dt.datetime.now(dt.UTC)))
    res = cli_env.run("controller", "once")
    assert res.code == 6, res.err
    assert "another controller leads local by elsewhere:1" in res.err
    assert "--wait" in res.err and "Traceback" not in res.err
    t0 = time.monotonic()
    cli_env.ok("controller", "once", "--wait")
    assert time.monotonic() - t0 >= 1, "it waited for the lease to expire"
    db.dispose()


# ------------------------------------------------------------ around sbatch


def test_cancel_during_sbatch_scancels_instead_of_releasing(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    from hpcgear.jobs.service import cancel_job

    ctx, rt = setup
    jid = _submitting(ctx, _project_ids(ctx)["p1"])

    def user_cancels() -> None:
        with ctx.db.session() as s:
            cancel_job(s, "alice", jid)

    runner = FakeSlurm(on_sbatch=user_cancels)
    submit_job(ctx, _rt(rt, runner, ctx), jid, CycleReport(site="t"))
    job = _row(ctx, jid)
    assert job.state == "cancelled"
    assert not runner.named("scontrol release"), "a cancelled job is never released"
    assert [c for c in runner.calls if c[0] == "scancel" and "555" in c], runner.calls
    assert any(e.kind == "scancel" for e in _events(ctx, jid))


def test_cancel_before_sbatch_submits_nothing(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    from hpcgear.jobs.service import cancel_job

    ctx, rt = setup
    jid = _submitting(ctx, _project_ids(ctx)["p1"])
    runner = FakeSlurm()
    real_stage = rt.transport.write_text

    def cancel_while_staging(path: str, text: str, **kw: object) -> None:
        real_stage(path, text, **kw)  # type: ignore[arg-type]
        if path.endswith("job.sbatch"):
            with ctx.db.session() as s:
                cancel_job(s, "alice", jid)

    rt.transport.write_text = cancel_while_staging  # type: ignore[method-assign]
    submit_job(ctx, _rt(rt, runner, ctx), jid, CycleReport(site="t"))
    assert _row(ctx, jid).state == "cancelled"
    assert not [c for c in runner.calls if c[0] == "sbatch"], "no sbatch for a cancelled job"


def test_a_release_slurm_refuses_fails_as_rejected(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    ctx, rt = setup
    jid = _submitting(ctx, _project_ids(ctx)["p1"])
    runner = FakeSlurm(refuse_release="Requested partition configuration not available now")
    report = CycleReport(site="t")
    submit_job(ctx, _rt(rt, runner, ctx), jid, report)
    job = _row(ctx, jid)
    assert job.state == "failed" and job.failure_kind == "rejected", job.failure_message
    assert "Requested partition configuration not available now" in job.failure_message
    assert "limit of the partition" in job.failure_message, "plain words, not only SLURM's"
    assert [c for c in runner.calls if c[0] == "scancel" and "555" in c], "the held job goes"
    assert report.failed == 1
    # The next cycle does not retry it: nothing is left in `submitting`.
    runner.calls.clear()
    submit_job(ctx, _rt(rt, runner, ctx), jid, report)
    assert not runner.calls


@pytest.mark.parametrize(("resources", "words"), [
    ({"cpus": 1000}, "1000 CPUs per node"),
    ({"mem_mb": 10_000_000}, "memory per node"),
    ({"time_minutes": 100_000}, "time limit"),
])
def test_live_partition_limits_refuse_before_sbatch(
        setup: tuple[ControllerContext, SiteRuntime],  # noqa: F811
        resources: dict[str, int], words: str) -> None:
    ctx, rt = setup
    jid = _submitting(ctx, _project_ids(ctx)["p1"], **resources)
    runner = FakeSlurm()
    frt = _rt(rt, runner, ctx)
    submit_job(ctx, frt, jid, CycleReport(site="t"))
    job = _row(ctx, jid)
    assert job.state == "failed" and job.failure_kind == "rejected"
    assert words in (job.failure_message or ""), job.failure_message
    assert not [c for c in runner.calls if c[0] == "sbatch"]
    # The limits are cached per site: a second job asks SLURM no second time.
    jid2 = _submitting(ctx, _project_ids(ctx)["p1"], **resources)
    submit_job(ctx, frt, jid2, CycleReport(site="t"))
    assert len(runner.named("scontrol --oneliner show")) == 1


def test_a_fitting_request_is_submitted_and_released(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    ctx, rt = setup
    jid = _submitting(ctx, _project_ids(ctx)["p1"])
    runner = FakeSlurm()
    submit_job(ctx, _rt(rt, runner, ctx), jid, CycleReport(site="t"))
    job = _row(ctx, jid)
    assert job.state == "queued" and job.native_id == "555", (job.failure_kind, job.failure_message)
    assert runner.named("scontrol release")


def _array(ctx: ControllerContext, rt: SiteRuntime, runner: FakeSlurm, n: int = 3
           ) -> tuple[list[str], CycleReport]:
    from hpcgear.controller.arrays import submit_array

    pid = _project_ids(ctx)["p1"]
    ids = [_submitting(ctx, pid) for _ in range(n)]
    report = CycleReport(site="t")
    submit_array(ctx, _rt(rt, runner, ctx), ids, report)
    return ids, report


def test_an_array_is_queued_with_its_slurm_ids_in_one_write_then_released(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    from sqlalchemy import event

    ctx, rt = setup
    runner = FakeSlurm()
    writes: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            writes.append(statement)

    event.listen(ctx.db.engine, "before_cursor_execute", count)
    try:
        ids, report = _array(ctx, rt, runner)
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", count)
    assert report.submitted == 3 and not report.errors, report
    for i, jid in enumerate(ids):
        job = _row(ctx, jid)
        assert (job.state, job.native_id) == ("queued", f"555_{i}")
        moves = [e for e in _events(ctx, jid) if e.kind == "state"]
        assert [(e.old_state, e.new_state) for e in moves] == [("submitting", "queued")]
        assert moves[0].message == f"queued as 555_{i} (held until released)"
    # the write-ahead intent, then ONE write for the SLURM ids and the move (per-row
    # statements of one executemany count once here), then the release of the array
    assert len(writes) == 2, writes
    sbatch = [i for i, c in enumerate(runner.calls) if c[0] == "sbatch"]
    release = [i for i, c in enumerate(runner.calls) if "release" in c]
    assert len(sbatch) == 1 and "--hold" in runner.calls[sbatch[0]]
    assert len(release) == 1 and runner.calls[release[0]][-1] == "555" and release > sbatch


def test_an_array_sbatch_that_ran_before_a_crash_is_adopted_by_name(
        setup: tuple[ControllerContext, SiteRuntime],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller dies after sbatch, before the SLURM ids are written: the next
    cycle finds the array by its name and records every task as it was numbered by
    the intent, in one write, with one event each, then releases it."""
    from hpcgear.controller import context
    from hpcgear.controller.arrays import adopt_or_reset_array, submit_array

    class Remembers(FakeSlurm):
        def run(self, argv: Sequence[str], *, timeout: float,
                input: str | None = None) -> CompletedCommand:
            if argv[0] == "sacct" and any("hpcgear-array-" in a for a in argv):
                self.calls.append(tuple(argv))
                return CompletedCommand(tuple(argv), 0, "555_0\n555_1\n555_2\n", "", 0.0)
            return super().run(argv, timeout=timeout, input=input)

    ctx, rt = setup
    pid = _project_ids(ctx)["p1"]
    ids = [_submitting(ctx, pid) for _ in range(3)]
    runner = Remembers()
    frt = _rt(rt, runner, ctx)
    monkeypatch.setattr(context, "_fault_hits", {})
    monkeypatch.setenv("HPCGEAR_FAULT", "array.sbatch:1:raise")
    with pytest.raises(InjectedFault):
        submit_array(ctx, frt, ids, CycleReport(site="t"))
    monkeypatch.delenv("HPCGEAR_FAULT")
    array_id = _row(ctx, ids[0]).array_id
    assert array_id and [_row(ctx, j).native_id for j in ids] == [None] * 3
    report = CycleReport(site="t")
    adopt_or_reset_array(ctx, frt, array_id, report)
    assert report.adopted == 3 and not report.errors, report
    for i, jid in enumerate(ids):
        job = _row(ctx, jid)
        assert (job.state, job.native_id) == ("queued", f"555_{i}")
        moves = [e for e in _events(ctx, jid) if e.kind == "state"]
        assert [(m.old_state, m.new_state, m.message, m.data) for m in moves] == [(
            "submitting", "queued",
            f"queued as 555_{i} (adopted after a restart, held until released)",
            {"array_job_id": "555"})]
    assert len([c for c in runner.calls if c[0] == "sbatch"]) == 1
    assert [c for c in runner.calls if "release" in c][-1][-1] == "555"


def test_a_cancel_during_array_sbatch_scancels_that_task_before_the_release(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    from hpcgear.jobs.service import cancel_job

    ctx, rt = setup
    victim: list[str] = []

    def user_cancels() -> None:
        with ctx.db.session() as s:
            victim.append(s.scalars(select(Job.id).where(Job.state == "submitting")
                                    .order_by(Job.created)).all()[1])
            cancel_job(s, "alice", victim[0])

    runner = FakeSlurm(on_sbatch=user_cancels)
    ids, report = _array(ctx, rt, runner)
    assert victim == [ids[1]]
    assert _row(ctx, ids[1]).state == "cancelled" and _row(ctx, ids[1]).native_id is None
    assert [_row(ctx, j).state for j in (ids[0], ids[2])] == ["queued", "queued"]
    cancel = next(i for i, c in enumerate(runner.calls) if c[0] == "scancel")
    release = next(i for i, c in enumerate(runner.calls) if "release" in c)
    assert "555_1" in runner.calls[cancel] and cancel < release, runner.calls
    assert report.submitted == 2


def test_a_release_slurm_refuses_fails_the_queued_array_as_rejected(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    ctx, rt = setup
    runner = FakeSlurm(refuse_release="Requested partition configuration not available now")
    ids, report = _array(ctx, rt, runner)
    for jid in ids:
        job = _row(ctx, jid)
        assert job.state == "failed" and job.failure_kind == "rejected", job.state
        assert "limit of the partition" in (job.failure_message or "")
    assert [c for c in runner.calls if c[0] == "scancel" and "555" in c], runner.calls
    assert report.failed == 3


def test_a_release_that_times_out_leaves_the_array_queued_for_the_poll(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    class Unreachable(FakeSlurm):
        def run(self, argv: Sequence[str], *, timeout: float,
                input: str | None = None) -> CompletedCommand:
            if "release" in argv:
                self.calls.append(tuple(argv))
                return CompletedCommand(tuple(argv), 1, "",
                                        "slurm_load_jobs error: Socket timed out on send/recv "
                                        "operation\n", 0.0)
            return super().run(argv, timeout=timeout, input=input)

    ctx, rt = setup
    ids, report = _array(ctx, rt, Unreachable())
    assert [_row(ctx, j).state for j in ids] == ["queued"] * 3
    assert any("release" in e for e in report.errors), report.errors


class NumberedSlurm(FakeSlurm):
    """FakeSlurm whose sbatch gives each array its own id (555, 556, ...) and whose
    release refuses the arrays in ``refuse`` (SLURM's text, one line per job)."""

    def __init__(self, *, refuse: Sequence[str] = (),
                 on_sbatch: Callable[[int], None] | None = None,
                 on_release: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.refuse, self.on_nth_sbatch, self.sbatches = list(refuse), on_sbatch, 0
        self.on_release = on_release

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        a = tuple(argv)
        if a[0] == "sbatch":
            self.calls.append(a)
            self.sbatches += 1
            if self.on_nth_sbatch is not None:
                self.on_nth_sbatch(self.sbatches)
            return CompletedCommand(a, 0, f"{554 + self.sbatches}\n", "", 0.0)
        if a[0] == "scontrol" and "release" in a and self.on_release is not None:
            self.on_release()
        if a[0] == "scontrol" and "release" in a and self.refuse:
            self.calls.append(a)
            asked = a[-1].split(",")
            err = "".join(f"Requested partition configuration not available now for job {j}\n"
                          for j in self.refuse if j in asked)
            return CompletedCommand(a, 1 if err else 0, "", err, 0.0)
        return super().run(argv, timeout=timeout, input=input)


def _two_arrays(ctx: ControllerContext, rt: SiteRuntime, runner: FakeSlurm
                ) -> tuple[list[str], list[str], CycleReport]:
    """Two arrays in one cycle (three jobs each; they differ in memory), sent by
    ``submit_pending``: the ids of each, in order, and the cycle's report."""
    from hpcgear.controller.cycle import submit_pending

    pid = _project_ids(ctx)["p1"]
    first = [_submitting(ctx, pid, mem_mb=1000) for _ in range(3)]
    second = [_submitting(ctx, pid, mem_mb=2000) for _ in range(3)]
    report = CycleReport(site="t")
    submit_pending(ctx, _rt(rt, runner, ctx), report, None)
    return first, second, report


def test_a_cycle_releases_all_its_arrays_with_one_scontrol_after_the_last_sbatch(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    ctx, rt = setup
    runner = NumberedSlurm()
    first, second, report = _two_arrays(ctx, rt, runner)
    natives = {_row(ctx, j).native_id for j in first + second}
    assert {_row(ctx, j).state for j in first + second} == {"queued"}
    assert natives == {f"{base}_{i}" for base in (555, 556) for i in range(3)}, natives
    releases = [i for i, c in enumerate(runner.calls) if "release" in c]
    sbatches = [i for i, c in enumerate(runner.calls) if c[0] == "sbatch"]
    assert len(releases) == 1 and len(sbatches) == 2 and releases[0] > sbatches[-1]
    assert runner.calls[releases[0]][-1] == "555,556"
    assert report.submitted == 6 and not report.errors, report


def test_each_arrays_sbatch_runs_after_its_intent_while_the_controller_works_on(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    """On a local transport an array's sbatch runs in a thread once its intent is
    committed, while the controller records the array before it and writes the
    next one's intent: each array's own order (intent, sbatch, record) holds."""
    import threading

    seen: list[tuple[int, bool, set[tuple[str, bool]]]] = []

    def look(nth: int) -> None:  # as SLURM takes the nth array: its intent is committed
        with ctx.db.session() as s:
            rows = s.execute(select(Job.state, Job.array_id, Job.resources)).all()
        mine = {(st, a is not None) for st, a, r in rows if r["mem_mb"] == 1000 * nth}
        seen.append((nth, threading.current_thread() is threading.main_thread(), mine))

    ctx, rt = setup
    runner = NumberedSlurm(on_sbatch=look)
    first, second, report = _two_arrays(ctx, rt, runner)
    assert [(n, main) for n, main, _states in seen] == [(1, False), (2, False)]
    assert all(states == {("submitting", True)} for _n, _main, states in seen), seen
    assert {_row(ctx, j).state for j in first + second} == {"queued"}
    assert {_row(ctx, j).native_id.split("_")[0] for j in first} == {"555"}
    assert {_row(ctx, j).native_id.split("_")[0] for j in second} == {"556"}
    assert report.submitted == 6 and not report.errors, report


def test_a_refused_release_fails_only_that_arrays_jobs_when_released_together(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    ctx, rt = setup
    runner = NumberedSlurm(refuse=["556"])
    first, second, report = _two_arrays(ctx, rt, runner)
    by_base = {_row(ctx, j).native_id.split("_")[0]: j for j in first + second
               if _row(ctx, j).native_id}
    refused = [j for j in first + second if _row(ctx, j).state == "failed"]
    assert len(refused) == 3 and {_row(ctx, j).failure_kind for j in refused} == {"rejected"}
    assert [_row(ctx, j).state for j in first + second].count("queued") == 3
    assert "556" in by_base and "555" in by_base
    assert ("scancel", "556") in [c[:1] + c[-1:] for c in runner.calls if c[0] == "scancel"]
    assert not [c for c in runner.calls if c[0] == "scancel" and "555" in " ".join(c)]
    assert report.failed == 3


def test_a_job_cancelled_while_its_array_waits_for_the_joint_release_is_scancelled(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    from hpcgear.jobs.service import cancel_job

    ctx, rt = setup
    victim: list[str] = []

    def cancel_a_recorded_task() -> None:
        with ctx.db.session() as s:  # both arrays are recorded, still held
            victim.append(s.scalars(select(Job.id).where(Job.state == "queued")
                                    .order_by(Job.native_id)).all()[1])
            cancel_job(s, "alice", victim[0])

    runner = NumberedSlurm(on_release=cancel_a_recorded_task)
    _two_arrays(ctx, rt, runner)
    assert victim and _row(ctx, victim[0]).native_id == "555_1"
    release = next(i for i, c in enumerate(runner.calls) if "release" in c)
    cancels = [i for i, c in enumerate(runner.calls) if c[0] == "scancel" and "555_1" in c]
    assert cancels and cancels[0] > release, runner.calls


def config_not_json(ctx: ControllerContext, monkeypatch: pytest.MonkeyPatch, jid: str) -> None:
    """Job ``jid``'s config.json gets a NaN: SQLite stores one in a job's config, so
    there the row holds it; PostgreSQL's JSON columns refuse it, so there the
    document is given it as it is built."""
    from hpcgear.controller.resolve import SpecMaker

    if ctx.db.engine.dialect.name == "sqlite":
        with job_session(ctx, jid) as (s, job):
            update_fields(s, job, config={"sleep_seconds": float("nan")})
        return
    built = SpecMaker.config_json

    def with_nan(self: SpecMaker, job: Any, spec: Any, *a: Any, **kw: Any) -> Any:
        doc = built(self, job, spec, *a, **kw)
        if job.id == jid:
            doc["config"] = {**doc["config"], "sleep_seconds": float("nan")}
        return doc

    monkeypatch.setattr(SpecMaker, "config_json", with_nan)


def test_an_array_task_whose_config_is_not_json_fails_alone(
        setup: tuple[ControllerContext, SiteRuntime],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The array path encodes each config.json once, at stage-in: a task whose
    document is not JSON data fails there (input_staging); the others go."""
    from hpcgear.controller.arrays import submit_array

    ctx, rt = setup
    pid = _project_ids(ctx)["p1"]
    ids = [_submitting(ctx, pid) for _ in range(3)]
    config_not_json(ctx, monkeypatch, ids[1])
    report = CycleReport(site="t")
    submit_array(ctx, _rt(rt, FakeSlurm(), ctx), ids, report)
    bad = _row(ctx, ids[1])
    assert (bad.state, bad.failure_kind) == ("failed", "input_staging")
    assert "config.json is not JSON data" in (bad.failure_message or "")
    assert [_row(ctx, j).state for j in (ids[0], ids[2])] == ["queued", "queued"]


def test_pending_jobs_of_an_array_are_claimed_by_its_intent(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    """Jobs that go out as an array stay ``pending`` until the array's write-ahead
    intent: that one compare-and-set claims them (``sbatch`` event, pending ->
    submitting); no separate claim write. A job that goes out alone is claimed as
    before."""
    from hpcgear.controller.cycle import submit_pending

    ctx, rt = setup
    pids = _project_ids(ctx)
    # two: the site's cap per user (another scratch user's job goes out alone)
    ids = [_job(ctx, user="alice", project=pids["p1"]) for _ in range(2)]
    alone = _job(ctx, user="bob", project=pids["p2"])
    runner = FakeSlurm()
    report = CycleReport(site="t")
    submit_pending(ctx, _rt(rt, runner, ctx), report, None)
    assert report.claimed == 3 and report.submitted == 3, report
    for jid in ids:
        moves = [(e.kind, e.old_state, e.new_state) for e in _events(ctx, jid) if e.new_state]
        assert moves == [("sbatch", "pending", "submitting"),
                         ("state", "submitting", "queued")], moves  # the test made the row
    assert ("state", "pending", "submitting") in [
        (e.kind, e.old_state, e.new_state) for e in _events(ctx, alone)]
    sbatch = [c[-1] for c in runner.calls if c[0] == "sbatch"]
    assert len(sbatch) == 2 and sum(p.endswith("array.sbatch") for p in sbatch) == 1, sbatch
    # The first task's intent event carries the runtime argv; the others (written in
    # one INSERT ... SELECT) name their task index and point at it.
    array_id = _row(ctx, ids[0]).array_id
    intents = [[e for e in _events(ctx, j) if e.kind == "sbatch"] for j in ids]
    assert [len(i) for i in intents] == [1, 1]
    first, other = intents[0][0], intents[1][0]
    assert first.message == f"submitting as task 0 of array {array_id} with --hold"
    assert first.data["index"] == 0 and first.data["argv"] and first.data["argv_template"]
    assert other.message == f"submitting as task 1 of array {array_id} with --hold"
    assert other.data == {"array_id": array_id, "argv_from": ids[0]}
    assert (other.actor, other.old_state, other.new_state) == (ctx.actor, "pending",
                                                               "submitting")
    assert _row(ctx, ids[1]).array_index == 1


def test_the_intent_of_an_array_of_submitting_jobs_claims_nothing(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    """Jobs already ``submitting`` (claimed one by one, or left by an error) that go
    out as an array get one intent event each, with no state move."""
    from hpcgear.controller.cycle import submit_pending

    ctx, rt = setup
    pid = _project_ids(ctx)["p1"]
    ids = [_submitting(ctx, pid) for _ in range(3)]
    report = CycleReport(site="t")
    submit_pending(ctx, _rt(rt, FakeSlurm(), ctx), report, None)
    assert report.submitted == 3 and report.claimed == 0, report
    array_id = _row(ctx, ids[0]).array_id
    for index, jid in enumerate(ids):
        (intent,) = [e for e in _events(ctx, jid) if e.kind == "sbatch"]
        assert intent.message == f"submitting as task {index} of array {array_id} with --hold"
        assert (intent.old_state, intent.new_state) == (None, None)
        assert intent.data["index"] == index and intent.data["array_id"] == array_id
        assert ("argv" in intent.data) == (index == 0)
        assert intent.data.get("argv_from", ids[0]) == ids[0]


def test_a_pending_job_cancelled_while_its_array_is_prepared_holds_back_the_array(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    """The intent's compare-and-set finds the cancelled job changed: nothing is
    submitted, the other stays ``pending`` and goes out next cycle."""
    from hpcgear.controller.cycle import submit_pending
    from hpcgear.jobs.service import cancel_job

    ctx, rt = setup
    pid = _project_ids(ctx)["p1"]
    ids = [_job(ctx, user="alice", project=pid) for _ in range(2)]  # the cap per user
    runner = FakeSlurm()
    frt = _rt(rt, runner, ctx)
    real_write = frt.transport.write_text
    cancelled: list[str] = []

    def cancel_while_rendering(path: str, text: str, **kw: object) -> None:
        real_write(path, text, **kw)  # type: ignore[arg-type]
        if path.endswith("array.sbatch") and not cancelled:
            with ctx.db.session() as s:
                cancel_job(s, "alice", ids[0])
            cancelled.append(ids[0])

    frt.transport.write_text = cancel_while_rendering  # type: ignore[method-assign]
    submit_pending(ctx, frt, CycleReport(site="t"), None)
    assert cancelled and not [c for c in runner.calls if c[0] == "sbatch"], runner.calls
    assert [_row(ctx, j).state for j in ids] == ["cancelled", "pending"]
    report = CycleReport(site="t")
    submit_pending(ctx, frt, report, None)
    assert _row(ctx, ids[1]).state == "queued"
    assert report.submitted == 1 and len([c for c in runner.calls if c[0] == "sbatch"]) == 1


def test_an_array_that_cannot_go_out_is_no_progress(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    """Its jobs stay ``pending`` and the cycle reports nothing claimed, so the daemon
    sleeps its interval instead of retrying the failure back to back."""
    from hpcgear.controller.cycle import submit_pending
    from hpcgear.errors import HpcgearError

    ctx, rt = setup
    pid = _project_ids(ctx)["p1"]
    ids = [_job(ctx, user="alice", project=pid) for _ in range(2)]
    runner = FakeSlurm()
    frt = _rt(rt, runner, ctx)

    def no_image(*args: object, **kw: object) -> str:
        raise HpcgearError("image cache unreachable", "retried next cycle", transient=True)

    frt.ensure_image = no_image  # type: ignore[method-assign]
    report = CycleReport(site="t")
    submit_pending(ctx, frt, report, None)
    assert [_row(ctx, j).state for j in ids] == ["pending", "pending"]
    assert report.claimed == 0 and report.submitted == 0
    assert any("image cache unreachable" in e for e in report.errors), report.errors
    assert not [c for c in runner.calls if c[0] == "sbatch"]


# --------------------------------------------------------------------- retries


def test_automatic_retry_is_made_by_the_system_for_the_requester(
        setup: tuple[ControllerContext, SiteRuntime]) -> None:  # noqa: F811
    from hpcgear.controller.retry import schedule_retries

    ctx, rt = setup
    jid = _job(ctx, user="alice", project=_project_ids(ctx)["p1"], state="failed",
               failure_kind="node_failure")
    report = CycleReport(site="t")
    schedule_retries(ctx, rt, report)
    assert report.retried == 1
    from sqlalchemy import select

    with ctx.db.session() as s:
        new = s.scalars(select(Job).where(Job.previous_id == jid)).one()
        created = s.scalars(select(JobEvent).where(JobEvent.job_id == new.id,
                                                   JobEvent.kind == "created")).one()
        assert new.origin_id == "alice"
        assert created.actor == ctx.actor, "made by the system, not by a site admin"
        assert "on behalf of user alice" in (created.message or "")
        assert created.data["on_behalf_of"] == {"type": "user", "id": "alice"}


# ------------------------------------------------------------------- disk leaks


def test_scratch_gc_removes_unused_array_dirs_and_stale_storage_temp(cli_env: CliEnv) -> None:
    from hpcgear.config.settings import load_settings

    settings = load_settings(str(cli_env.config))
    root = Path(settings.scratch_root)
    arrays = [root / "hpcgear" / "arrays" / name for name in ("a00000000000000aa",
                                                             "a00000000000000bb")]
    old = time.time() - 10 * 86400
    for a in arrays:
        a.mkdir(parents=True)
        (a / "array.sbatch").write_text("#!/bin/bash\n")
        os.utime(a / "array.sbatch", (old, old))
        os.utime(a, (old, old))
    tmp = Path(settings.storage_root) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    stale, fresh = tmp / "put-stale", tmp / "put-fresh"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (old, old))
    res = cli_env.ok("scratch", "gc", "--json").json()
    removed = {d["path"] for d in res["directories"] if d["action"] == "remove"}
    assert removed == {str(a) for a in arrays}, res
    assert all(d["kind"] == "array" for d in res["directories"])
    assert not any(a.exists() for a in arrays)
    assert res["storage_tmp_removed"] == 1
    assert not stale.exists() and fresh.exists(), "a put still running is left alone"


def test_array_dir_of_a_live_job_is_kept() -> None:
    from hpcgear.staging.gc import ScratchDir, plan_array_gc

    dirs = [ScratchDir("a1", 0, "/s/hpcgear/arrays/a1", 0.0),
            ScratchDir("a2", 0, "/s/hpcgear/arrays/a2", 0.0),
            ScratchDir("a3", 0, "/s/hpcgear/arrays/a3", 990.0)]
    plan = {d.job_id: d.action for d in plan_array_gc(dirs, live_array_ids={"a1"}, now=1000.0,
                                                       older_than_seconds=100)}
    assert plan == {"a1": "keep", "a2": "remove", "a3": "keep"}


# ---------------------------------------------------------------------- SIGHUP


def _wait_for(pred: Callable[[], bool], proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_sighup_with_a_broken_site_file_keeps_running(tmp_path: Path) -> None:
    import sqlite3

    env = {**os.environ, "HPCGEAR_CONFIG": str(tmp_path / "c.yaml"),
           "XDG_DATA_HOME": str(tmp_path / "d")}
    env.pop("HPCGEAR_FAULT", None)
    hg = [sys.executable, "-m", "hpcgear"]
    subprocess.run([*hg, "init", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--storage",
                    str(tmp_path / "st"), "--scratch", str(tmp_path / "scr")], env=env,
                   check=True, capture_output=True)
    site = tmp_path / "extra.yaml"
    site.write_text(f"name: extra\nscheduler: local\nscratch_root: {tmp_path}/x/{{user}}\n"
                    f"storage_root: {tmp_path}/st\nruntime:\n  image_cache: {tmp_path}/img\n"
                    "routing:\n  site_tags: [extra]\n")
    with open(tmp_path / "c.yaml", "a") as fh:
        fh.write(f"sites: [{site}]\n")
    proc = subprocess.Popen([*hg, "controller", "run", "--interval", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def leases() -> set[str]:
        with sqlite3.connect(tmp_path / "x.db") as con:
            return {r[0] for r in con.execute("select site from controller_leases")}

    try:
        _wait_for(lambda: "extra" in leases(), proc, 120)
        site.write_text(site.read_text() + "shedulr: typo\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(4)
        assert proc.poll() is None, "a typo in a site file must not kill the daemon"
        assert "extra" in leases(), "the running configuration is kept"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, err
    assert "running one is kept" in err and "shedulr" in err, err


# ------------------------------------------------------------- fault injection


def test_fault_points_raise_or_kill_on_the_nth_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcgear.controller import context

    monkeypatch.setattr(context, "_fault_hits", {})
    monkeypatch.setenv("HPCGEAR_FAULT", "submit.sbatch:2:raise")
    fault_point("submit.sbatch")  # first hit passes
    fault_point("poll.ended")  # another point is untouched
    with pytest.raises(InjectedFault, match=r"submit\.sbatch"):
        fault_point("submit.sbatch")
    code = ("import os; os.environ['HPCGEAR_FAULT']='claim.after:1'\n"
            "from hpcgear.controller.context import fault_point\n"
            "fault_point('claim.after'); print('survived')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == -signal.SIGKILL and "survived" not in res.stdout


def test_every_fault_point_is_in_the_code() -> None:
    from hpcgear.controller.context import FAULT_POINTS

    src = "".join(p.read_text() for p in (Path(__file__).parents[2] / "hpcgear" /
                                          "controller").glob("*.py"))
    for point in FAULT_POINTS:
        assert f'fault_point("{point}")' in src, point
    assert json.dumps(FAULT_POINTS)
