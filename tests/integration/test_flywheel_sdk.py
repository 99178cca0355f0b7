"""Contract test: the real flywheel-sdk client against `hpcgear serve` (a real process).

On SQLite and on PostgreSQL: a client from a key, the current user, finding and
iterating projects/sessions/acquisitions/files, lookup by path, download and
upload, info and tags, finding gears, ``gear.run(..., tags=['hpc'])`` for a
utility and an analysis gear, polling ``get_job`` while the controller runs them
on the dev SLURM, and fetching the analysis and downloading its output.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CliEnv, _pg_create, _pg_drop
from tests.integration.conftest import DevEnv
from tests.integration.test_controller_slurm import _site_yaml

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]
flywheel = pytest.importorskip("flywheel", reason="flywheel-sdk is in the test extra")

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    cli: CliEnv
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def key_for(self, user: str) -> str:
        made = self.cli.ok("user", "key", "create", "--user", user, "--url", self.url, "--json")
        return str(made.json()["key"])


def start_server(cli: CliEnv, tmp_path: Path, port: int | None = None) -> Served:
    port = port or free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpcgear", "--config", str(cli.config), "serve",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                json.load(r)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"hpcgear serve did not start: {log.read_text()[-3000:]}")
            time.sleep(0.3)
    return Served(cli, url, proc, log)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(
    request: pytest.FixtureRequest, dev_env: DevEnv, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    pg_name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hpcgear.db'}"
    else:
        url, pg_name = _pg_create()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    cli = CliEnv(home=tmp_path, config=tmp_path / "cfg" / "config.yaml")
    cli.ok("init", "--db", url, "--storage", str(tmp_path / "storage"),
           "--scratch", str(tmp_path / "scratch"))
    site = _site_yaml(dev_env, tmp_path)
    with cli.config.open("a") as fh:
        fh.write(f"sites: [{site}]\n")
    cli.ok("gear", "build", str(REPO / "containers" / "test-gear"))
    cli.ok("gear", "build", str(REPO / "containers" / "test-analysis"))
    cli.ok("group", "create", "lab")
    cli.ok("project", "create", "lab/p")
    cli.ok("project", "create", "lab/other")
    f = tmp_path / "in.txt"
    f.write_text("input data\n")
    cli.ok("upload", "lab/p/s1/ses1/acq1", str(f))
    cli.ok("upload", "lab/other/x1/y1/z1", str(f))
    cli.ok("user", "add", "alice")
    cli.ok("role", "grant", "alice", "lab/p", "read-write")
    srv = start_server(cli, tmp_path)
    try:
        yield srv
    finally:
        srv.proc.terminate()
        try:
            srv.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
        if pg_name:
            _pg_drop(pg_name)


def _until(cond, timeout: float, what: str, tick) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        tick()


def test_flywheel_sdk_batch_tutorial(served: Served, tmp_path: Path) -> None:
    fw = flywheel.Client(served.key_for("alice"))
    me = fw.get_current_user()
    assert me.id == "alice"

    # find and iterate: alice sees lab/p only
    projects = fw.projects.find("label=p")
    assert [p.label for p in projects] == ["p"]
    assert [p.label for p in fw.projects.iter()] == ["p"], "after_id paging ends"
    project = projects[0]
    sessions = project.sessions()
    assert [s.label for s in sessions] == ["ses1"]
    assert [s.label for s in project.sessions.iter()] == ["ses1"], "the tutorial's loop"
    assert fw.lookup("lab/p").id == project.id
    assert [g.id for g in fw.get_all_groups()] == ["lab"]
    subjects = project.subjects()
    assert [x.label for x in subjects] == ["s1"]
    assert [x.label for x in subjects[0].sessions()] == ["ses1"]
    session = fw.get_session(sessions[0].id)
    assert session.subject.label == "s1"
    acqs = session.acquisitions()
    assert [a.label for a in acqs] == ["acq1"]
    acq = fw.get(acqs[0].id)
    assert acq.container_type == "acquisition"
    assert [f.name for f in acq.files] == ["in.txt"]
    assert [s.label for s in fw.sessions.iter_find("label=ses1", limit=1)] == ["ses1"]

    # lookup by path, download
    looked = fw.lookup("lab/p/s1/ses1/acq1")
    assert looked.id == acq.id
    dest = tmp_path / "dl.txt"
    acq.download_file("in.txt", str(dest))
    assert dest.read_text() == "input data\n"

    # upload, info, tags
    up = tmp_path / "mine.csv"
    up.write_text("a,b\n1,2\n")
    acq.upload_file(str(up))
    acq = acq.reload()
    assert {f.name for f in acq.files} == {"in.txt", "mine.csv"}
    acq.update_info({"qc": {"ok": True}})
    acq.add_tag("reviewed")
    mine = acq.get_file("mine.csv")
    mine.update_info({"rows": 1})
    mine.add_tag("checked")
    mine.update_classification({"Intent": ["Structural"]})
    acq.update_info({"tmp": 1})
    acq.delete_info("tmp")
    acq = acq.reload()
    assert acq.info["qc"] == {"ok": True} and "reviewed" in acq.tags and "tmp" not in acq.info
    mine = acq.get_file("mine.csv")
    assert mine.info == {"rows": 1} and mine.tags == ["checked"]
    assert mine.classification["Intent"] == ["Structural"]
    acq.replace_info({"only": "this"})
    assert acq.reload().info == {"only": "this"}
    acq.delete_tag("reviewed")
    assert "reviewed" not in acq.reload().tags
    rows = served.cli.ok("ls", "lab/p/s1/ses1/acq1", "--json").json()
    assert {r["name"] for r in rows if r["kind"] == "file"} == {"in.txt", "mine.csv"}

    # another project's data is refused
    with pytest.raises(flywheel.ApiException) as denied:
        fw.lookup("lab/other/x1/y1/z1")
    assert denied.value.status == 403

    # gears: a utility gear and an analysis gear, with the hpc tag
    gear = fw.gears.find_first("gear.name=test-gear")
    agear = fw.gears.find_first("gear.name=test-analysis")
    assert gear.gear.name == "test-gear" and agear.category == "analysis"
    infile = acq.get_file("in.txt")
    job_id = gear.run(config={"num_files": 1}, inputs={"input_file": infile},
                      destination=acq, tags=["hpc"])
    analysis_id = agear.run(analysis_label="qc run", inputs={"input_file": infile},
                            destination=session, tags=["hpc"])
    job = fw.get_job(job_id)
    assert job.state == "pending" and "hpc" in job.tags
    assert job.inputs["input_file"].name == "in.txt"
    listed = fw.get_all_jobs(filter="state=pending")
    assert job_id in [j.id for j in listed]
    row = next(j for j in listed if j.id == job_id)
    assert [i.name for i in row.inputs] == ["in.txt"], "GET /jobs lists inputs"

    def tick() -> None:
        served.cli.ok("controller", "once")
        time.sleep(1)

    analysis = fw.get_analysis(analysis_id)
    ajob_id = analysis.job if isinstance(analysis.job, str) else analysis.job.id
    _until(lambda: fw.get_job(job_id).state in ("complete", "failed")
           and fw.get_job(ajob_id).state in ("complete", "failed"), 300, "jobs done", tick)
    assert fw.get_job(job_id).state == "complete"
    assert fw.get_job(ajob_id).state == "complete"
    logs = fw.get_job_logs(job_id)  # the kept log, as Flywheel's JobLogRecord
    assert logs.id == job_id and logs.logs and logs.logs[0].fd == 1
    assert "".join(s.msg for s in logs.logs).strip() and not logs.logs[0].msg.startswith("(")
    analysis = fw.get_analysis(analysis_id)
    assert analysis.label == "qc run"
    assert [a.id for a in fw.get_session(session.id).analyses] == [analysis_id]
    assert [a.id for a in fw.get_session_analyses(session.id)] == [analysis_id]
    names = [f.name for f in analysis.files]
    assert names, "the analysis has outputs"
    out = tmp_path / "out"
    out.mkdir()
    name = names[0]
    analysis.download_file(name, str(out / name))
    want = next(f for f in analysis.files if f.name == name).hash
    assert hashlib.sha256((out / name).read_bytes()).hexdigest() == want
