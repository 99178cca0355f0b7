"""Chaos tier: 20 concurrent CLI writers, API clients and the daemon on one instance.

Real processes, on SQLite and PostgreSQL: 20 writer threads each run a sequence of
``hpcgear`` CLI processes (so about 20 run at any moment): add a tag to and remove
a tag from one shared file, set and unset info keys on it, upload a file into a
session path that does not exist yet, and either add and change a rule or run a
job on the dev SLURM (half of those cancelled at once). Meanwhile API clients talk
to a real ``hpcgear serve`` process (Flywheel REST tag and info writes on one
session, and CLI client-mode uploads into the same new session path), and a real
``hpcgear controller run`` daemon runs the jobs.

Then every write must be present exactly once (no lost update), no process may
exit 70 or print an internal error, "database is locked" or a traceback, and
every job not cancelled must complete. The figures are printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.test_controller_chaos import _instance
from tests.conftest import CliEnv
from tests.integration.conftest import DevEnv
from tests.integration.test_flywheel_sdk import Served, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

WRITERS = int(os.environ.get("HPCGEAR_CHAOS_WRITERS", "20"))
API_CLIENTS = 4
API_WRITES = 5  # per client, each a tag and an info key
SEED = "lab/p/s1/ses1/seed.txt"
NEW_ACQ = "lab/p/chaos-sub/chaos-ses/acq"
HPCGEAR = str(Path(sys.executable).with_name("hpcgear"))
BAD_WORDS = ("internal error", "locked", "Traceback")


@dataclass
class Figures:
    database: str
    writers: int = 0
    processes: int = 0
    api_requests: int = 0
    writes: int = 0
    lost: int = 0
    duplicated: int = 0
    failed: int = 0
    internal_errors: int = 0
    locked: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def line(self) -> str:
        keys = ("writers", "processes", "api_requests", "writes", "lost", "duplicated",
                "failed", "internal_errors", "locked")
        return f"writers[{self.database}] " + " ".join(f"{k}={getattr(self, k)}" for k in keys)

    def saw(self, what: str, code: int, err: str, *, http: bool = False) -> None:
        """Account for one finished process or request."""
        with self.lock:
            if http:
                self.api_requests += 1
            else:
                self.processes += 1
            bad = code != 0 or any(w in err for w in BAD_WORDS)
            self.internal_errors += code == 70 or "internal error" in err or "Traceback" in err
            self.locked += "locked" in err
            if bad:
                self.failed += 1
                self.problems.append(f"{what}: exit {code}: {err.strip()[-600:]}")


def _hpcgear(config: Path, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run([HPCGEAR, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    return proc.returncode, proc.stdout, proc.stderr


def _writer(i: int, cli: CliEnv, tmp: Path, fig: Figures, jobs: dict[int, str]) -> None:
    def run(*args: str) -> str:
        code, out, err = _hpcgear(cli.config, *args)
        fig.saw(f"writer {i}: hpcgear {' '.join(args)}", code, err)
        return out

    up = tmp / f"up-{i}"
    up.mkdir()
    (up / f"f{i}.txt").write_text(f"writer {i}\n")
    # every writer changes the one shared file twice (a tag and an info key)
    if i % 2 == 0:
        run("tag", "add", SEED, f"w{i}")
        run("info", "unset", SEED, f"u{i}")
    else:
        run("info", "set", SEED, f"w{i}={i}")
        run("tag", "rm", SEED, f"r{i}")
    run("upload", NEW_ACQ, str(up / f"f{i}.txt"))
    if i % 3 == 2:
        run("rule", "add", "lab/p", "--name", f"rule{i}", "--gear", "test-gear", "--input",
            "input_file", "--when", "file.name~^never-matches-", "--tag", "hpc", "--disabled")
        run("rule", "enable", f"lab/p/rule{i}")
        return
    cancel = i % 3 == 1  # a long job, so the cancel comes while it is pending or running
    out = run("run", "test-gear", "--dest", "lab/p/s1/ses1", "--tag", "hpc", "--tag",
              f"chaos-w{i}", "--config", f"sleep_seconds={600 if cancel else 1}", "--json")
    try:
        jobs[i] = str(json.loads(out)["id"])
    except (ValueError, KeyError):
        return
    if cancel:
        run("job", "cancel", jobs[i])


def _api(srv: Served, key: str, method: str, path: str, body: Any) -> tuple[int, str]:
    req = urllib.request.Request(
        f"{srv.url}{path}", method=method, data=json.dumps(body).encode(),
        headers={"Authorization": f"scitran-user {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _api_client(j: int, srv: Served, key: str, ses_id: str, client_cfg: Path, tmp: Path,
                fig: Figures) -> None:
    for k in range(API_WRITES):
        for path, body in ((f"/api/sessions/{ses_id}/tags", {"value": f"api{j}-{k}"}),
                           (f"/api/sessions/{ses_id}/info", {"set": {f"api{j}_{k}": k}})):
            status, text = _api(srv, key, "POST", path, body)
            fig.saw(f"api client {j}: POST {path} {body}", 0 if status < 300 else status,
                    "" if status < 300 else text, http=True)
    up = tmp / f"api-up-{j}"
    up.mkdir()
    (up / f"a{j}.txt").write_text(f"api client {j}\n")
    code, _out, err = _hpcgear(client_cfg, "upload", NEW_ACQ, str(up / f"a{j}.txt"))
    fig.saw(f"api client {j}: upload (client mode)", code, err)


def _daemon(inst_cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [HPCGEAR, "--config", str(inst_cfg), "controller", "run", "--site", "dev-slurm",
             "--interval", "1"], stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ))


def _count(fig: Figures, what: str, expected: set[str], got: list[str]) -> None:
    """Every expected item present exactly once (a list may repeat; a set not)."""
    fig.writes += len(expected)
    missing = expected - set(got)
    dups = {x for x in expected if got.count(x) > 1}
    fig.lost += len(missing)
    fig.duplicated += len(dups)
    if missing:
        fig.problems.append(f"{what}: lost {sorted(missing)}")
    if dups:
        fig.problems.append(f"{what}: more than once {sorted(dups)}")


def test_twenty_writers_api_clients_and_the_daemon(
    db_url: str, dev_env: DevEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = "sqlite" if db_url.startswith("sqlite") else "postgres"
    inst = _instance(dev_env, tmp_path, db_url, monkeypatch)
    cli = inst.cli
    seed = tmp_path / "seed.txt"
    seed.write_text("shared by every writer\n")
    cli.ok("upload", "lab/p/s1/ses1", str(seed))
    cli.ok("tag", "add", SEED, "keep", *(f"r{i}" for i in range(1, WRITERS, 2)))
    cli.ok("info", "set", SEED, "keep=1", *(f"u{i}={i}" for i in range(0, WRITERS, 2)))
    cli.ok("user", "add", "alice")
    cli.ok("role", "grant", "alice", "lab/p", "read-write")
    ses_id = next(e["id"] for e in cli.ok("ls", "lab/p/s1", "--json").json()
                  if e["label"] == "ses1")
    srv = start_server(cli, tmp_path)
    daemon = _daemon(cli.config, tmp_path / "daemon.log")
    fig = Figures(database, writers=WRITERS + API_CLIENTS)
    jobs: dict[int, str] = {}
    try:
        key = srv.key_for("alice")
        client = CliEnv(home=tmp_path, config=tmp_path / "client" / "config.yaml")
        client.ok("login", key)
        threads = [threading.Thread(target=_writer, args=(i, cli, tmp_path, fig, jobs))
                   for i in range(WRITERS)]
        threads += [threading.Thread(target=_api_client,
                                     args=(j, srv, key, ses_id, client.config, tmp_path, fig))
                    for j in range(API_CLIENTS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        storm = time.monotonic() - started
        # the daemon finishes what was not cancelled
        wanted = {i: j for i, j in jobs.items() if i % 3 == 0}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = {j["id"]: j["state"] for j in cli.ok("jobs", "--json").json()}
            if all(states.get(j) in ("complete", "failed", "cancelled")
                   for j in wanted.values()):
                break
            if daemon.poll() is not None:
                break
            time.sleep(2)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        srv.proc.terminate()
        try:
            srv.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.proc.kill()

    # ------------------------------------------------------------- the checks
    daemon_log = (tmp_path / "daemon.log").read_text(errors="replace")
    fig.saw("controller daemon", 0 if daemon.returncode in (0, -signal.SIGTERM) else
            daemon.returncode, "\n".join(line for line in daemon_log.splitlines()
                                         if any(w in line for w in BAD_WORDS)))
    serve_log = srv.log.read_text(errors="replace")
    fig.saw("hpcgear serve", 0, "\n".join(line for line in serve_log.splitlines()
                                          if any(w in line for w in BAD_WORDS)), http=True)
    fig.api_requests -= 1  # the serve log is not a request

    entry = next(e for e in cli.ok("ls", "lab/p/s1/ses1", "--json").json()
                 if e.get("name") == "seed.txt")
    _count(fig, "seed tags added", {f"w{i}" for i in range(0, WRITERS, 2)} | {"keep"},
           entry["tags"])
    removed = [t for t in entry["tags"] if t.startswith("r")]
    fig.writes += WRITERS // 2
    fig.lost += len(removed)
    if removed:
        fig.problems.append(f"seed tags removed but back: {removed}")
    info = entry["info"]
    _count(fig, "seed info set", {f"w{i}" for i in range(1, WRITERS, 2)} | {"keep"},
           [k for k in info if k.startswith("w") or k == "keep"])
    back = [k for k in info if k.startswith("u")]
    fig.writes += (WRITERS + 1) // 2
    fig.lost += len(back)
    if back:
        fig.problems.append(f"seed info unset but back: {back}")

    ses = next(e for e in cli.ok("ls", "lab/p/s1", "--json").json() if e["label"] == "ses1")
    api_tags = {f"api{j}-{k}" for j in range(API_CLIENTS) for k in range(API_WRITES)}
    _count(fig, "session tags (API)", api_tags, ses["tags"])
    api_info = {f"api{j}_{k}" for j in range(API_CLIENTS) for k in range(API_WRITES)}
    _count(fig, "session info (API)", api_info, list(ses["info"]))

    files = cli.ok("ls", NEW_ACQ, "--json").json()
    names = [e["name"] for e in files]
    _count(fig, "uploads into a new session path",
           {f"f{i}.txt" for i in range(WRITERS)} | {f"a{j}.txt" for j in range(API_CLIENTS)},
           names)
    again = [e["name"] for e in files if e.get("version") != 1]
    fig.duplicated += len(again)
    if again:
        fig.problems.append(f"uploads stored twice (version > 1): {again}")
    _count(fig, "new subject", {"chaos-sub"},
           [e["label"] for e in cli.ok("ls", "lab/p", "--json").json()])
    _count(fig, "new session", {"chaos-ses"},
           [e["label"] for e in cli.ok("ls", "lab/p/chaos-sub", "--json").json()])

    rules = cli.ok("rule", "list", "lab/p", "--json").json()
    _count(fig, "rules", {f"rule{i}" for i in range(WRITERS) if i % 3 == 2},
           [r["name"] for r in rules])
    disabled = [r["name"] for r in rules if not r["enabled"]]
    fig.writes += len(rules)
    fig.lost += len(disabled)
    if disabled:
        fig.problems.append(f"rules enabled but still disabled: {disabled}")

    all_jobs = cli.ok("jobs", "--json", "--limit", "1000").json()
    made = [t for j in all_jobs for t in j["tags"] if t.startswith("chaos-w")]
    _count(fig, "jobs", {f"chaos-w{i}" for i in jobs}, made)
    by_id = {j["id"]: j for j in all_jobs}
    for i, jid in sorted(jobs.items()):
        want = "cancelled" if i % 3 == 1 else "complete"
        got = by_id.get(jid, {}).get("state")
        fig.writes += 1
        if got != want:
            fig.lost += 1
            fig.problems.append(f"job {jid} of writer {i}: {got}, expected {want}")
    expected_jobs = sum(1 for i in range(WRITERS) if i % 3 != 2)
    if len(jobs) != expected_jobs:
        fig.problems.append(f"{expected_jobs - len(jobs)} job run(s) gave no id")

    summary = fig.line() + f" storm_seconds={storm:.0f}"
    print("\n" + summary)
    assert fig.processes >= WRITERS * 4, summary
    assert (fig.lost, fig.duplicated, fig.failed, fig.internal_errors, fig.locked) == (
        0, 0, 0, 0, 0), summary + "\n" + "\n".join(fig.problems)
    assert len(jobs) == expected_jobs, "\n".join(fig.problems)
