"""Smoke tests for the dev cluster that `bash dev/cluster.sh up` starts.

They prove the pieces hpcgear builds on work on this machine, with the real tools:
sbatch/squeue/scontrol/sacct against SLURM 22.05, the Apptainer wrapper (directly and
from inside an sbatch job) and the private sshd reached with paramiko.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import paramiko
import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import DevEnv

pytestmark = pytest.mark.integration

T = TypeVar("T")

FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


# --- helpers ----------------------------------------------------------------------------


def scrubbed_env() -> dict[str, str]:
    """This environment without SLURM_*/SBATCH_* variables (as hpcgear's scheduler does)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))
    }


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 60,
    cwd: Path | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run an argv list (never a shell string) with a timeout; never raises on rc != 0."""
    return subprocess.run(
        [os.fspath(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        input=input_text,
        env=scrubbed_env(),
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """stdout of a process that must have succeeded, else a failure naming argv and stderr."""
    if proc.returncode != 0:
        pytest.fail(
            f"{shlex.join(proc.args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc.stdout


def poll(probe: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.5) -> T:
    """Call ``probe`` until it returns something other than None, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -euo pipefail\n" + body, encoding="utf-8")
    path.chmod(0o700)
    return path


class Slurm:
    """Thin test-side wrapper over the SLURM CLI; cancels what it submitted on teardown."""

    def __init__(self, partition: str) -> None:
        self.partition = partition
        self.submitted: list[str] = []
        self.names: dict[str, str] = {}

    def sbatch(self, script: Path, out_dir: Path, *extra: str, name: str | None = None) -> str:
        """Submit ``script``; every job gets a unique name, so sacct rows are unambiguous."""
        name = name or f"hpcgear-smoke-{token()}"
        out = ok(
            run(
                [
                    "sbatch",
                    "--parsable",
                    f"--partition={self.partition}",
                    f"--output={out_dir / 'slurm-%j.out'}",
                    "--time=00:03:00",
                    "--mem=128M",
                    "--export=NONE",
                    f"--job-name={name}",
                    *extra,
                    script,
                ],
                cwd=out_dir,
            )
        )
        job_id = out.strip().split(";")[0]
        assert job_id.isdigit(), f"sbatch --parsable printed {out!r}, not a job id"
        self.submitted.append(job_id)
        self.names[job_id] = name
        return job_id

    def squeue_row(self, job_id: str) -> list[str] | None:
        """[state, reason, partition, name] from `squeue -t all`, None once it is purged."""
        proc = run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r|%P|%j"], timeout=30)
        line = proc.stdout.strip()
        if proc.returncode != 0 or not line:
            return None
        return line.split("|")

    def wait_left_queue(self, job_id: str, timeout: float = 180) -> str:
        """Wait until squeue shows the job in a final state (or no longer shows it)."""

        def probe() -> str | None:
            row = self.squeue_row(job_id)
            if row is None:
                return "PURGED"
            return row[0] if row[0] in FINAL_STATES else None

        return poll(probe, timeout=timeout, what=f"job {job_id} to leave the queue")

    def sacct_final(self, job_id: str, timeout: float = 60) -> dict[str, str]:
        """The job's allocation row from sacct once it is final and complete.

        sacct lags slurmctld: a job can show a final State while Partition/NodeList are
        still empty (seen with --hold + release), so wait for those too. Job ids repeat
        in the accounting DB if the state root was wiped, so match the unique name too.
        """
        fields = ["JobID", "JobName", "State", "ExitCode", "Partition", "NodeList", "Comment"]

        def probe() -> dict[str, str] | None:
            proc = run(
                ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", ",".join(fields)], timeout=30
            )
            for line in proc.stdout.splitlines():
                row = dict(zip(fields, line.split("|"), strict=False))
                # "CANCELLED by 0" -> "CANCELLED"
                state = row.get("State", "").split(" ")[0]
                if (
                    row.get("JobID") == job_id
                    and row.get("JobName") == self.names[job_id]
                    and state in FINAL_STATES
                    and row.get("Partition")
                    and row.get("NodeList") not in (None, "", "None assigned")
                ):
                    row["State"] = state
                    return row
            return None

        return poll(probe, timeout=timeout, what=f"sacct to show job {job_id} finished")

    def cancel_leftovers(self) -> None:
        for job_id in self.submitted:
            row = self.squeue_row(job_id)
            if row is not None and row[0] not in FINAL_STATES:
                run(["scancel", job_id], timeout=30)


@pytest.fixture
def slurm(dev_env: DevEnv) -> Iterator[Slurm]:
    s = Slurm(dev_env.slurm_partition)
    yield s
    s.cancel_leftovers()


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    # slurmd runs jobs as root here, so pytest's private tmp dir is fine for output.
    d = tmp_path / "job"
    d.mkdir()
    return d


def token() -> str:
    return uuid.uuid4().hex[:10]


# --- SLURM ------------------------------------------------------------------------------


@pytest.mark.slurm
def test_partitions_and_limits_are_as_documented(dev_env: DevEnv) -> None:
    out = ok(run(["sinfo", "-h", "-o", "%P|%l|%N|%a"], timeout=30))
    rows = {r.split("|")[0]: r.split("|") for r in out.split()}
    assert set(rows) == {"debug*", "short"}, f"unexpected partitions in sinfo: {out!r}"
    assert rows["debug*"][1] == "2:00:00", f"debug MaxTime: {rows['debug*']}"
    assert rows["short"][1] == "10:00", f"short MaxTime: {rows['short']}"
    for name, row in rows.items():
        assert row[2] == dev_env.slurm_node, f"partition {name} has nodes {row[2]}"
        assert row[3] == "up", f"partition {name} is {row[3]}"
    config = ok(run(["scontrol", "show", "config"], timeout=30))
    assert "MaxArraySize            = 1001" in config, "MaxArraySize is not 1001"


@pytest.mark.slurm
def test_sbatch_job_is_queued_runs_and_is_accounted(
    dev_env: DevEnv, slurm: Slurm, job_dir: Path
) -> None:
    tag = token()
    script = write_script(
        job_dir / "job.sh", 'echo "hpcgear-smoke job=$SLURM_JOB_ID node=$SLURMD_NODENAME"\n'
    )
    job_id = slurm.sbatch(
        script, job_dir, "--hold", f"--comment=smoke:{tag}", name=f"hpcgear-smoke-{tag}"
    )

    # Held, so it must be visible in squeue as pending: no race with a fast job.
    row = slurm.squeue_row(job_id)
    assert row is not None, f"job {job_id} submitted with --hold is not in squeue"
    state, reason, partition, name = row
    assert state == "PENDING", f"held job {job_id} is {state}, expected PENDING"
    assert "held" in reason.lower(), f"held job {job_id} pends for {reason!r}"
    assert partition == dev_env.slurm_partition
    assert name == f"hpcgear-smoke-{tag}"

    ok(run(["scontrol", "release", job_id], timeout=30))
    final = slurm.wait_left_queue(job_id)
    assert final in {"COMPLETED", "PURGED"}, f"job {job_id} ended {final} in squeue"

    acct = slurm.sacct_final(job_id)
    assert acct["State"] == "COMPLETED", f"sacct: {acct}"
    assert acct["ExitCode"] == "0:0", f"sacct: {acct}"
    assert acct["Partition"] == dev_env.slurm_partition, f"sacct: {acct}"
    assert acct["NodeList"] == dev_env.slurm_node, f"sacct: {acct}"
    assert acct["Comment"] == f"smoke:{tag}", f"sacct does not keep the job comment: {acct}"

    out = (job_dir / f"slurm-{job_id}.out").read_text(encoding="utf-8")
    assert f"hpcgear-smoke job={job_id} node={dev_env.slurm_node}" in out, out


@pytest.mark.slurm
def test_failing_job_is_accounted_as_failed_with_its_exit_code(slurm: Slurm, job_dir: Path) -> None:
    script = write_script(job_dir / "fail.sh", "exit 3\n")
    job_id = slurm.sbatch(script, job_dir)
    slurm.wait_left_queue(job_id)
    acct = slurm.sacct_final(job_id)
    assert (acct["State"], acct["ExitCode"]) == ("FAILED", "3:0"), f"sacct: {acct}"


@pytest.mark.slurm
def test_memory_limit_gives_out_of_memory(slurm: Slurm, job_dir: Path) -> None:
    # `tail` buffers a newline-free stream whole, so it grows until the cgroup kills it.
    script = write_script(job_dir / "oom.sh", "head -c 1G /dev/zero | tail >/dev/null\n")
    job_id = slurm.sbatch(script, job_dir, "--mem=64M")
    slurm.wait_left_queue(job_id)
    acct = slurm.sacct_final(job_id)
    assert acct["State"] == "OUT_OF_MEMORY", f"expected OUT_OF_MEMORY, sacct: {acct}"


# --- Apptainer --------------------------------------------------------------------------


@pytest.mark.apptainer
def test_wrapper_runs_smoke_sif(dev_env: DevEnv, tmp_path: Path) -> None:
    assert dev_env.smoke_sif.is_file(), f"{dev_env.smoke_sif} is missing: run dev/cluster.sh up"
    proc = run(
        [
            dev_env.apptainer,
            "exec",
            "--containall",
            "--cleanenv",
            dev_env.smoke_sif,
            "echo",
            "hello",
        ],
        cwd=tmp_path,
    )
    assert ok(proc) == "hello\n", f"stdout {proc.stdout!r}, stderr {proc.stderr!r}"


@pytest.mark.apptainer
def test_wrapper_passes_arguments_stdin_and_exit_code_unchanged(
    dev_env: DevEnv, tmp_path: Path
) -> None:
    tricky = ["a b", "$HOME", "*", "", "--userns", "semi;colon", "quote'd"]
    proc = run(
        [
            dev_env.apptainer,
            "exec",
            "--containall",
            dev_env.smoke_sif,
            "sh",
            "-c",
            'for a in "$@"; do printf "[%s]\\n" "$a"; done; cat; exit 7',
            "sh",
            *tricky,
        ],
        cwd=tmp_path,
        input_text="from-stdin\n",
    )
    assert proc.returncode == 7, f"exit code {proc.returncode}, stderr {proc.stderr!r}"
    assert proc.stdout == "".join(f"[{a}]\n" for a in tricky) + "from-stdin\n"


@pytest.mark.apptainer
def test_wrapper_binds_host_paths_into_the_container(dev_env: DevEnv, tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    secret = token()
    (data / "f.txt").write_text(secret, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    proc = run(
        [
            dev_env.apptainer,
            "exec",
            "--containall",
            "-B",
            f"{data}:/flywheel/v0/input:ro",
            "-B",
            f"{out}:/flywheel/v0/output",
            dev_env.smoke_sif,
            "sh",
            "-c",
            "cat /flywheel/v0/input/f.txt > /flywheel/v0/output/copy.txt",
        ],
        cwd=tmp_path,
    )
    ok(proc)
    assert (out / "copy.txt").read_text(encoding="utf-8") == secret


@pytest.mark.apptainer
@pytest.mark.slurm
def test_wrapper_runs_smoke_sif_inside_sbatch_job(
    dev_env: DevEnv, slurm: Slurm, job_dir: Path
) -> None:
    tag = token()
    # --export=NONE gives the job a login-like environment: reference the wrapper by path.
    body = (
        f"{shlex.quote(str(dev_env.apptainer))} exec --containall --cleanenv "
        f"{shlex.quote(str(dev_env.smoke_sif))} echo hello-from-container-{tag}\n"
    )
    job_id = slurm.sbatch(write_script(job_dir / "sif.sh", body), job_dir)
    slurm.wait_left_queue(job_id)
    acct = slurm.sacct_final(job_id)
    out = (job_dir / f"slurm-{job_id}.out").read_text(encoding="utf-8")
    assert (acct["State"], acct["ExitCode"]) == ("COMPLETED", "0:0"), (
        f"sacct {acct}; output:\n{out}"
    )
    assert f"hello-from-container-{tag}" in out.splitlines(), out


# --- SSH --------------------------------------------------------------------------------


def ssh_connect(dev_env: DevEnv, known_hosts: Path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        dev_env.ssh_host,
        port=dev_env.ssh_port,
        username=dev_env.ssh_user,
        key_filename=str(dev_env.ssh_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        banner_timeout=10,
        auth_timeout=10,
    )
    return client


@pytest.mark.ssh
@pytest.mark.slurm
def test_ssh_login_runs_squeue(dev_env: DevEnv) -> None:
    client = ssh_connect(dev_env, dev_env.ssh_known_hosts)
    try:
        _, stdout, stderr = client.exec_command("squeue --version", timeout=30)
        rc = stdout.channel.recv_exit_status()
        out = stdout.read().decode()
        err = stderr.read().decode()
    finally:
        client.close()
    assert rc == 0, f"squeue --version over ssh exited {rc}: {err}"
    assert "22.05" in out, f"unexpected squeue version over ssh: {out!r}"


@pytest.mark.ssh
def test_ssh_rejects_an_unknown_host_key(dev_env: DevEnv, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        ssh_connect(dev_env, empty).close()
