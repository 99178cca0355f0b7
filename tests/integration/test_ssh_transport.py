"""SSHTransport against the dev sshd (127.0.0.1:2222, ``bash dev/cluster.sh up``).

Commands, SFTP file operations, host-key rejection, reconnects, and the SLURM
backend driven over SSH exactly as on a remote login node.
"""

from __future__ import annotations

import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import pytest

from hpcgear.errors import NotFoundError, TransportError
from hpcgear.scheduler.slurm import SlurmBackend
from hpcgear.scheduler.transport import SSHTransport
from hpcgear.states import SchedulerState

if TYPE_CHECKING:
    from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.ssh]

TRICKY = ["a b", "$(touch /tmp/hpcgear-ssh-pwned)", "; echo injected", "'q'", '"d"', "*",
          "", "tab\there", "ünïcode"]


def transport(dev_env: DevEnv, **kwargs: object) -> SSHTransport:
    return SSHTransport(dev_env.ssh_host, port=dev_env.ssh_port, user=dev_env.ssh_user,
                        key_file=dev_env.ssh_key, known_hosts=dev_env.ssh_known_hosts,
                        connect_timeout=10, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def ssh(dev_env: DevEnv) -> Iterator[SSHTransport]:
    t = transport(dev_env)
    yield t
    t.close()


@pytest.fixture
def remote_dir(dev_env: DevEnv, ssh: SSHTransport) -> Iterator[str]:
    path = str(dev_env.scratch / "itest-ssh" / uuid.uuid4().hex[:10])
    ssh.mkdir(path)
    yield path
    ssh.remove_tree(path)


def test_argv_survives_the_remote_shell(ssh: SSHTransport) -> None:
    result = ssh.run(["printf", "%s\\n", *TRICKY], timeout=30)
    assert result.ok, result.stderr
    assert result.stdout.split("\n")[:-1] == TRICKY
    assert not Path("/tmp/hpcgear-ssh-pwned").exists()


def test_exit_code_stderr_stdin(ssh: SSHTransport) -> None:
    result = ssh.run(["sh", "-c", "cat; echo oops >&2; exit 7"], timeout=30, input="in\n")
    assert (result.returncode, result.stdout, result.stderr) == (7, "in\n", "oops\n")


def test_remote_environment_is_scrubbed(dev_env: DevEnv) -> None:
    t = transport(dev_env, prefix_lines=["export SBATCH_PARTITION=leaked",
                                         "export SITE_MODULE=loaded"])
    try:
        env = dict(line.split("=", 1) for line in
                   t.run(["env"], timeout=30).stdout.splitlines() if "=" in line)
    finally:
        t.close()
    assert env["SITE_MODULE"] == "loaded"  # site lines ran
    assert env["SLURM_TIME_FORMAT"] == "standard"
    # prefix lines run after the scrub, so an admin can still set what they need
    assert env["SBATCH_PARTITION"] == "leaked"
    assert "SLURM_JOB_ID" not in env


def test_timeout(ssh: SSHTransport) -> None:
    with pytest.raises(TransportError) as info:
        ssh.run(["sleep", "20"], timeout=1)
    assert info.value.transient
    assert ssh.run(["echo", "still usable"], timeout=30).stdout == "still usable\n"


def test_unknown_host_key_is_refused(dev_env: DevEnv, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")

    class NoSystemKeys(paramiko.SSHClient):
        def load_system_host_keys(self, filename: object = None) -> None:
            return None  # only the (empty) configured file counts in this test

    t = SSHTransport(dev_env.ssh_host, port=dev_env.ssh_port, user=dev_env.ssh_user,
                     key_file=dev_env.ssh_key, known_hosts=empty, client_factory=NoSystemKeys)
    with pytest.raises(TransportError) as info:
        t.run(["true"], timeout=30)
    assert not info.value.transient
    assert "unknown SSH host" in info.value.message
    assert f"ssh-keyscan -p {dev_env.ssh_port} {dev_env.ssh_host}" in info.value.hint


def test_wrong_key_is_refused(dev_env: DevEnv, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True, timeout=30)
    t = SSHTransport(dev_env.ssh_host, port=dev_env.ssh_port, user=dev_env.ssh_user,
                     key_file=other, known_hosts=dev_env.ssh_known_hosts)
    with pytest.raises(TransportError) as info:
        t.run(["true"], timeout=30)
    assert not info.value.transient
    assert "authorized_keys" in info.value.hint


def test_reconnects_after_a_dropped_connection(ssh: SSHTransport) -> None:
    assert ssh.run(["echo", "1"], timeout=30).stdout == "1\n"
    client = ssh._client  # the live connection; drop it as a network failure would
    assert client is not None
    transport = client.get_transport()
    assert transport is not None
    transport.close()
    assert ssh.run(["echo", "2"], timeout=30).stdout == "2\n"
    assert ssh.exists("/")  # SFTP reopens too


def test_sftp_file_operations(ssh: SSHTransport, remote_dir: str, tmp_path: Path) -> None:
    job = f"{remote_dir}/job/.hpcgear"
    ssh.mkdir(job, mode=0o700)
    assert ssh.stat(job).is_dir and ssh.stat(job).mode == 0o700

    ssh.write_text(f"{job}/exit.json", '{"rc": 0}\n', mode=0o640)
    assert ssh.read_text(f"{job}/exit.json") == '{"rc": 0}\n'
    st = ssh.stat(f"{job}/exit.json")
    assert (st.mode, st.size, st.is_file) == (0o640, 10, True)
    ssh.write_text(f"{job}/exit.json", "replaced\n")
    assert ssh.read_text(f"{job}/exit.json") == "replaced\n"

    local = tmp_path / "input.bin"
    local.write_bytes(bytes(range(256)) * 1000)
    ssh.put(local, f"{remote_dir}/job/input.bin", mode=0o600)
    back = tmp_path / "back.bin"
    ssh.get(f"{remote_dir}/job/input.bin", back)
    assert back.read_bytes() == local.read_bytes()
    assert stat.S_IMODE(ssh.stat(f"{remote_dir}/job/input.bin").mode) == 0o600

    assert ssh.listdir(f"{remote_dir}/job") == [".hpcgear", "input.bin"]
    assert ssh.listdir(job) == ["exit.json"]  # no temporary files left behind
    assert ssh.exists(f"{job}/exit.json") and not ssh.exists(f"{job}/nope")
    with pytest.raises(NotFoundError):
        ssh.read_text(f"{job}/nope")
    with pytest.raises(NotFoundError):
        ssh.get(f"{job}/nope", tmp_path / "x")

    ssh.remove_tree(f"{remote_dir}/job")
    assert not ssh.exists(f"{remote_dir}/job")


@pytest.mark.slurm
def test_slurm_backend_over_ssh(ssh: SSHTransport, remote_dir: str, dev_env: DevEnv) -> None:
    backend = SlurmBackend(ssh)
    name = f"hpcgear-itest-ssh-{uuid.uuid4().hex[:8]}"
    script = f"{remote_dir}/job.sbatch"
    ssh.write_text(script, "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --output={remote_dir}/slurm-%j.out",
        f"#SBATCH --partition={dev_env.slurm_partition}",
        "#SBATCH --time=2", "#SBATCH --mem=100M", "#SBATCH --cpus-per-task=1",
        'echo "over ssh $SLURM_JOB_ID"', "",
    ]), mode=0o700)
    job_id = backend.submit(script, hold=True)
    try:
        assert backend.poll([job_id])[job_id].reason == "JobHeldUser"
        assert backend.lookup_by_name(name) == [job_id]
        backend.release([job_id])
        deadline = time.monotonic() + 120
        while not backend.poll([job_id])[job_id].final:
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(1)
        assert backend.poll([job_id])[job_id].state is SchedulerState.COMPLETED
        assert ssh.read_text(f"{remote_dir}/slurm-{job_id}.out") == f"over ssh {job_id}\n"
        deadline = time.monotonic() + 60
        while not (acc := backend.accounting([job_id])) or not acc[job_id].category.final:
            assert time.monotonic() < deadline, "no accounting record"
            time.sleep(1)
        assert acc[job_id].exit_code == 0
        assert backend.cluster_info().max_array_size > 1
    finally:
        backend.cancel([job_id])


def test_unreadable_key_file_is_named(dev_env: DevEnv, tmp_path: Path) -> None:
    bad = tmp_path / "not_a_key"
    bad.write_text("hello\n")
    t = SSHTransport(dev_env.ssh_host, port=dev_env.ssh_port, user=dev_env.ssh_user,
                     key_file=bad, known_hosts=dev_env.ssh_known_hosts)
    with pytest.raises(TransportError) as info:
        t.run(["true"], timeout=30)
    assert str(bad) in info.value.message and not info.value.transient
