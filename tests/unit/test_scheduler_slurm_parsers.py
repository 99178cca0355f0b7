"""SLURM parsers on output captured from the real dev cluster (fixtures/slurm/).

Regenerate the fixtures with ``tests/unit/fixtures/slurm/capture.py``; job ids
come from ``index.json``, never from this file.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from hpcgear.scheduler.base import SchedulerUnavailableError, SubmitRejectedError
from hpcgear.scheduler.runner import CompletedCommand
from hpcgear.scheduler.slurm import (
    classify_sbatch_failure,
    parse_config,
    parse_duration,
    parse_key_values,
    parse_mem_mb,
    parse_partitions,
    parse_sacct,
    parse_sacct_steps,
    parse_scontrol_jobs,
    parse_size_bytes,
    parse_squeue,
    parse_submit,
    parse_test_only,
    query_error,
)
from hpcgear.scheduler.slurm_tables import Outlook, StateCategory
from hpcgear.scheduler.testing import completed, load_recording
from hpcgear.states import FailureKind, SchedulerState

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
INDEX = json.loads((FIXTURES / "index.json").read_text())
JOBS: dict[str, str] = INDEX["jobs"]


def fx(name: str) -> CompletedCommand:
    return load_recording(FIXTURES / f"{name}.json")


# ------------------------------------------------------------------------- squeue


def test_squeue_final_states_of_every_scenario() -> None:
    rows = {s.native_id: s for s in parse_squeue(fx("squeue_final").stdout)}
    expect = {
        "completed": SchedulerState.COMPLETED,
        "failed": SchedulerState.FAILED,
        "signal": SchedulerState.FAILED,
        "oom": SchedulerState.OUT_OF_MEMORY,
        "timeout": SchedulerState.TIMEOUT,
        "cancel_running": SchedulerState.CANCELLED,
        "cancel_pending": SchedulerState.CANCELLED,
    }
    for scenario, state in expect.items():
        assert rows[JOBS[scenario]].state is state, scenario
    assert rows[JOBS["failed"]].reason == "NonZeroExitCode"
    assert rows[JOBS["oom"]].failure_kind is FailureKind.OOM
    timeout = rows[JOBS["timeout"]]
    assert timeout.failure_kind is FailureKind.TIMEOUT
    assert timeout.time_limit_seconds == 60
    assert timeout.elapsed_seconds is not None and timeout.elapsed_seconds >= 60
    assert rows[JOBS["cancel_running"]].category is StateCategory.CANCELLED


def test_squeue_row_fields() -> None:
    rows = {s.native_id: s for s in parse_squeue(fx("squeue_final").stdout)}
    done = rows[JOBS["completed"]]
    assert done.name == "hpcgear-fixture-completed"
    assert done.comment == "hpcgear:fixture-completed:1"
    assert done.partition == "debug"
    assert done.nodes == "vm"
    assert done.cpus == 1
    assert done.qos == "normal"
    assert done.array_job_id is None and done.array_task_id is None
    assert done.reason is None  # SLURM's "None"
    assert isinstance(done.submit_time, datetime) and isinstance(done.start_time, datetime)
    assert done.final and done.category is StateCategory.SUCCEEDED
    assert done.failure_kind is None


def test_squeue_impossible_requests_pend_with_never_start_reasons() -> None:
    rows = {s.native_id: s for s in parse_squeue(fx("squeue_final").stdout)}
    part_time = rows[JOBS["part_time"]]
    assert part_time.state is SchedulerState.PENDING
    assert part_time.reason == "PartitionTimeLimit"
    assert part_time.time_limit_seconds == 3 * 3600
    assert part_time.start_time is None  # "N/A"
    for scenario in ("part_time", "too_much_mem", "too_many_cpus"):
        status = rows[JOBS[scenario]]
        assert status.never_starts, (scenario, status.reason)
        assert status.explanation.startswith("The job is waiting in the queue")
        assert "Never starts" in status.explanation


def test_squeue_held_jobs() -> None:
    rows = parse_squeue(fx("squeue_held").stdout)
    assert rows, "fixture has rows"
    for s in rows:
        assert s.state is SchedulerState.PENDING
        assert s.reason == "JobHeldUser"
        assert s.outlook is Outlook.HELD
        assert not s.never_starts
        assert s.nodes is None


def test_squeue_array_rows_one_per_task() -> None:
    base = JOBS["array"]
    rows = {s.native_id: s for s in parse_squeue(fx("squeue_array").stdout)}
    assert set(rows) == {f"{base}_{i}" for i in range(4)}
    for i in range(4):
        s = rows[f"{base}_{i}"]
        assert (s.array_job_id, s.array_task_id) == (base, i)
    assert rows[f"{base}_2"].state is SchedulerState.FAILED
    assert rows[f"{base}_0"].state is SchedulerState.COMPLETED


def test_squeue_mixed_shows_running_and_waiting() -> None:
    rows = {s.native_id: s for s in parse_squeue(fx("squeue_mixed").stdout)}
    running = rows[JOBS["cancel_running"]]
    assert running.state is SchedulerState.RUNNING
    assert running.category is StateCategory.RUNNING and not running.final
    assert running.nodes == "vm"
    waiting = [s for s in rows.values() if s.category is StateCategory.WAITING]
    assert waiting and all(s.reason for s in waiting)


def test_squeue_skips_malformed_lines() -> None:
    good = fx("squeue_final").stdout.splitlines()[0]
    rows = parse_squeue(f"garbage line\n{good}\nCLUSTER: other\n\n")
    assert len(rows) == 1


def test_squeue_name_with_pipe_stays_in_the_name() -> None:
    line = fx("squeue_final").stdout.splitlines()[0]
    head, _, name = line.rpartition("|")
    rows = parse_squeue(f"{head}|{name}|odd|name")
    assert rows[0].name == f"{name}|odd|name"


# -------------------------------------------------------------------------- sacct


def test_sacct_records() -> None:
    recs = {a.native_id: a for a in parse_sacct(fx("sacct_allocations").stdout)}
    failed = recs[JOBS["failed"]]
    assert (failed.state, failed.exit_code, failed.exit_signal) == (SchedulerState.FAILED, 3, 0)
    killed = recs[JOBS["signal"]]
    assert (killed.exit_code, killed.exit_signal) == (0, 9)
    oom = recs[JOBS["oom"]]
    assert oom.state is SchedulerState.OUT_OF_MEMORY and oom.failure_kind is FailureKind.OOM
    assert oom.req_mem == "50M"
    timeout = recs[JOBS["timeout"]]
    assert timeout.state is SchedulerState.TIMEOUT
    assert timeout.time_limit_seconds == 60
    assert timeout.elapsed_seconds is not None and timeout.elapsed_seconds >= 60
    done = recs[JOBS["completed"]]
    assert (done.exit_code, done.exit_signal) == (0, 0)
    assert done.nodes == "vm" and done.partition == "debug" and done.alloc_cpus == 1
    assert done.start_time is not None and done.end_time is not None
    assert done.end_time >= done.start_time
    assert done.source == "sacct"


def test_sacct_cancelled_by_uid_and_never_started() -> None:
    recs = {a.native_id: a for a in parse_sacct(fx("sacct_allocations").stdout)}
    pending = recs[JOBS["cancel_pending"]]
    assert pending.state is SchedulerState.CANCELLED
    assert pending.state_text == "CANCELLED by 0"
    assert pending.cancelled_by_uid == 0
    assert pending.start_time is None and pending.nodes is None  # "None assigned"
    assert pending.category is StateCategory.CANCELLED


def test_sacct_array_tasks_keyed_by_task_id() -> None:
    base = JOBS["array"]
    recs = {a.native_id: a for a in parse_sacct(fx("sacct_allocations").stdout)}
    assert {f"{base}_{i}" for i in range(4)} <= set(recs)
    assert recs[f"{base}_2"].exit_code == 5


def test_sacct_steps_take_the_max_over_steps() -> None:
    usage = parse_sacct_steps(fx("sacct_steps").stdout)
    assert usage[JOBS["timeout"]].max_rss_bytes == 396 * 1024  # 396K on the batch step
    cpu = usage[JOBS["completed"]].total_cpu_seconds
    assert cpu is not None and cpu > 0
    synthetic = "7||01:00.500|10\n7.batch|2G|00:30.000|10\n7.0|3M|00:45.250|8\n"
    u = parse_sacct_steps(synthetic)["7"]
    assert u.max_rss_bytes == 2 * 1024**3
    assert u.total_cpu_seconds == pytest.approx(60.5)


# ------------------------------------------------------------------ scontrol etc.


def test_scontrol_show_job_records() -> None:
    recs = {a.native_id: a for a in parse_scontrol_jobs(fx("scontrol_show_job").stdout)}
    failed = recs[JOBS["failed"]]
    assert failed.state is SchedulerState.FAILED
    assert (failed.exit_code, failed.exit_signal) == (3, 0)
    assert failed.name == "hpcgear-fixture-failed"
    assert failed.source == "scontrol"
    base = JOBS["array"]
    assert recs[f"{base}_2"].exit_code == 5
    assert recs[JOBS["timeout"]].state is SchedulerState.TIMEOUT


def test_key_values_keep_spaces_and_odd_keys() -> None:
    kv = parse_key_values("JobId=5 Command=/a b/c.sh AllocNode:Sid=h:1 Socks/Node=* Power=")
    assert kv == {"JobId": "5", "Command": "/a b/c.sh", "AllocNode:Sid": "h:1",
                  "Socks/Node": "*", "Power": ""}


def test_config() -> None:
    info = parse_config(fx("scontrol_show_config").stdout)
    assert info.version == "22.05.8"
    assert info.version in INDEX["slurm_version"]
    assert info.max_array_size == 1001
    assert info.min_job_age_seconds == 120
    assert info.kill_wait_seconds == 5
    assert info.cluster_name == "hpcgear-dev"
    assert info.accounting_enabled
    with pytest.raises(ValueError):
        parse_config("Configuration data\nFoo = bar\n")


def test_partitions() -> None:
    parts = {p.name: p for p in parse_partitions(fx("scontrol_show_partition").stdout,
                                                 fx("sinfo_nodes").stdout)}
    debug, short = parts["debug"], parts["short"]
    assert debug.default and not short.default
    assert debug.max_time_minutes == 120 and short.max_time_minutes == 10
    assert debug.up and debug.state == "UP"
    assert debug.max_mem_per_node_mb is None  # UNLIMITED
    assert debug.max_cpus_per_node is None
    assert debug.total_cpus == 2 and debug.total_nodes == 1
    assert debug.allow_accounts is None and debug.allow_qos is None  # ALL
    assert debug.qos is None  # N/A
    assert debug.node_mem_max_mb == 8000 and debug.node_cpus_max == 2
    assert debug.gres == ()


def test_partition_restrictions() -> None:
    line = ("PartitionName=gpu AllowAccounts=lab1,lab2 DenyAccounts=bad AllowQos=gpu "
            "Default=NO QoS=gpuqos MaxTime=2-00:00:00 DefaultTime=01:00:00 MaxNodes=4 "
            "MaxMemPerNode=512000 DefMemPerCPU=4000 MaxCPUsPerNode=64 State=DRAIN")
    (p,) = parse_partitions(line, "gpu|64|515000|gpu:a100:4\ngpu|32|256000|(null)\n")
    assert p.allow_accounts == ("lab1", "lab2") and p.deny_accounts == ("bad",)
    assert p.allow_qos == ("gpu",) and p.qos == "gpuqos"
    assert p.max_time_minutes == 2880 and p.default_time_minutes == 60
    assert p.max_nodes == 4 and p.max_cpus_per_node == 64
    assert p.max_mem_per_node_mb == 512000 and p.def_mem_per_cpu_mb == 4000
    assert not p.up
    assert p.node_mem_max_mb == 515000 and p.node_cpus_max == 64
    assert p.gres == ("gpu:a100:4",)


def test_test_only_messages() -> None:
    ok = parse_test_only(fx("sbatch_test_only_ok").output)
    assert ok.accepted and ok.partition == "debug"
    assert isinstance(ok.estimated_start, datetime)
    assert ok.message.startswith("Job ")


# ------------------------------------------------------------------------ submit


@pytest.mark.parametrize(("text", "expected"), [
    ("123\n", ("123", None)),
    ("123;alpine\n", ("123", "alpine")),
    ("sbatch: warning: something\n456\n", ("456", None)),
])
def test_parse_submit(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_submit(text) == expected


def test_parse_submit_real_output() -> None:
    job_id, cluster = parse_submit(fx("sbatch_parsable_hold").stdout)
    assert job_id == JOBS["cancel_pending"] and cluster is None


@pytest.mark.parametrize("text", ["", "Submitted batch job\n", "abc\n"])
def test_parse_submit_without_id(text: str) -> None:
    with pytest.raises(ValueError):
        parse_submit(text)


def test_real_rejection_is_definite_with_slurms_message() -> None:
    err = classify_sbatch_failure(fx("sbatch_bad_partition"))
    assert isinstance(err, SubmitRejectedError)
    assert not err.transient
    assert err.failure_kind is FailureKind.REJECTED
    assert err.slurm_message == ("invalid partition specified: nosuchpartition; "
                                 "Invalid partition name specified")
    assert "partition does not exist" in err.message
    assert "partition" in err.hint
    assert err.argv[0] == "sbatch" and err.returncode == 1


def test_not_a_batch_script_is_rejected() -> None:
    err = classify_sbatch_failure(fx("sbatch_not_a_batch_script"))
    assert isinstance(err, SubmitRejectedError)
    assert "#!" in err.hint


REJECTION_MESSAGES = [
    "Invalid account or account/partition combination specified",
    "Invalid qos specification",
    "Requested time limit is invalid (missing or exceeds some limit)",
    "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
    "More processors requested than permitted",
    "Memory required by task is not available",
    "Requested node configuration is not available",
    "Invalid generic resource (gres) specification",
    "Invalid feature specification",
    "Node count specification invalid",
    "Invalid job array specification",
    "Access/permission denied",
]


@pytest.mark.parametrize("message", REJECTION_MESSAGES)
def test_definite_rejections(message: str) -> None:
    result = completed(["sbatch", "--parsable", "--hold", "/j/job.sbatch"], 1,
                       stderr=f"sbatch: error: Batch job submission failed: {message}\n")
    err = classify_sbatch_failure(result)
    assert isinstance(err, SubmitRejectedError), message
    assert err.slurm_message == message
    assert message in err.message
    assert err.hint


TRANSIENT_MESSAGES = [
    "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
    "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
    "(connect failure)",
    "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
    "sbatch: error: Batch job submission failed: Zero Bytes were transmitted or received",
    "sbatch: error: Batch job submission failed: Protocol authentication error",
]


@pytest.mark.parametrize("stderr", TRANSIENT_MESSAGES)
def test_ambiguous_failures(stderr: str) -> None:
    err = classify_sbatch_failure(completed(["sbatch", "x"], 1, stderr=stderr + "\n"))
    assert isinstance(err, SchedulerUnavailableError)
    assert err.transient and err.ambiguous
    assert "looks it up by name" in err.hint


@pytest.mark.parametrize("rc", [-9, -15, 137])
def test_killed_sbatch_is_ambiguous(rc: int) -> None:
    err = classify_sbatch_failure(completed(["sbatch", "x"], rc))
    assert isinstance(err, SchedulerUnavailableError) and err.ambiguous


def test_unexplained_failure_is_ambiguous() -> None:
    err = classify_sbatch_failure(completed(["sbatch", "x"], 1, stderr=""))
    assert isinstance(err, SchedulerUnavailableError) and err.ambiguous


def test_unknown_slurm_error_is_rejected_with_its_words() -> None:
    err = classify_sbatch_failure(completed(
        ["sbatch", "x"], 1, stderr="sbatch: error: Batch job submission failed: Brand new\n"))
    assert isinstance(err, SubmitRejectedError)
    assert err.slurm_message == "Brand new"


def test_query_errors() -> None:
    transient = query_error(completed(["squeue"], 1, stderr="slurm_load_jobs error: Socket "
                                                            "timed out on send/recv operation"),
                            "squeue")
    assert transient.transient
    permanent = query_error(completed(["squeue"], 1, stderr="squeue: error: bad option"),
                            "squeue")
    assert not permanent.transient
    assert "squeue failed (exit 1)" in permanent.message


# ----------------------------------------------------------------------- values


@pytest.mark.parametrize(("text", "seconds"), [
    ("0:00", 0), ("5:00", 300), ("1:06", 66), ("3:00:00", 10800), ("02:00:00", 7200),
    ("1-00:00:00", 86400), ("2-03", 2 * 86400 + 3 * 3600), ("00:00.129", 0.129),
    ("01:02.500", 62.5), ("90", 5400), ("UNLIMITED", None), ("NOT_SET", None),
    ("INVALID", None), ("N/A", None), ("", None), (None, None), ("Partition_Limit", None),
])
def test_durations(text: str | None, seconds: float | None) -> None:
    value = parse_duration(text)
    if seconds is None:
        assert value is None
    else:
        assert value == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "expected"), [
    ("396K", 396 * 1024), ("1.5M", int(1.5 * 1024**2)), ("2G", 2 * 1024**3), ("0", 0),
    ("12", 12 * 1024), ("", None), ("junk", None),
])
def test_sizes(text: str, expected: int | None) -> None:
    assert parse_size_bytes(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("8000", 8000), ("UNLIMITED", None), ("16G", 16384), ("1T", 1024 * 1024), ("8000+", 8000),
])
def test_memory_limits(text: str, expected: int | None) -> None:
    assert parse_mem_mb(text) == expected
