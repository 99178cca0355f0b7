"""Chaos tier: SIGKILL the controller at every step of a job's life, and run two leaders.

Real processes on the dev cluster (SLURM + Apptainer), on SQLite and PostgreSQL.
Each trial submits jobs, runs ``hpcgear controller run --until-idle`` with
``HPCGEAR_FAULT=<point>:1`` (SIGKILL the n-th time the controller reaches that
point; ``random`` kills it from outside after a random delay), then runs a
clean controller until idle and checks, for every job of the trial:

* lost: the newest attempt did not end ``complete``;
* duplicates: more than one SLURM job under one hpcgear name (``sacct --name``);
* half outputs: a complete job whose provenance record does not verify or whose
  outputs are not all in storage with the recorded sha256;
* orphaned scratch: a finished attempt's scratch directory that even
  ``scratch gc`` (age 0) would keep; directories merely left for gc are counted
  apart;
* tracebacks: any ``Traceback`` on a controller's stderr.

A bounded subset runs by default (CI); ``HPCGEAR_CHAOS_TRIALS=N`` runs N trials
per database, cycling through every fault point plus random kills. The figures
are printed at the end of each run (and, with ``HPCGEAR_CHAOS_REPORT=<path>``,
written to ``<path>.<database>.json`` after every trial).
"""

from __future__ import annotations

import getpass
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpcgear.controller.context import FAULT_POINTS
from tests.conftest import CliEnv
from tests.integration.conftest import DevEnv
from tests.integration.test_controller_slurm import Instance, _site_yaml

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

REPO = Path(__file__).resolve().parents[2]
ARRAY_POINTS = tuple(p for p in FAULT_POINTS if p.startswith("array."))
#: Points a healthy single job passes (logs/retry ones need failing jobs).
SINGLE_POINTS = tuple(p for p in FAULT_POINTS if p.split(".")[0] in
                      ("claim", "submit", "poll", "finish"))
BOUNDED = {
    "sqlite": ("submit.intent", "submit.sbatch", "finish.fetched", "array.sbatch",
               "array.recorded"),
    "postgres": ("submit.recorded", "finish.published"),
}


@dataclass
class Figures:
    database: str
    trials: int = 0
    killed: int = 0
    jobs: int = 0
    lost: int = 0
    duplicates: int = 0
    half_outputs: int = 0
    orphaned_scratch: int = 0
    left_for_gc: int = 0
    tracebacks: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        keys = ("trials", "killed", "jobs", "lost", "duplicates", "half_outputs",
                "orphaned_scratch", "left_for_gc", "tracebacks")
        return f"chaos[{self.database}] " + " ".join(f"{k}={getattr(self, k)}" for k in keys)


def _instance(dev: DevEnv, tmp: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Instance:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp / "cfg"))
    monkeypatch.delenv("HPCGEAR_FAULT", raising=False)
    cli = CliEnv(home=tmp, config=tmp / "cfg" / "config.yaml")
    cli.ok("init", "--db", db_url, "--storage", str(tmp / "storage"), "--scratch",
           str(tmp / "scratch"))
    site = _site_yaml(dev, tmp)
    with cli.config.open("a") as fh:
        fh.write(f"sites: [{site}]\n")
    cli.ok("gear", "build", str(REPO / "containers" / "test-gear"))
    cli.ok("group", "create", "lab")
    cli.ok("project", "create", "lab/p")
    f = tmp / "in.txt"
    f.write_text("input data\n")
    cli.ok("upload", "lab/p/s1/ses1", str(f))
    return Instance(cli=cli, dev=dev, site_name="dev-slurm")


def _controller(inst: Instance, *, fault: str | None = None, timeout: float = 240,
                lease: int | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("HPCGEAR_FAULT", None)
    if fault:
        env["HPCGEAR_FAULT"] = fault
    if lease:
        env["HPCGEAR_CONTROLLER_LEASE_SECONDS"] = str(lease)
    argv = [sys.executable, "-m", "hpcgear", "--config", str(inst.cli.config), "controller",
            "run", "--site", inst.site_name, "--until-idle", "--timeout", str(timeout),
            "--interval", "1", "--quiet"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return -999, err
    return proc.returncode, err


def _sacct_bases(name: str) -> set[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobID",
                          "-S", "now-2hours"], capture_output=True, text=True).stdout
    return {line.split("_")[0] for line in out.split() if line}


def _jobs(inst: Instance) -> dict[str, dict[str, Any]]:
    return {j["id"]: j for j in inst.cli.ok("jobs", "--json").json()}


def _newest(jobs: dict[str, dict[str, Any]], jid: str) -> dict[str, Any]:
    job = jobs[jid]
    while True:
        nxt = next((j for j in jobs.values() if j.get("previous_id") == job["id"]), None)
        if nxt is None:
            return job
        job = nxt


def _check(inst: Instance, ids: list[str], fig: Figures, scratch_root: str, store: Any) -> None:
    from hpcgear.storage.objects import sha256_file

    jobs = _jobs(inst)
    fig.jobs += len(ids)
    for jid in ids:
        last = _newest(jobs, jid)
        if last["state"] != "complete":
            fig.lost += 1
            fig.problems.append(f"{jid}: newest attempt {last['id']} is {last['state']} "
                                f"({last.get('failure_kind')}: {last.get('failure_message')})")
        attempt = jid
        while attempt:
            full = inst.job(attempt)
            names = {f"hpcgear-{attempt}"} | {
                f"hpcgear-array-{e['data']['array_id']}" for e in full["events"]
                if e["kind"] == "sbatch" and (e.get("data") or {}).get("array_id")}
            for name in names:
                bases = _sacct_bases(name)
                for _ in range(20):  # accounting lags the queue by a few seconds
                    if bases or not full.get("native_id"):
                        break
                    time.sleep(1)
                    bases = _sacct_bases(name)
                if len(bases) > 1:
                    fig.duplicates += 1
                    fig.problems.append(f"{attempt}: {len(bases)} SLURM jobs named {name}")
            job_dir = Path(scratch_root) / "hpcgear" / attempt
            if job_dir.exists() and full["state"] in ("complete", "failed", "cancelled"):
                from hpcgear.scheduler.transport import LocalTransport
                from hpcgear.staging.gc import list_scratch, plan_gc

                dirs = [d for d in list_scratch(LocalTransport(), scratch_root)
                        if d.job_id == attempt]
                plan = plan_gc(dirs, live_job_ids=set(), now=time.time() + 1,
                               older_than_seconds=0)
                if all(d.action == "remove" for d in plan):
                    fig.left_for_gc += 1
                else:
                    fig.orphaned_scratch += 1
                    fig.problems.append(f"{attempt}: scratch {job_dir} orphaned")
            if full["state"] == "complete":
                rec = inst.cli.ok("provenance", "show", attempt, "--json").json()
                outputs = rec["record"].get("outputs") or []
                bad = [o for o in outputs if not store.exists(o["sha256"])
                       or sha256_file(store.path_for(o["sha256"])) != o["sha256"]]
                if not rec["verified"] or bad or not outputs:
                    fig.half_outputs += 1
                    fig.problems.append(f"{attempt}: outputs {bad or 'none'} "
                                        f"verified={rec['verified']}")
            attempt = full.get("previous_id")


def _trial(inst: Instance, point: str, fig: Figures, scratch_root: str, store: Any,
           rng: random.Random) -> None:
    n = 3 if point in ARRAY_POINTS else 1
    ids = [inst.run("--config", f"sleep_seconds={1 + i}") for i in range(n)]
    if point == "random":
        proc = _controller(inst)
        time.sleep(rng.uniform(1.0, 20.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        rc, err = _finish(proc, 60)
    else:
        rc, err = _finish(_controller(inst, fault=f"{point}:1"), 300)
    fig.trials += 1
    fig.killed += rc == -signal.SIGKILL
    fig.tracebacks += "Traceback" in err
    rc2, err2 = _finish(_controller(inst), 400)
    fig.tracebacks += "Traceback" in err2
    if rc2 != 0:
        fig.problems.append(f"{point}: clean controller exited {rc2}: {err2[-400:]}")
    _check(inst, ids, fig, scratch_root, store)


def _plan(database: str) -> list[str]:
    wanted = int(os.environ.get("HPCGEAR_CHAOS_TRIALS", "0") or 0)
    if wanted <= 0:
        return list(BOUNDED[database])
    cycle = itertools.cycle([*SINGLE_POINTS, *ARRAY_POINTS, "random"])
    return [next(cycle) for _ in range(wanted)]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres",
                                                             marks=pytest.mark.postgres)])
def test_sigkill_at_every_step(database: str, dev_env: DevEnv, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               request: pytest.FixtureRequest) -> None:
    from hpcgear.config.site import load_site
    from hpcgear.storage.objects import ObjectStore
    from tests.conftest import _pg_create, _pg_drop

    if database == "postgres":
        url, name = _pg_create()
        request.addfinalizer(lambda: _pg_drop(name))
    else:
        url = f"sqlite:///{tmp_path / 'hpcgear.db'}"
    inst = _instance(dev_env, tmp_path, url, monkeypatch)
    site = load_site(_site_yaml(dev_env, tmp_path))
    scratch_root = site.render_scratch_root(getpass.getuser())
    store = ObjectStore(tmp_path / "storage")
    fig = Figures(database)
    rng = random.Random(int(os.environ.get("HPCGEAR_CHAOS_SEED", "11")))
    progress = os.environ.get("HPCGEAR_CHAOS_REPORT")  # a file with the running figures
    for point in _plan(database):
        _trial(inst, point, fig, scratch_root, store, rng)
        if progress:
            Path(f"{progress}.{database}.json").write_text(json.dumps(fig.__dict__))
    summary = fig.line()
    print("\n" + summary)
    assert fig.killed >= 1, "no fault point was reached: the hook is not wired"
    assert (fig.lost, fig.duplicates, fig.half_outputs, fig.orphaned_scratch,
            fig.tracebacks) == (0, 0, 0, 0, 0), summary + "\n" + "\n".join(fig.problems)


def test_two_leaders_with_a_short_lease_and_slow_steps(dev_env: DevEnv, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two controllers, a 3 s lease, every stage-in stalled 1.5 s (a pass of 6 jobs lasts
    three leases): the same outcome as one controller, nothing re-run or duplicated."""
    from hpcgear.config.site import load_site
    from hpcgear.storage.objects import ObjectStore

    inst = _instance(dev_env, tmp_path, f"sqlite:///{tmp_path / 'hpcgear.db'}", monkeypatch)
    # distinct requests: six single submissions, not one array
    ids = [inst.run("--config", "sleep_seconds=1", "--tag", f"ram={100 + i}M")
           for i in range(6)]
    slow = "submit.staged:1:sleep1.5"
    a = _controller(inst, fault=slow, lease=3, timeout=300)
    time.sleep(1.0)
    b = _controller(inst, fault=slow, lease=3, timeout=300)
    (rc_a, err_a), (rc_b, err_b) = _finish(a, 400), _finish(b, 400)
    assert (rc_a, rc_b) == (0, 0), err_a[-800:] + err_b[-800:]
    _finish(_controller(inst), 300)  # anything left after both stopped
    fig = Figures("sqlite-two-leaders", trials=1)
    site = load_site(_site_yaml(dev_env, tmp_path))
    _check(inst, ids, fig, site.render_scratch_root(getpass.getuser()),
           ObjectStore(tmp_path / "storage"))
    fig.tracebacks = ("Traceback" in err_a) + ("Traceback" in err_b)
    print("\n" + fig.line())
    assert (fig.lost, fig.duplicates, fig.half_outputs, fig.orphaned_scratch,
            fig.tracebacks) == (0, 0, 0, 0, 0), fig.line() + "\n" + "\n".join(fig.problems)
    jobs = _jobs(inst)
    assert all(_newest(jobs, j)["attempt"] == 1 for j in ids), "nothing was re-run"
