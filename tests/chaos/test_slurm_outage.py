"""Chaos tier: slurmctld, then slurmdbd, stopped while jobs run and wait.

Real processes on the dev cluster: jobs are submitted through a running
``hpcgear controller run`` daemon; once they are queued or running in SLURM, one
SLURM daemon is stopped through its pid file (never by name) for the outage
(``HPCGEAR_CHAOS_OUTAGE_SECONDS``, default 120) and always started again.

* slurmctld down: SLURM cannot be asked anything, so no job may change its
  hpcgear state (the jobs keep running on slurmd and end meanwhile), and the
  controller must log a clear transient error;
* slurmdbd down: the queue still answers, so a job may be seen to start, but no
  job may end (fail, or complete without its accounting) and the controller must
  log a clear transient error;
* after the restart every job must reconcile to ``complete``, on its first
  attempt, with one SLURM job per name.

The figures are printed for each daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hpcgear.scheduler.slurm import TRANSIENT_PATTERNS
from tests.chaos.test_controller_chaos import _instance, _sacct_bases
from tests.integration.conftest import DevEnv
from tests.integration.test_controller_slurm import Instance

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

OUTAGE = float(os.environ.get("HPCGEAR_CHAOS_OUTAGE_SECONDS", "120"))
HPCGEAR = str(Path(sys.executable).with_name("hpcgear"))
DAEMONS = {  # name -> (pid file name, executable, readiness check)
    "slurmctld": ("slurmctld.pid", "/usr/sbin/slurmctld", ["scontrol", "ping"]),
    "slurmdbd": ("slurmdbd.pid", "/usr/sbin/slurmdbd",
                 ["sacctmgr", "-n", "-P", "list", "cluster", "format=Cluster"]),
}
#: The one change allowed while slurmdbd is down: the queue (slurmctld) says it started.
#: Nothing ends: an ended job waits for its accounting (usage figures) to be readable.
STARTED = ("queued", "running")


@dataclass
class Figures:
    daemon: str
    outage_seconds: float = 0.0
    jobs: int = 0
    state_changes: int = 0
    false_changes: int = 0
    transient_errors_logged: int = 0
    reconciled: int = 0
    accounted: int = 0
    reconcile_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"outage[{self.daemon}] outage_seconds={self.outage_seconds:.0f} "
                f"jobs={self.jobs} state_changes_during_outage={self.state_changes} "
                f"false_changes={self.false_changes} "
                f"transient_errors_logged={self.transient_errors_logged} "
                f"reconciled={self.reconciled}/{self.jobs} "
                f"with_accounting={self.accounted}/{self.jobs} "
                f"reconcile_seconds={self.reconcile_seconds:.0f}")


def _live_pid(pidfile: Path, exe: str) -> int | None:
    """The pid in ``pidfile`` if that process runs ``exe`` (a stale file names nothing)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        real = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except (OSError, ValueError, IndexError):
        return None
    return pid if real == os.path.realpath(exe) else None


def _ready(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def _stop(dev: DevEnv, name: str) -> None:
    pidfile, exe, _ = DAEMONS[name]
    pid = _live_pid(dev.root / "run" / pidfile, exe)
    assert pid is not None, f"{name} is not running (no live pid in {pidfile})"
    os.kill(pid, signal.SIGTERM)
    _wait(lambda: not Path(f"/proc/{pid}").exists(), 60, f"{name} (pid {pid}) to exit")


def _start(dev: DevEnv, name: str) -> None:
    """Start the daemon as dev/cluster.sh does (it daemonizes and writes its pid file)."""
    pidfile, exe, ready = DAEMONS[name]
    if _live_pid(dev.root / "run" / pidfile, exe) is None:
        with (dev.root / "log" / f"{name}.stdout").open("ab") as out:
            subprocess.run([exe], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                           check=True, timeout=60, start_new_session=True)
        _wait(lambda: _live_pid(dev.root / "run" / pidfile, exe) is not None, 60,
              f"{name} to write its pid file")
    _wait(lambda: _ready(ready), 120, f"{name} to answer")


def _states(inst: Instance, ids: list[str]) -> dict[str, str]:
    rows = {j["id"]: j for j in inst.cli.ok("jobs", "--json", "--limit", "1000").json()}
    return {j: rows[j]["state"] for j in ids if j in rows}


def _accounted(inst: Instance, ids: list[str]) -> int:
    """Jobs whose SLURM accounting (sacct: CPU time, peak memory) was stored."""
    from hpcgear.cli.context import AppContext
    from hpcgear.db.models import Job

    app = AppContext(config_path=str(inst.cli.config))
    with app.db.session() as s:
        jobs = [s.get(Job, j) for j in ids]
        return sum(1 for j in jobs if j is not None
                   and ((j.scheduler_info or {}).get("accounting") or {}).get("elapsed_seconds")
                   is not None)


def _squeue_running(native: set[str]) -> int:
    out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%A"], capture_output=True,
                         text=True).stdout.split()
    return len(native & set(out))


def _phase(inst: Instance, dev: DevEnv, name: str, log: Path, tag: str) -> Figures:
    fig = Figures(name)
    sleep = max(5, min(20, int(OUTAGE * 0.4)))  # running jobs end while it is down
    ids = [inst.run("--config", f"sleep_seconds={sleep}", "--tag", f"ram={100 + i}M",
                    "--tag", tag) for i in range(3)]
    fig.jobs = len(ids)
    _wait(lambda: all(s in ("queued", "running") for s in _states(inst, ids).values()), 240,
          "the jobs to be in SLURM")

    def native() -> set[str]:
        return {str(inst.job(j)["native_id"]) for j in ids}

    try:  # a running job, so one ends during the outage (other users may fill the node)
        _wait(lambda: _squeue_running(native()) > 0, 120, "a job to start")
    except AssertionError as exc:
        fig.problems.append(f"note: {exc}")
    before = _states(inst, ids)
    log_from = log.stat().st_size
    changes: list[tuple[float, str, str, str]] = []
    started = time.monotonic()
    _stop(dev, name)
    try:
        last = dict(before)
        while time.monotonic() - started < OUTAGE:
            time.sleep(2)
            now = _states(inst, ids)
            for j, st in now.items():
                if st != last.get(j):
                    changes.append((time.monotonic() - started, j, last.get(j, "?"), st))
            last = now
    finally:
        fig.outage_seconds = time.monotonic() - started
        _start(dev, name)
    during = log.read_text(errors="replace")[log_from:]
    fig.state_changes = len(changes)
    for at, j, old, new in changes:
        false = name == "slurmctld" or (old, new) != STARTED
        fig.false_changes += false
        fig.problems.append(f"{'FALSE ' if false else ''}change at {at:.0f}s: {j} {old} -> {new}")
    warnings = [line for line in during.splitlines()
                if "step failed" in line and "(transient" in line
                and any(p in line for p in TRANSIENT_PATTERNS)]
    fig.transient_errors_logged = len(warnings)
    if warnings:
        fig.problems.append(f"logged: {warnings[0][:300]}")
    back = time.monotonic()
    try:
        _wait(lambda: all(s in ("complete", "failed", "cancelled")
                          for s in _states(inst, ids).values()), sleep * 3 + 300,
              "the jobs to end after the restart")
    except AssertionError as exc:
        fig.problems.append(str(exc))
    fig.reconcile_seconds = time.monotonic() - back
    final = _states(inst, ids)
    fig.reconciled = sum(1 for s in final.values() if s == "complete")
    fig.accounted = _accounted(inst, ids)
    for j in ids:
        full = inst.job(j)
        if full["state"] != "complete":
            fig.problems.append(f"{j}: {full['state']} ({full.get('failure_kind')}: "
                                f"{full.get('failure_message')})")
        if full.get("previous_id") or full["attempt"] != 1:
            fig.problems.append(f"{j}: re-run (attempt {full['attempt']})")
        bases = _sacct_bases(f"hpcgear-{j}")
        if len(bases) > 1:
            fig.problems.append(f"{j}: {len(bases)} SLURM jobs")
    return fig


def test_slurmctld_and_slurmdbd_outages(dev_env: DevEnv, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (pidfile, exe, _) in DAEMONS.items():
        if _live_pid(dev_env.root / "run" / pidfile, exe) is None:
            pytest.fail(f"{name} is not running: `bash dev/cluster.sh up` first")
    inst = _instance(dev_env, tmp_path, f"sqlite:///{tmp_path / 'hpcgear.db'}", monkeypatch)
    log = tmp_path / "daemon.log"
    with log.open("wb") as fh:
        daemon = subprocess.Popen(
            [HPCGEAR, "--config", str(inst.cli.config), "controller", "run", "--site",
             inst.site_name, "--interval", "2"],
            stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ))
    figures: list[Figures] = []
    try:
        for name in DAEMONS:
            figures.append(_phase(inst, dev_env, name, log, f"outage-{name}"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        for name in DAEMONS:  # whatever happened, leave the cluster up
            _start(dev_env, name)
    text = log.read_text(errors="replace")
    print()
    for fig in figures:
        print(fig.line())
        for p in fig.problems:
            print("    " + p)
    ctld, dbd = figures
    assert "Traceback" not in text, text[-3000:]
    assert daemon.returncode in (0, -signal.SIGTERM), text[-2000:]
    assert ctld.state_changes == 0, ctld.line() + "\n" + "\n".join(ctld.problems)
    assert dbd.false_changes == 0, dbd.line() + "\n" + "\n".join(dbd.problems)
    for fig in figures:
        assert fig.transient_errors_logged >= 1, (
            f"no clear transient error while {fig.daemon} was down:\n" + text[-3000:])
    for fig in figures:
        assert fig.reconciled == fig.jobs, fig.line() + "\n" + "\n".join(fig.problems)
        assert fig.accounted == fig.jobs, "usage figures lost: " + fig.line()
        assert not [p for p in fig.problems if "re-run" in p or "SLURM jobs" in p], fig.problems
