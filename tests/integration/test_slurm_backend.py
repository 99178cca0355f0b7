"""SlurmBackend against the real dev SLURM (``bash dev/cluster.sh up``; source env.sh).

The same contract the unit tests check on captured output, now live: submit
--hold, poll, release, accounting, cancel, lookup by name, arrays, rejections.
Jobs are tiny (seconds) and named ``hpcgear-itest-<random>``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

from hpcgear.scheduler.base import Accounting, SchedulerStatus, SubmitRejectedError
from hpcgear.scheduler.slurm import SlurmBackend
from hpcgear.scheduler.slurm_tables import Outlook, StateCategory
from hpcgear.scheduler.transport import LocalTransport
from hpcgear.states import FailureKind, SchedulerState

if TYPE_CHECKING:
    from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

T = TypeVar("T")


def eventually(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float = 120,
               what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(1)
        value = fetch()
    return value


class Jobs:
    """Writes small batch scripts into the dev scratch and remembers what to clean up."""

    def __init__(self, dev_env: DevEnv, backend: SlurmBackend) -> None:
        self.dir = dev_env.scratch / "itest-slurm" / uuid.uuid4().hex[:10]
        self.dir.mkdir(parents=True)
        self.partition = dev_env.slurm_partition
        self.backend = backend
        self.submitted: list[str] = []

    def script(self, body: str, *options: str) -> tuple[Path, str]:
        name = f"hpcgear-itest-{uuid.uuid4().hex[:10]}"
        path = self.dir / f"{name}.sbatch"
        lines = [
            "#!/bin/bash",
            f"#SBATCH --job-name={name}",
            f"#SBATCH --comment=hpcgear:{name}:1",
            f"#SBATCH --output={self.dir}/{name}-%A_%a.out",
            f"#SBATCH --partition={self.partition}",
            "#SBATCH --cpus-per-task=1",
            "#SBATCH --mem=100M",
            "#SBATCH --no-requeue",
            *[f"#SBATCH {o}" for o in options],
        ]
        if not any(o.startswith("--time") for o in options):
            lines.append("#SBATCH --time=2")
        path.write_text("\n".join(lines) + "\n" + body + "\n")
        return path, name

    def submit(self, path: Path, *, hold: bool = True) -> str:
        job_id = self.backend.submit(path, hold=hold)
        self.submitted.append(job_id)
        return job_id


@pytest.fixture
def backend() -> SlurmBackend:
    return SlurmBackend(LocalTransport(), query_timeout=60, submit_timeout=60)


@pytest.fixture
def jobs(dev_env: DevEnv, backend: SlurmBackend) -> Iterator[Jobs]:
    j = Jobs(dev_env, backend)
    yield j
    if j.submitted:
        backend.cancel(j.submitted)
    shutil.rmtree(j.dir, ignore_errors=True)


def final_statuses(backend: SlurmBackend, job_id: str, count: int = 1,
                   timeout: float = 120) -> dict[str, SchedulerStatus]:
    return eventually(lambda: backend.poll([job_id]),
                      lambda st: len(st) >= count and all(s.final for s in st.values()),
                      timeout, f"job {job_id} to finish")


def accounting_of(backend: SlurmBackend, job_id: str, count: int = 1) -> dict[str, Accounting]:
    # slurmdbd records the end a moment after squeue shows it
    return eventually(lambda: backend.accounting([job_id]),
                      lambda acc: len(acc) >= count and all(a.category.final
                                                            for a in acc.values()),
                      60, f"accounting of {job_id}")


def test_submit_hold_release_poll_accounting(backend: SlurmBackend, jobs: Jobs) -> None:
    path, name = jobs.script('echo "ran as $SLURM_JOB_ID"')
    job_id = jobs.submit(path, hold=True)
    assert job_id.isdigit()

    held = backend.poll([job_id])[job_id]
    assert held.state is SchedulerState.PENDING
    assert held.reason == "JobHeldUser" and held.outlook is Outlook.HELD
    assert held.name == name and held.comment == f"hpcgear:{name}:1"
    assert backend.lookup_by_name(name) == [job_id]

    backend.release([job_id])
    final_statuses(backend, job_id)
    done = backend.poll([job_id])[job_id]
    assert done.state is SchedulerState.COMPLETED
    assert done.category is StateCategory.SUCCEEDED and done.nodes

    acc = accounting_of(backend, job_id)[job_id]
    assert (acc.state, acc.exit_code, acc.exit_signal) == (SchedulerState.COMPLETED, 0, 0)
    assert acc.partition == jobs.partition and acc.name == name
    assert acc.elapsed_seconds is not None and acc.start_time is not None
    outputs = [p.read_text() for p in jobs.dir.glob(f"{name}-{job_id}_*.out")]
    assert outputs == [f"ran as {job_id}\n"]


def test_failed_job_exit_code_and_kind(backend: SlurmBackend, jobs: Jobs) -> None:
    path, _ = jobs.script("echo failing >&2\nexit 3")
    job_id = jobs.submit(path, hold=False)
    final_statuses(backend, job_id)
    status = backend.poll([job_id])[job_id]
    assert status.state is SchedulerState.FAILED
    assert status.failure_kind is FailureKind.GEAR_ERROR
    assert status.reason == "NonZeroExitCode"
    acc = accounting_of(backend, job_id)[job_id]
    assert (acc.exit_code, acc.exit_signal) == (3, 0)


def test_cancel_running_job(backend: SlurmBackend, jobs: Jobs) -> None:
    path, _ = jobs.script("sleep 120")
    job_id = jobs.submit(path, hold=False)
    eventually(lambda: backend.poll([job_id])[job_id].state, lambda s: s is
               SchedulerState.RUNNING, 120, "job to run")
    backend.cancel([job_id])
    final_statuses(backend, job_id, timeout=60)
    assert backend.poll([job_id])[job_id].state is SchedulerState.CANCELLED
    acc = accounting_of(backend, job_id)[job_id]
    assert acc.state is SchedulerState.CANCELLED
    assert acc.cancelled_by_uid == os.getuid()
    assert acc.failure_kind is FailureKind.CANCELLED
    backend.cancel([job_id])  # again: no error


def test_array_tasks(backend: SlurmBackend, jobs: Jobs) -> None:
    path, name = jobs.script('[ "$SLURM_ARRAY_TASK_ID" = 1 ] && exit 4\nexit 0',
                             "--array=0-2")
    job_id = jobs.submit(path, hold=True)
    pending = backend.poll([job_id])
    assert set(pending) == {f"{job_id}_{i}" for i in range(3)}
    assert all(s.reason == "JobHeldUser" for s in pending.values())
    backend.release([job_id])
    statuses = final_statuses(backend, job_id, count=3)
    assert set(statuses) == {f"{job_id}_{i}" for i in range(3)}
    done = backend.poll([job_id])
    assert done[f"{job_id}_1"].state is SchedulerState.FAILED
    assert done[f"{job_id}_0"].state is SchedulerState.COMPLETED
    assert (done[f"{job_id}_2"].array_job_id, done[f"{job_id}_2"].array_task_id) == (job_id, 2)
    assert set(backend.poll([f"{job_id}_2"])) == {f"{job_id}_2"}
    acc = accounting_of(backend, job_id, count=3)
    assert acc[f"{job_id}_1"].exit_code == 4
    assert backend.lookup_by_name(name) == [job_id]


def test_bad_partition_is_rejected(backend: SlurmBackend, jobs: Jobs) -> None:
    path, _ = jobs.script("true", "--partition=hpcgear-no-such-partition")
    with pytest.raises(SubmitRejectedError) as info:
        jobs.submit(path)
    assert "hpcgear-no-such-partition" in info.value.message
    assert info.value.failure_kind is FailureKind.REJECTED
    with pytest.raises(SubmitRejectedError):
        backend.preflight(path)


def test_preflight_accepts_a_good_script(backend: SlurmBackend, jobs: Jobs) -> None:
    path, name = jobs.script("true")
    result = backend.preflight(path)
    assert result.accepted and result.partition == jobs.partition
    assert backend.lookup_by_name(name) == []  # nothing was submitted


def test_too_long_request_is_flagged_never_starts(backend: SlurmBackend, jobs: Jobs) -> None:
    part = {p.name: p for p in backend.partitions()}[jobs.partition]
    assert part.max_time_minutes is not None, "dev partition needs a MaxTime for this test"
    path, _ = jobs.script("true", f"--time={part.max_time_minutes + 60}")
    try:
        job_id = jobs.submit(path, hold=False)
    except SubmitRejectedError as exc:  # EnforcePartLimits=ALL sites refuse at submit
        assert "time limit" in exc.message.lower()
        return
    status = eventually(lambda: backend.poll([job_id])[job_id],
                        lambda s: s.reason not in (None, "None"), 60, "a pending reason")
    # SLURM names the time limit, or the generic PartitionConfig, depending on timing
    assert status.reason in ("PartitionTimeLimit", "PartitionConfig")
    assert status.never_starts
    assert "Never starts" in status.explanation


def test_vanished_job_is_missing(backend: SlurmBackend) -> None:
    assert backend.poll(["987654321"]) == {}
    assert backend.accounting(["987654321"]) == {}


def test_cluster_info_and_partitions(backend: SlurmBackend, dev_env: DevEnv) -> None:
    info = backend.cluster_info()
    assert info.version[:2].isdigit() and info.max_array_size > 1
    assert info.min_job_age_seconds >= 0
    parts = {p.name: p for p in backend.partitions()}
    part = parts[dev_env.slurm_partition]
    assert part.up and part.total_cpus and part.total_cpus > 0
    assert part.node_mem_max_mb and part.node_mem_max_mb > 0
