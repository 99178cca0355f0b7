"""A researcher's loop on the real dev cluster: a failed job's show, usage and debug."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import DevEnv
from tests.integration.test_controller_slurm import Instance, _make_instance

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

HPCGEAR = Path(sys.executable).with_name("hpcgear")


def _failed_job(inst: Instance) -> str:
    jid = inst.run("--input", "input_file=lab/p/s1/ses1/in.txt", "--config", "exit_code=3",
                   "--config", "fail_message=kaboom-from-the-gear")
    inst.cycle_until(lambda: inst.state(jid) == "failed", 180, "the job failed")
    return jid


def test_failed_job_show_usage_and_debug(dev_env: DevEnv, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    inst = _make_instance(dev_env, tmp_path, monkeypatch)
    jid = _failed_job(inst)
    data = inst.job(jid)
    assert data["failure_kind"] == "gear_error"
    # show: the log tail names the gear's own message; efficiency from sacct
    show = inst.cli.ok("job", "show", jid)
    assert "kaboom-from-the-gear" in show.out, show.out
    full = inst.cli.ok("job", "show", jid, "--json").json()
    eff = full["efficiency"]
    assert eff is not None and eff["wall_seconds"] >= 0 and eff["core_hours"] is not None
    assert full["controller"]["led"] is True
    # usage counts it from the job columns
    usage = inst.cli.ok("usage", "--project", "lab/p", "--format", "json").json()
    row = usage["rows"][0]
    assert row["jobs"] == 1 and row["failed"] == 1 and row["success_rate"] == 0.0
    # debug: a fresh copy of the attempt whose command fails the same way
    plan = inst.cli.ok("job", "debug", jid, "--json").json()
    job_dir = Path(plan["job_dir"])
    assert job_dir.is_dir() and "hpcgear-debug" in str(job_dir)
    original = json.loads((job_dir / "flywheel/v0/config.json").read_text())
    assert original["config"]["exit_code"] == 3
    assert (job_dir / "flywheel/v0/input/input_file/in.txt").read_text() == "input data\n"
    run = inst.cli.run("job", "debug", jid, "--run")
    assert run.code == 3, run.err


def test_debug_over_ssh_prints_and_runs_the_ssh_command(
        dev_env: DevEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = _make_instance(dev_env, tmp_path, monkeypatch, ssh=True)
    jid = _failed_job(inst)
    plan = inst.cli.ok("job", "debug", jid, "--json").json()
    ssh = plan["ssh_argv"]
    assert ssh[0] == "ssh" and ssh[-2] == f"{dev_env.ssh_user}@{dev_env.ssh_host}"
    res = subprocess.run([a for a in ssh if a != "-t"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 3, res.stderr
    assert "kaboom-from-the-gear" in res.stderr


def _slurm_state(native: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", native, "-o", "%T"], capture_output=True,
                         text=True).stdout
    return out.strip()


def test_logs_follow_a_running_job_until_it_ends(
        dev_env: DevEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = _make_instance(dev_env, tmp_path, monkeypatch)
    jid = inst.run("--input", "input_file=lab/p/s1/ses1/in.txt", "--config", "sleep_seconds=45",
                   "--config", "exit_code=3", "--config", "fail_message=after-the-sleep-marker")
    inst.cycle_until(lambda: inst.state(jid) == "running", 180, "the job runs")
    native = str(inst.job(jid)["native_id"])
    # a researcher follows it from another shell (the environment names this instance)
    proc = subprocess.Popen(
        [str(HPCGEAR), "--config", str(inst.cli.config), "job", "logs", jid, "-f",
         "--interval", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("test-gear: sleeping" in ln for ln in lines):
            assert proc.poll() is None, f"logs -f ended early: {lines}"
            assert time.monotonic() < deadline, f"no live log line: {lines}"
            time.sleep(0.5)
        # the line came while SLURM still runs the job, and the follower waits on
        assert _slurm_state(native) == "RUNNING", lines
        assert proc.poll() is None
        assert not any("after-the-sleep-marker" in ln for ln in lines)
        # the controller ends the job; the follower prints the rest and exits by itself
        inst.cycle_until(lambda: inst.state(jid) == "failed", 240, "the job ended")
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert rc == 0, err
    assert f"job {jid} is failed" in err
    text = "".join(lines)
    assert "after-the-sleep-marker" in text, text
    assert text.count("test-gear: sleeping") == 1, text  # nothing printed twice
