"""The controller against the real dev SLURM + Apptainer (``dev/cluster.sh up``).

Covers the SLURM issue's "done when": single jobs and arrays complete; a job
scancelled outside hpcgear is recorded as cancelled; a job past its time limit
is a timeout; a node set DOWN gives node_failure and a retry; a controller
killed between sbatch and recording the id adopts the SLURM job on restart
(exactly one SLURM job); slurmctld stopped for a minute changes no state and
everything reconciles after it restarts; the same through the SSH transport.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliEnv
from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Instance:
    cli: CliEnv
    dev: DevEnv
    site_name: str

    def job(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.cli.ok("job", "show", job_id, "--json").json()
        return data

    def run(self, *args: str) -> str:
        out = self.cli.ok("run", "test-gear", "--dest", "lab/p/s1/ses1", "--tag", "hpc",
                          *args, "--json").json()
        return str(out["id"])

    def controller(self, **kw: Any) -> Any:
        from hpcgear.cli.context import AppContext
        from hpcgear.controller.context import ControllerContext
        from hpcgear.controller.loop import Controller

        app = AppContext(config_path=str(self.cli.config))
        ctx = ControllerContext(db=app.db, store=app.store, settings=app.settings)
        return Controller(settings_path=str(self.cli.config), ctx=ctx,
                          site_names=[self.site_name], **kw)

    def cycle_until(self, cond: Callable[[], bool], timeout: float, what: str,
                    ctl: Any = None) -> None:
        ctl = ctl or self.controller()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ctl.once()
                if cond():
                    return
                time.sleep(1)
        finally:
            for rt in ctl.runtimes().values():
                rt.close()
        pytest.fail(f"timed out after {timeout}s waiting for {what}")

    def state(self, job_id: str) -> str:
        return str(self.job(job_id)["state"])


def _site_yaml(dev: DevEnv, tmp: Path, *, ssh: bool = False) -> Path:
    text = dev.site.read_text()
    name = "dev-ssh" if ssh else "dev-slurm"
    if ssh:
        text = text.replace("name: dev-slurm", f"name: {name}")
        text = text.replace("transport:\n  kind: local\n", (
            "transport:\n  kind: ssh\n"
            f"  host: {dev.ssh_host}\n  port: {dev.ssh_port}\n  user: {dev.ssh_user}\n"
            f"  key_file: {dev.ssh_key}\n  known_hosts: {dev.ssh_known_hosts}\n"))
        text = text.replace("site_tags: [hpc, dev]", "site_tags: [hpc]")
    # Tests decide retries themselves: timeouts are not retried here.
    text += "\nretry:\n  timeout:\n    max_attempts: 1\n  node_failure:\n    max_attempts: 2\n"
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def _make_instance(dev: DevEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   ssh: bool = False) -> Instance:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    cli = CliEnv(home=tmp_path, config=tmp_path / "cfg" / "config.yaml")
    # Jobs of the dev-slurm site use the site's scratch and image cache (in the dev
    # root); the instance's own storage and local scratch stay in the test's tmp dir.
    cli.ok("init", "--db", f"sqlite:///{tmp_path / 'hpcgear.db'}", "--storage",
           str(tmp_path / "storage"), "--scratch", str(tmp_path / "scratch"))
    site = _site_yaml(dev, tmp_path, ssh=ssh)
    with cli.config.open("a") as fh:
        fh.write(f"sites: [{site}]\n")
    cli.ok("gear", "build", str(REPO / "containers" / "test-gear"))
    cli.ok("group", "create", "lab")
    cli.ok("project", "create", "lab/p")
    f = tmp_path / "in.txt"
    f.write_text("input data\n")
    cli.ok("upload", "lab/p/s1/ses1", str(f))
    return Instance(cli=cli, dev=dev, site_name="dev-ssh" if ssh else "dev-slurm")


@pytest.fixture
def inst(dev_env: DevEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Instance:
    return _make_instance(dev_env, tmp_path, monkeypatch)


def _squeue_names(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i", "-t", "all"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line]


def _sacct_ids(name: str) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobID",
                          "-S", "now-1hour"], capture_output=True, text=True).stdout
    return [line for line in out.split() if line]


# ----------------------------------------------------------------- happy paths


def test_single_job_and_array_complete(inst: Instance, tmp_path: Path) -> None:
    # other resources than the batch, so it is not grouped into the batch's array
    single = inst.run("--input", "input_file=lab/p/s1/ses1/in.txt", "--config", "num_files=2",
                      "--tag", "cpu=2")
    for sub in ("s2", "s3", "s4"):
        f = tmp_path / f"{sub}.txt"
        f.write_text(sub)
        inst.cli.ok("upload", f"lab/p/{sub}/ses1", str(f))
    batch = inst.cli.ok("batch", "test-gear", "--over", "lab/p/*/*", "--input",
                        r"input_file=^s\d\.txt$", "--tag", "hpc", "--json").json()
    ids = [j["id"] for j in batch["jobs"]]
    assert len(ids) == 3
    everything = [single, *ids]
    inst.cycle_until(lambda: all(inst.state(j) == "complete" for j in everything), 180,
                     "all jobs complete")
    natives = [inst.job(j)["native_id"] for j in ids]
    bases = {n.split("_")[0] for n in natives}
    assert len(bases) == 1 and all("_" in n for n in natives), natives
    assert "_" not in inst.job(single)["native_id"]
    files = {e["name"] for e in inst.cli.ok("ls", "lab/p/s1/ses1", "--json").json()}
    assert {"out-1.txt", "out-2.txt", "report.txt"} <= files
    prov = inst.cli.ok("provenance", "show", single, "--json").json()
    assert json.dumps(prov).count(inst.job(single)["native_id"]) >= 1
    # array tasks record lean sbatch events (the argv once, with task 0); provenance
    # rebuilds each task's own argv, in its own job directory
    for n, jid in enumerate(ids):
        rec = inst.cli.ok("provenance", "show", jid, "--json").json()["record"]
        argv = rec["execution"]["argv"]
        assert argv and argv[0].endswith("apptainer"), argv
        assert any(f"/{jid}/a1/" in a for a in argv), (n, argv)
        assert not any(f"/{other}/a1" in a for a in argv for other in ids if other != jid)


# -------------------------------------------------------------- failures


def test_scancel_outside_hpcgear_is_cancelled(inst: Instance) -> None:
    jid = inst.run("--config", "sleep_seconds=120")
    inst.cycle_until(lambda: inst.state(jid) == "running", 120, "job running")
    native = inst.job(jid)["native_id"]
    subprocess.run(["scancel", native], check=True)
    inst.cycle_until(lambda: inst.state(jid) == "cancelled", 120, "job cancelled")
    job = inst.job(jid)
    assert job["failure_kind"] == "cancelled"
    assert "outside hpcgear" in job["failure_message"]


def test_cancel_from_hpcgear_scancels(inst: Instance) -> None:
    jid = inst.run("--config", "sleep_seconds=120")
    inst.cycle_until(lambda: inst.state(jid) == "running", 120, "job running")
    native = inst.job(jid)["native_id"]
    inst.cli.ok("job", "cancel", jid)
    inst.cycle_until(lambda: not _squeue_running(native), 60, "SLURM job gone")
    events = [e["kind"] for e in inst.job(jid)["events"]]
    assert "scancel" in events


def _squeue_running(native: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", native, "-o", "%T"], capture_output=True,
                         text=True).stdout.strip()
    return out in ("RUNNING", "PENDING", "COMPLETING")


def test_time_limit_is_timeout(inst: Instance) -> None:
    jid = inst.run("--config", "sleep_seconds=600", "--tag", "time=1m")
    inst.cycle_until(lambda: inst.state(jid) in ("failed", "complete"), 240, "job ended")
    job = inst.job(jid)
    assert job["state"] == "failed" and job["failure_kind"] == "timeout", job


def test_never_starting_request_is_refused_before_sbatch(inst: Instance) -> None:
    res = inst.cli.run("run", "test-gear", "--dest", "lab/p/s1/ses1", "--tag", "hpc",
                       "--tag", "partition=short", "--tag", "time=1h")
    assert res.code != 0 and "short" in res.err and "Traceback" not in res.err


def test_rejected_by_slurm(inst: Instance) -> None:
    """A request SLURM queues but never starts is cancelled and failed as rejected."""
    jid = inst.run("--tag", "ram=100G")
    inst.cycle_until(lambda: inst.state(jid) == "failed", 120, "job failed")
    job = inst.job(jid)
    assert job["failure_kind"] == "rejected", job
    assert not _squeue_running(job["native_id"] or "0") if job["native_id"] else True


def test_never_starting_cpus_fail_as_rejected_and_until_idle_ends(inst: Instance) -> None:
    """Issue 11: `--tag cpu=1000` hung in `submitting` (every release refused) forever."""
    jid = inst.run("--tag", "cpu=1000")
    t0 = time.monotonic()
    res = inst.cli.run("controller", "run", "--site", inst.site_name, "--until-idle",
                       "--timeout", "300", "--interval", "1", "--quiet")
    assert res.code == 0, res.err
    assert time.monotonic() - t0 < 240, "--until-idle ends once the job is refused"
    job = inst.job(jid)
    assert job["state"] == "failed" and job["failure_kind"] == "rejected", job
    assert "1000 CPUs per node" in job["failure_message"], job
    assert job["native_id"] is None, "refused before sbatch: SLURM never saw it"
    shown = inst.cli.ok("job", "show", jid).out
    assert "rejected" in shown and "1000 CPUs" in shown, shown


def test_node_down_gives_node_failure_and_retry(inst: Instance) -> None:
    node = inst.dev.slurm_node
    jid = inst.run("--config", "sleep_seconds=300")
    inst.cycle_until(lambda: inst.state(jid) == "running", 120, "job running")
    try:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down",
                        "reason=hpcgear-test"], check=True)
        inst.cycle_until(lambda: inst.state(jid) == "failed", 180, "job failed")
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
    job = inst.job(jid)
    assert job["failure_kind"] == "node_failure", job
    inst.cycle_until(lambda: any(j["previous_id"] == jid for j in
                                 inst.cli.ok("jobs", "--json").json()), 60, "a retry")
    retry = next(j for j in inst.cli.ok("jobs", "--json").json() if j["previous_id"] == jid)
    assert retry["attempt"] == 2
    inst.cli.ok("job", "cancel", retry["id"])
    inst.cycle_until(lambda: True, 5, "cleanup")


# ------------------------------------------------------------- crash safety


class _Killed(BaseException):
    """Stands in for SIGKILL right after sbatch returned (nothing after it runs)."""


def test_crash_between_sbatch_and_record_adopts(inst: Instance) -> None:
    jid = inst.run("--config", "sleep_seconds=1")
    ctl = inst.controller()
    rt = ctl.runtimes()[inst.site_name]
    real_submit = rt.backend.submit

    def submit_then_die(path: Any, *, hold: bool = True) -> str:
        real_submit(path, hold=hold)
        raise _Killed

    rt.backend.submit = submit_then_die  # the fault at the subprocess boundary
    with pytest.raises(_Killed):
        ctl.once()
    rt.close()
    assert inst.job(jid)["native_id"] is None, "the id was never recorded"
    assert len(_squeue_names(f"hpcgear-{jid}")) == 1, "sbatch did create one (held) job"
    # A fresh controller adopts it instead of submitting again.
    inst.cycle_until(lambda: inst.state(jid) == "complete", 180, "job complete")
    kinds = [e["kind"] for e in inst.job(jid)["events"]]
    assert "adopted" in kinds and kinds.count("sbatch") == 1, kinds
    # accounting lags a few seconds behind the queue: wait for the record to appear
    ids: list[str] = []
    for _ in range(60):
        ids = _sacct_ids(f"hpcgear-{jid}")
        if ids:
            break
        time.sleep(1)
    assert len(ids) == 1, f"exactly one SLURM job, sacct shows {ids}"


# slurmctld and slurmdbd outages under a running daemon: tests/chaos/test_slurm_outage.py


# ------------------------------------------------------------------- SSH


@pytest.mark.ssh
def test_controller_through_ssh(dev_env: DevEnv, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    inst = _make_instance(dev_env, tmp_path, monkeypatch, ssh=True)
    jid = inst.run("--input", "input_file=lab/p/s1/ses1/in.txt")
    inst.cycle_until(lambda: inst.state(jid) == "complete", 180, "job complete over SSH")
    job = inst.job(jid)
    assert job["site"] == "dev-ssh"
    names = {e["name"] for e in inst.cli.ok("ls", "lab/p/s1/ses1", "--json").json()}
    assert "report.txt" in names


# -------------------------------------------------------- site preflight


def _with_ghost_partition(inst: Instance) -> None:
    """Add a partition SLURM does not have to the instance's site config."""
    cfg = inst.cli.config.read_text()
    site_path = Path(cfg.split("sites: [", 1)[1].split("]", 1)[0])
    text = site_path.read_text().replace(
        "partitions:\n", "partitions:\n  ghost:\n    description: not in slurm.conf\n"
        "    max_time: 1h\n", 1)
    site_path.write_text(text)


def test_site_preflight_matches_live_cluster(inst: Instance) -> None:
    res = inst.cli.ok("site", "preflight", "dev-slurm", "--json").json()
    assert res["ok"] is True, res
    names = {p["name"] for p in res["partitions"]}
    assert {"debug", "short"} <= names
    assert res["cluster"]["max_array_size"] >= 1
    _with_ghost_partition(inst)
    bad = inst.cli.run("site", "preflight", "dev-slurm")
    assert bad.code != 0 and "ghost" in bad.out and "does not exist" in bad.out
    assert bad.err.startswith("error: ")


def test_definite_rejection_fails_as_rejected(inst: Instance) -> None:
    _with_ghost_partition(inst)
    jid = inst.run("--tag", "partition=ghost")
    inst.cycle_until(lambda: inst.state(jid) == "failed", 120, "job failed")
    job = inst.job(jid)
    assert job["failure_kind"] == "rejected", job
    assert "partition" in (job["failure_message"] or "").lower(), job
    assert job["native_id"] is None, "SLURM created no job"
