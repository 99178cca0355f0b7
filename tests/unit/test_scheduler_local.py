"""Local backend: the same sbatch script run without SLURM (real processes, no services)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcgear.scheduler import local_launcher
from hpcgear.scheduler.base import SchedulerBackend, SubmitRejectedError
from hpcgear.scheduler.local import (
    LocalBackend,
    _export_env,
    _signal_spec,
    parse_array_spec,
    parse_sbatch_directives,
)
from hpcgear.scheduler.slurm_tables import Outlook, StateCategory
from hpcgear.states import FailureKind, SchedulerState


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SBATCH_PARTITION": "leak",
           "SLURM_JOB_ID": "999", "KEEP": "kept"}
    b = LocalBackend(tmp_path / "state", kill_wait_seconds=1, env=env)
    yield b
    for entry in b._entries():  # never leave processes behind
        b.cancel([entry.native_id])


def script(tmp_path: Path, body: str, *options: str, name: str = "hpcgear-job1") -> Path:
    hp = tmp_path / "job" / ".hpcgear"
    hp.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}",
             f"#SBATCH --output={hp}/slurm-%j.out", *[f"#SBATCH {o}" for o in options],
             "set -u", body]
    path = hp / "job.sbatch"
    path.write_text("\n".join(lines) + "\n")
    return path


def final(b: LocalBackend, nid: str, timeout: float = 10.0) -> None:
    wait_until(lambda: all(s.final for s in b.poll([nid]).values()) and bool(b.poll([nid])),
               timeout)


# ------------------------------------------------------------------ pure parts


def test_directives() -> None:
    text = "\n".join([
        "#!/bin/bash",
        "# a comment",
        "#SBATCH --job-name='hpcgear-a b'",
        "#SBATCH -o /x/slurm-%j.out -c 4",
        "#SBATCH --time 1:00:00 --hold",
        "#SBATCH --mem=2G  # trailing comment",
        "#SBATCH -Jother",
        "",
        "echo start",
        "#SBATCH --partition=ignored-after-first-command",
    ])
    assert parse_sbatch_directives(text) == {
        "job-name": "other", "output": "/x/slurm-%j.out", "cpus-per-task": "4",
        "time": "1:00:00", "hold": "", "mem": "2G",
    }


@pytest.mark.parametrize(("spec", "indices", "throttle"), [
    ("0-3", [0, 1, 2, 3], None),
    ("1,3,5", [1, 3, 5], None),
    ("0-15:4%2", [0, 4, 8, 12], 2),
    ("7", [7], None),
    ("0-2,10%5", [0, 1, 2, 10], 5),
])
def test_array_spec(spec: str, indices: list[int], throttle: int | None) -> None:
    assert parse_array_spec(spec) == (indices, throttle)


@pytest.mark.parametrize("spec", ["", "a-b", "5-1", "0-3:0", "0-200000"])
def test_bad_array_spec(spec: str) -> None:
    with pytest.raises(SubmitRejectedError):
        parse_array_spec(spec)


def test_signal_spec() -> None:
    assert _signal_spec("B:TERM@60") == {"number": int(signal.SIGTERM), "seconds": 60,
                                         "batch_only": True}
    assert _signal_spec("USR1@30") == {"number": int(signal.SIGUSR1), "seconds": 30,
                                       "batch_only": False}
    with pytest.raises(SubmitRejectedError):
        _signal_spec("B:NOPE@1")


def test_export_env() -> None:
    base = {"PATH": "/bin", "HOME": "/h", "SECRET": "s", "A": "1"}
    assert _export_env(None, base) == base
    assert _export_env("ALL,B=2", base) == {**base, "B": "2"}
    assert _export_env("NONE", base) == {"PATH": "/bin", "HOME": "/h"}
    assert _export_env("A,C=3", base) == {"PATH": "/bin", "HOME": "/h", "A": "1", "C": "3"}


# -------------------------------------------------------------- real processes


def test_is_a_scheduler_backend(backend: LocalBackend) -> None:
    assert isinstance(backend, SchedulerBackend)


def test_hold_release_complete(backend: LocalBackend, tmp_path: Path) -> None:
    path = script(tmp_path, 'env | grep -E "^(SLURM_|SBATCH_|KEEP=)" | sort\n'
                            'echo "{\\"rc\\": 0}" > "$(dirname "$0")/exit.json"\n',
                  "--cpus-per-task=2", "--mem=100M", "--time=5")
    nid = backend.submit(path, hold=True)
    assert nid.startswith("local-")
    time.sleep(0.3)
    (held,) = backend.poll([nid]).values()
    assert held.state is SchedulerState.PENDING
    assert held.reason == "JobHeldUser" and held.outlook is Outlook.HELD
    assert held.time_limit_seconds == 300 and held.submit_time is not None
    backend.release([nid])
    final(backend, nid)
    done = backend.poll([nid])[nid]
    assert done.state is SchedulerState.COMPLETED and done.category is StateCategory.SUCCEEDED
    acc = backend.accounting([nid])[nid]
    assert (acc.exit_code, acc.exit_signal, acc.source) == (0, 0, "local")
    assert acc.end_time is not None and acc.start_time is not None
    out = (path.parent / f"slurm-{nid}.out").read_text()
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert env["SLURM_JOB_ID"] == nid
    assert env["SLURM_JOB_NAME"] == "hpcgear-job1"
    assert env["SLURM_CPUS_PER_TASK"] == "2"
    assert env["SLURM_MEM_PER_NODE"] == "100"
    assert env["SLURM_SUBMIT_DIR"] == str(path.parent)
    assert env["KEEP"] == "kept"
    assert not any(k.startswith("SBATCH_") for k in env)
    assert (path.parent / "exit.json").exists()
    pid_record = json.loads((path.parent / f"{nid}.json").read_text())
    assert pid_record["native_id"] == nid and pid_record["pid"] == int(nid.split("-")[1])


def test_submit_without_hold_runs_at_once(backend: LocalBackend, tmp_path: Path) -> None:
    nid = backend.submit(script(tmp_path, "exit 0"), hold=False)
    final(backend, nid)
    assert backend.poll([nid])[nid].state is SchedulerState.COMPLETED


def test_failure_exit_code(backend: LocalBackend, tmp_path: Path) -> None:
    nid = backend.submit(script(tmp_path, "echo bad >&2; exit 3"), hold=False)
    final(backend, nid)
    status = backend.poll([nid])[nid]
    assert status.state is SchedulerState.FAILED
    assert status.reason == "NonZeroExitCode"
    assert status.failure_kind is FailureKind.GEAR_ERROR
    assert backend.accounting([nid])[nid].exit_code == 3


def test_cancel_sends_term_to_the_group_first(backend: LocalBackend, tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    body = (f"trap 'touch {marker}; exit 143' TERM\n"
            "sleep 60 &\nwait $!\n")
    nid = backend.submit(script(tmp_path, body), hold=False)
    wait_until(lambda: backend.poll([nid])[nid].state is SchedulerState.RUNNING)
    time.sleep(0.2)
    backend.cancel([nid])
    final(backend, nid, timeout=5)
    status = backend.poll([nid])[nid]
    assert status.state is SchedulerState.CANCELLED
    assert status.failure_kind is FailureKind.CANCELLED
    assert marker.exists()
    assert backend.accounting([nid])[nid].exit_code == 143


def test_cancel_kills_after_grace(backend: LocalBackend, tmp_path: Path) -> None:
    body = "trap '' TERM\nwhile true; do sleep 0.1; done\n"
    nid = backend.submit(script(tmp_path, body), hold=False)
    wait_until(lambda: backend.poll([nid])[nid].state is SchedulerState.RUNNING)
    task_pid = json.loads((tmp_path / "job" / ".hpcgear" / f"{nid}.state.json").read_text()
                          )["tasks"][""]["pid"]
    start = time.monotonic()
    backend.cancel([nid])
    final(backend, nid, timeout=6)
    assert time.monotonic() - start >= 0.9  # kill_wait_seconds=1
    acc = backend.accounting([nid])[nid]
    assert acc.state is SchedulerState.CANCELLED and acc.exit_signal == signal.SIGKILL
    assert live_group_members(task_pid) == []  # the whole process group is gone


def live_group_members(pgid: int) -> list[int]:
    """Non-zombie processes in a process group (zombies may linger under a lazy PID 1)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def test_cancel_held_job(backend: LocalBackend, tmp_path: Path) -> None:
    nid = backend.submit(script(tmp_path, "exit 0"), hold=True)
    backend.cancel([nid])
    final(backend, nid)
    acc = backend.accounting([nid])[nid]
    assert acc.state is SchedulerState.CANCELLED and acc.start_time is None


def test_array_tasks(backend: LocalBackend, tmp_path: Path) -> None:
    hp = tmp_path / "job" / ".hpcgear"
    body = 'echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID"\n' \
           '[ "$SLURM_ARRAY_TASK_ID" = 1 ] && exit 5\nexit 0\n'
    path = script(tmp_path, body, "--array=0-2%2", f"--output={hp}/slurm-%A_%a.out")
    nid = backend.submit(path, hold=False)
    final(backend, nid)
    statuses = backend.poll([nid])
    assert set(statuses) == {f"{nid}_0", f"{nid}_1", f"{nid}_2"}
    assert statuses[f"{nid}_1"].state is SchedulerState.FAILED
    assert statuses[f"{nid}_2"].state is SchedulerState.COMPLETED
    assert (statuses[f"{nid}_2"].array_job_id, statuses[f"{nid}_2"].array_task_id) == (nid, 2)
    assert (hp / f"slurm-{nid}_2.out").read_text() == f"task 2 of {nid}\n"
    assert set(backend.poll([f"{nid}_1"])) == {f"{nid}_1"}
    accs = backend.accounting([nid])
    assert accs[f"{nid}_1"].exit_code == 5
    assert set(backend.accounting([f"{nid}_0"])) == {f"{nid}_0"}


def test_cancel_one_array_task(backend: LocalBackend, tmp_path: Path) -> None:
    nid = backend.submit(script(tmp_path, "sleep 30", "--array=0-1"), hold=True)
    backend.cancel([f"{nid}_1"])
    time.sleep(0.4)
    backend.release([nid])
    wait_until(lambda: backend.poll([f"{nid}_0"])[f"{nid}_0"].state is SchedulerState.RUNNING)
    assert backend.poll([f"{nid}_1"])[f"{nid}_1"].state is SchedulerState.CANCELLED
    backend.cancel([nid])
    final(backend, nid)


def _task_pid(tmp_path: Path, nid: str) -> int:
    state = json.loads((tmp_path / "job" / ".hpcgear" / f"{nid}.state.json").read_text())
    return int(state["tasks"][""]["pid"])


def test_dead_launcher_with_dead_task_is_a_node_failure(backend: LocalBackend,
                                                        tmp_path: Path) -> None:
    nid = backend.submit(script(tmp_path, "sleep 30"), hold=False)
    wait_until(lambda: backend.poll([nid])[nid].state is SchedulerState.RUNNING)
    os.kill(int(nid.split("-")[1]), signal.SIGKILL)
    os.killpg(_task_pid(tmp_path, nid), signal.SIGKILL)  # the node "died" with it
    wait_until(lambda: backend.poll([nid])[nid].state is SchedulerState.NODE_FAIL)
    status = backend.poll([nid])[nid]
    assert status.reason == "LauncherDied"
    assert status.failure_kind is FailureKind.NODE_FAILURE


def test_orphaned_task_keeps_running_and_can_be_cancelled(backend: LocalBackend,
                                                          tmp_path: Path) -> None:
    nid = backend.submit(script(tmp_path, "sleep 30"), hold=False)
    wait_until(lambda: backend.poll([nid])[nid].state is SchedulerState.RUNNING)
    task = _task_pid(tmp_path, nid)
    os.kill(int(nid.split("-")[1]), signal.SIGKILL)
    time.sleep(0.3)
    status = backend.poll([nid])[nid]
    assert status.state is SchedulerState.RUNNING and status.reason == "LauncherDied"
    backend.cancel([nid])  # no launcher: the backend TERMs/KILLs the group itself
    assert live_group_members(task) == []
    assert backend.poll([nid])[nid].state is SchedulerState.CANCELLED


@pytest.mark.parametrize(("rc", "state"), [(0, SchedulerState.COMPLETED),
                                           (2, SchedulerState.FAILED)])
def test_dead_launcher_falls_back_to_the_exit_record(backend: LocalBackend, tmp_path: Path,
                                                     rc: int, state: SchedulerState) -> None:
    release = tmp_path / "go"
    body = (f'while [ ! -e {release} ]; do sleep 0.05; done\n'
            f'printf \'{{"rc": {rc}}}\' > "$(dirname "$0")/exit.json"\n')
    nid = backend.submit(script(tmp_path, body), hold=False)
    wait_until(lambda: backend.poll([nid])[nid].state is SchedulerState.RUNNING)
    task = _task_pid(tmp_path, nid)
    os.kill(int(nid.split("-")[1]), signal.SIGKILL)  # launcher gone, task still running
    release.touch()
    wait_until(lambda: live_group_members(task) == [])
    status = backend.poll([nid])[nid]
    assert status.state is state
    assert backend.accounting([nid])[nid].exit_code == rc


def test_restarted_controller_finds_its_jobs(backend: LocalBackend, tmp_path: Path) -> None:
    nid = backend.submit(script(tmp_path, "exit 0", name="hpcgear-restart"), hold=True)
    again = LocalBackend(backend.state_dir, kill_wait_seconds=1)
    assert again.lookup_by_name("hpcgear-restart") == [nid]
    assert again.lookup_by_name("hpcgear-other") == []
    again.release([nid])
    final(again, nid)
    assert again.poll([nid])[nid].state is SchedulerState.COMPLETED
    again.forget([nid])
    assert again.poll([nid]) == {}


def test_unknown_ids(backend: LocalBackend, caplog: pytest.LogCaptureFixture) -> None:
    assert backend.poll(["local-1", "12345"]) == {}
    assert backend.accounting(["local-1"]) == {}
    backend.cancel(["local-1"])  # like scancel on a purged id
    backend.release(["local-1"])  # like scontrol release on a purged id: logged
    assert "does not know job local-1" in caplog.text


@pytest.mark.parametrize(("body", "options", "fragment"), [
    ("no shebang", (), "does not look like a batch script"),
    ("#!/bin/bash\n#SBATCH --time=soon\n", (), "--time"),
    ("#!/bin/bash\n#SBATCH --array=3-1\n", (), "--array"),
])
def test_submit_rejections(backend: LocalBackend, tmp_path: Path, body: str,
                           options: tuple[str, ...], fragment: str) -> None:
    path = tmp_path / "bad.sbatch"
    path.write_text(body)
    with pytest.raises(SubmitRejectedError) as info:
        backend.submit(path)
    assert fragment in info.value.message
    assert backend._entries() == []


def test_preflight(backend: LocalBackend, tmp_path: Path) -> None:
    assert backend.preflight(script(tmp_path, "exit 0")).accepted
    with pytest.raises(SubmitRejectedError):
        backend.preflight(script(tmp_path, "exit 0", "--cpus-per-task=100000"))


def test_cluster_info_and_partition(backend: LocalBackend) -> None:
    assert backend.cluster_info().version == "local"
    (part,) = backend.partitions()
    assert part.name == "local" and part.default and part.total_cpus == os.cpu_count()


def test_launcher_enforces_time_limit(tmp_path: Path) -> None:
    """Driven through the launcher's own CLI: 1 s limit, TERM then KILL."""
    marker = tmp_path / "term"
    job = tmp_path / "job.sh"
    job.write_text(f"#!/bin/bash\ntrap 'touch {marker}' TERM\nsleep 30 & wait $!\nsleep 30\n")
    spec = {"script": str(job), "workdir": str(tmp_path), "job_name": "t", "user": "u",
            "stdout": "out-%j.txt", "stderr": None, "tasks": None, "throttle": 1,
            "time_limit_seconds": 1, "kill_wait_seconds": 1, "signal": None,
            "env": {"PATH": os.environ["PATH"]}, "hold": False}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, "-I", local_launcher.__file__, str(spec_path)],
                         capture_output=True, text=True, check=True, timeout=20)
    pid = int(out.stdout)
    state_path = tmp_path / f"local-{pid}.state.json"

    def task() -> dict[str, object]:
        data: dict[str, dict[str, dict[str, object]]] = json.loads(state_path.read_text())
        return data["tasks"][""]

    wait_until(lambda: task()["state"] == "TIMEOUT", timeout=8)
    assert marker.exists()  # SIGTERM came first
    assert task()["reason"] == "TimeLimit"
    assert task()["signal"] == signal.SIGKILL  # then SIGKILL after the grace
    assert (tmp_path / f"out-local-{pid}.txt").exists()
