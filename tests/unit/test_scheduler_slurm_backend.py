"""SlurmBackend driven by a recorded-response runner (real captured output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcgear.errors import SchedulerError, TransportError
from hpcgear.scheduler.base import (
    SchedulerBackend,
    SchedulerUnavailableError,
    SubmitRejectedError,
)
from hpcgear.scheduler.runner import CompletedCommand
from hpcgear.scheduler.slurm import ARGV_BUDGET, SACCT_FIELDS, SlurmBackend, SlurmCommands
from hpcgear.scheduler.testing import RecordedRunner, completed, load_recording
from hpcgear.states import SchedulerState

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
JOBS: dict[str, str] = json.loads((FIXTURES / "index.json").read_text())["jobs"]
C = SlurmCommands()


def fx(name: str) -> CompletedCommand:
    return load_recording(FIXTURES / f"{name}.json")


def backend(*recordings: CompletedCommand) -> tuple[SlurmBackend, RecordedRunner]:
    runner = RecordedRunner()
    for rec in recordings:
        runner.add(rec)
    return SlurmBackend(runner), runner


def test_is_a_scheduler_backend() -> None:
    assert isinstance(SlurmBackend(RecordedRunner()), SchedulerBackend)


# ------------------------------------------------------------------------ submit


def test_submit_held_returns_the_job_id() -> None:
    rec = fx("sbatch_parsable_hold")
    b, runner = backend(rec)
    script = rec.argv[-1]
    assert b.submit(script, hold=True) == JOBS["cancel_pending"]
    assert runner.calls[0].argv == ("sbatch", "--parsable", "--hold", script)
    assert runner.calls[0].timeout == b.submit_timeout


def test_submit_without_hold_and_with_cluster() -> None:
    runner = RecordedRunner()
    runner.add(completed(["sbatch", "--parsable", "--clusters=alpine", "/j/s.sbatch"],
                         stdout="991;alpine\n"))
    assert SlurmBackend(runner, cluster="alpine").submit("/j/s.sbatch", hold=False) == "991"


def test_submit_rejected_carries_slurms_message() -> None:
    rec = fx("sbatch_bad_partition")
    b, _ = backend(rec)
    with pytest.raises(SubmitRejectedError) as info:
        b.submit(rec.argv[-1])
    assert "nosuchpartition" in info.value.slurm_message
    assert not info.value.transient


def test_submit_timeout_is_ambiguous() -> None:
    runner = RecordedRunner()
    argv = C.build_submit("/j/s.sbatch")
    runner.add(TransportError("sbatch did not finish within 120s", argv=argv, transient=True),
               argv)
    with pytest.raises(SchedulerUnavailableError) as info:
        SlurmBackend(runner).submit("/j/s.sbatch")
    assert info.value.ambiguous and info.value.transient


def test_submit_socket_timeout_is_ambiguous() -> None:
    argv = C.build_submit("/j/s.sbatch")
    b, _ = backend(completed(argv, 1, stderr="sbatch: error: Batch job submission failed: "
                                             "Socket timed out on send/recv operation\n"))
    with pytest.raises(SchedulerUnavailableError) as info:
        b.submit("/j/s.sbatch")
    assert info.value.ambiguous


def test_submit_success_without_id_is_ambiguous() -> None:
    argv = C.build_submit("/j/s.sbatch")
    b, _ = backend(completed(argv, 0, stdout="\n"))
    with pytest.raises(SchedulerUnavailableError) as info:
        b.submit("/j/s.sbatch")
    assert info.value.ambiguous


def test_permanent_transport_error_passes_through() -> None:
    argv = C.build_submit("/j/s.sbatch")
    runner = RecordedRunner()
    runner.add(TransportError("command not found: sbatch", argv=argv), argv)
    with pytest.raises(TransportError):
        SlurmBackend(runner).submit("/j/s.sbatch")


def test_preflight() -> None:
    rec = fx("sbatch_test_only_ok")
    b, _ = backend(rec, fx("sbatch_test_only_bad_partition"))
    result = b.preflight(rec.argv[-1])
    assert result.accepted and result.partition == "debug"
    with pytest.raises(SubmitRejectedError) as info:
        b.preflight(fx("sbatch_test_only_bad_partition").argv[-1])
    assert "nosuchpartition" in info.value.message
    assert "Invalid partition name specified" in info.value.message


# ------------------------------------------------------------------------- poll


def test_poll_one_squeue_for_all_jobs() -> None:
    rec = fx("squeue_final")
    b, runner = backend(rec)
    ids = rec.argv[4].removeprefix("--jobs=").split(",")
    statuses = b.poll(ids)
    assert runner.commands() == ["squeue"]
    base = JOBS["array"]
    assert statuses[JOBS["oom"]].state is SchedulerState.OUT_OF_MEMORY
    # the array's base id brings back every task, keyed by task id
    assert {f"{base}_{i}" for i in range(4)} <= set(statuses)
    assert base not in statuses


def test_poll_returns_only_requested_jobs() -> None:
    rec = fx("squeue_invalid_mixed")  # squeue --jobs=<completed>,999999
    b, _ = backend(rec)
    statuses = b.poll([JOBS["completed"], "999999"])
    assert set(statuses) == {JOBS["completed"]}
    assert statuses[JOBS["completed"]].state is SchedulerState.COMPLETED


def test_poll_vanished_single_job_is_missing_not_an_error() -> None:
    b, _ = backend(fx("squeue_invalid_single"))
    assert b.poll(["999999"]) == {}


def test_poll_asks_once_for_the_accounts_jobs_when_squeue_rejects_a_list() -> None:
    """Older SLURMs fail the whole list for one purged id: one ``--me`` query answers."""
    good = fx("squeue_final").stdout.splitlines()[0]
    good_id = good.split("|", 1)[0]
    runner = RecordedRunner()
    invalid = completed([], 1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    runner.add(CompletedCommand(tuple(C.build_poll([good_id, "999999"])), 1, "", invalid.stderr, 0),
               C.build_poll([good_id, "999999"]))
    other = good.replace(good_id, "777777", 1)  # another job of the account: not asked for
    runner.add(completed(C.build_poll_mine(), 0, stdout=f"{good}\n{other}\n"))
    statuses = SlurmBackend(runner).poll([good_id, "999999"])
    assert set(statuses) == {good_id}
    assert len(runner.calls) == 2


@pytest.mark.parametrize(("stderr", "transient"), [
    ("slurm_load_jobs error: Socket timed out on send/recv operation", True),
    ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)", True),
    ("squeue: error: Invalid user: nobody", False),
])
def test_failed_poll_raises_never_reports_gone(stderr: str, transient: bool) -> None:
    argv = C.build_poll(["1", "2"])
    b, _ = backend(completed(argv, 1, stderr=stderr + "\n"))
    with pytest.raises(SchedulerError) as info:
        b.poll(["1", "2"])
    assert info.value.transient is transient


def test_poll_timeout_raises_transient() -> None:
    argv = C.build_poll(["1"])
    runner = RecordedRunner()
    runner.add(TransportError("squeue did not finish", argv=argv, transient=True), argv)
    with pytest.raises(SchedulerUnavailableError) as info:
        SlurmBackend(runner).poll(["1"])
    assert not info.value.ambiguous


def test_poll_of_many_ids_is_one_squeue() -> None:
    """10,000 separate jobs: one ``--jobs`` list (it fits one argument), not chunks."""
    ids = [str(1_000_000 + i) for i in range(10_000)]
    runner = RecordedRunner()
    runner.add(completed(C.build_poll(ids), 0, stdout=""))
    assert SlurmBackend(runner).poll(ids) == {}
    assert runner.commands() == ["squeue"]
    assert len(runner.calls[0].argv[4]) <= ARGV_BUDGET + len("--jobs=")


def test_poll_folds_array_tasks_into_their_array() -> None:
    rec = fx("squeue_array")
    base = JOBS["array"]
    tasks = [f"{base}_{i}" for i in range(4)]
    runner = RecordedRunner()
    runner.add(completed(C.build_poll([base]), 0, stdout=rec.stdout))
    statuses = SlurmBackend(runner).poll(tasks[:2])
    assert set(statuses) == set(tasks[:2])  # the array's other tasks were not asked for
    assert runner.commands() == ["squeue"]


def test_poll_beyond_one_argument_asks_for_the_accounts_jobs() -> None:
    ids = [str(10**12 + i) for i in range(ARGV_BUDGET // 8)]
    runner = RecordedRunner()
    good = fx("squeue_final").stdout.splitlines()[0]
    good_id = good.split("|", 1)[0]
    runner.add(completed(C.build_poll_mine(), 0, stdout=good + "\n"))
    assert SlurmBackend(runner).poll([*ids, good_id]).keys() == {good_id}
    assert runner.commands() == ["squeue"]


def test_poll_of_nothing_runs_nothing() -> None:
    b, runner = backend()
    assert b.poll([]) == {} and b.accounting([]) == {}
    assert runner.calls == []


def test_poll_by_name_prefix() -> None:
    b, _ = backend(fx("squeue_mine"))
    statuses = b.poll_by_name_prefix("hpcgear-fixture-")
    assert statuses and all(s.name.startswith("hpcgear-fixture-") for s in statuses.values())
    assert JOBS["timeout"] in statuses


# ------------------------------------------------------------------- accounting


def combined_sacct() -> CompletedCommand:
    """The one accounting query's answer, made of the two captured ones: the allocation
    rows (SACCT_FIELDS) with their MaxRSS/TotalCPU, and the step rows, in sacct's order."""
    alloc, steps = fx("sacct_allocations"), fx("sacct_steps")
    rows = {line.split("|", 1)[0]: line for line in alloc.stdout.splitlines() if line}
    out = []
    for line in steps.stdout.splitlines():
        if not line:
            continue
        job, rss, cpu, elapsed = line.split("|")
        if job in rows:
            out.append(f"{rows[job]}|{rss}|{cpu}")
        else:
            blank = [""] * len(SACCT_FIELDS)
            blank[0], blank[SACCT_FIELDS.index("ElapsedRaw")] = job, elapsed
            out.append("|".join([*blank, rss, cpu]))
    ids = alloc.argv[4].removeprefix("--jobs=").split(",")
    return completed(C.build_accounting(ids), 0, stdout="\n".join(out) + "\n")


def test_accounting_merges_step_usage() -> None:
    rec = combined_sacct()
    b, runner = backend(rec)
    ids = rec.argv[3].removeprefix("--jobs=").split(",")
    recs = b.accounting(ids)
    assert runner.commands() == ["sacct"]  # allocations and steps in one answer
    timeout = recs[JOBS["timeout"]]
    assert timeout.state is SchedulerState.TIMEOUT
    assert timeout.max_rss_bytes == 396 * 1024
    assert timeout.total_cpu_seconds is not None
    assert recs[JOBS["signal"]].exit_signal == 9
    assert recs[f"{JOBS['array']}_2"].exit_code == 5


def test_accounting_unknown_job_is_missing() -> None:
    invalid = fx("sacct_invalid")  # captured with --allocations: same (empty) answer
    b, runner = backend(completed(C.build_accounting(["999999"]), invalid.returncode,
                                  invalid.stdout, invalid.stderr))
    assert b.accounting(["999999"]) == {}
    assert runner.commands() == ["sacct"]


def test_accounting_falls_back_to_scontrol_without_slurmdbd() -> None:
    runner = RecordedRunner()
    runner.add(completed(C.build_accounting([JOBS["failed"], "999999"]), 1,
                         stderr="sacct: error: Slurm accounting storage is disabled\n"))
    runner.add(fx("scontrol_show_job"))
    recs = SlurmBackend(runner).accounting([JOBS["failed"], "999999"])
    assert set(recs) == {JOBS["failed"]}
    assert recs[JOBS["failed"]].exit_code == 3
    assert recs[JOBS["failed"]].source == "scontrol"


def test_accounting_failure_raises() -> None:
    refused = "sacct: error: slurmdbd: Connection refused\n"
    b, _ = backend(completed(C.build_accounting(["5"]), 1, stderr=refused))
    with pytest.raises(SchedulerUnavailableError):
        b.accounting(["5"])


# ------------------------------------------------------------- release / cancel


def test_release() -> None:
    ok = fx("scontrol_release")
    b, runner = backend(ok)
    b.release(ok.argv[-1].split(","))
    assert runner.commands() == ["scontrol"]


def test_release_of_finished_jobs_is_idempotent() -> None:
    rec = fx("scontrol_release_finished")  # rc=1 "Job has already finished for job N"
    b, _ = backend(rec)
    b.release(rec.argv[-1].split(","))


@pytest.mark.parametrize("fixture", ["scontrol_release_purged", "scontrol_release_invalid"])
def test_release_of_unknown_jobs_is_logged_not_raised(
        fixture: str, caplog: pytest.LogCaptureFixture) -> None:
    rec = fx(fixture)
    ids = rec.argv[-1].split(",")
    b, _ = backend(rec)
    b.release(ids)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"no longer knows job {i}" in logged for i in ids)


def test_release_refusal_raises_naming_the_job() -> None:
    argv = C.build_release(["5", "6"])
    b, _ = backend(completed(argv, 1, stderr="Job has already finished for job 5\n"
                                             "Access/permission denied for job 6\n"
                                             "slurm_suspend error: Access/permission denied\n"))
    with pytest.raises(SchedulerError) as info:
        b.release(["5", "6"])
    assert "6 (Access/permission denied)" in info.value.message
    assert "5" not in info.value.message.replace("6 (", "")


def test_release_without_per_job_lines_is_a_query_error() -> None:
    argv = C.build_release(["5"])
    b, _ = backend(completed(argv, 1, stderr="slurm_suspend error: Socket timed out on "
                                             "send/recv operation\n"))
    with pytest.raises(SchedulerUnavailableError):
        b.release(["5"])


def test_cancel_is_idempotent() -> None:
    b, runner = backend(fx("scancel_completed"), fx("scancel_invalid"))
    b.cancel([JOBS["completed"]])
    b.cancel(["999999"])
    assert runner.commands() == ["scancel", "scancel"]


def test_cancel_ignores_already_finished_but_raises_on_real_errors() -> None:
    runner = RecordedRunner()
    prefix = "scancel: error: Kill job error on job id"
    runner.add(completed(C.build_cancel(["5"]), 1,
                         stderr=f"{prefix} 5: Job/step already completing or completed\n"))
    runner.add(completed(C.build_cancel(["6"]), 1,
                         stderr=f"{prefix} 6: Access/permission denied\n"))
    b = SlurmBackend(runner)
    b.cancel(["5"])
    with pytest.raises(SchedulerError):
        b.cancel(["6"])


# ----------------------------------------------------------------- lookup / info


def test_lookup_by_name_uses_squeue_and_sacct() -> None:
    runner = RecordedRunner()
    runner.add(fx("squeue_by_name"))
    runner.add(completed(C.build_lookup_sacct("hpcgear-fixture-completed"), 0,
                         stdout=f"{JOBS['completed']}\n"))
    found = SlurmBackend(runner).lookup_by_name("hpcgear-fixture-completed")
    assert JOBS["completed"] in found
    assert found == sorted(set(found), key=lambda j: (len(j), j))


def test_lookup_by_name_array_gives_base_ids() -> None:
    runner = RecordedRunner()
    runner.add(completed(C.build_lookup_squeue("hpcgear-fixture-array"), 0, stdout=""))
    runner.add(fx("sacct_by_name"))
    found = SlurmBackend(runner).lookup_by_name("hpcgear-fixture-array")
    assert JOBS["array"] in found
    assert all("_" not in j for j in found)


def test_lookup_without_accounting_uses_squeue_only() -> None:
    runner = RecordedRunner()
    runner.add(fx("squeue_by_name"))
    runner.add(completed(C.build_lookup_sacct("hpcgear-fixture-completed"), 1,
                         stderr="sacct: error: Slurm accounting storage is disabled\n"))
    assert JOBS["completed"] in SlurmBackend(runner).lookup_by_name("hpcgear-fixture-completed")


def test_lookup_fails_loudly_when_squeue_fails() -> None:
    b, _ = backend(completed(C.build_lookup_squeue("x"), 1, stderr="Socket timed out\n"))
    with pytest.raises(SchedulerUnavailableError):
        b.lookup_by_name("x")


def test_cluster_info_and_partitions() -> None:
    b, _ = backend(fx("scontrol_show_config"), fx("scontrol_show_partition"),
                   fx("sinfo_nodes"))
    info = b.cluster_info()
    assert (info.max_array_size, info.min_job_age_seconds) == (1001, 120)
    parts = {p.name: p for p in b.partitions()}
    assert parts["short"].max_time_minutes == 10
    assert parts["debug"].node_mem_max_mb == 8000


def test_partitions_without_sinfo_still_work() -> None:
    runner = RecordedRunner()
    runner.add(fx("scontrol_show_partition"))
    runner.add(completed(C.build_sinfo_nodes(), 1, stderr="sinfo: error: boom\n"))
    parts = SlurmBackend(runner).partitions()
    assert parts and all(p.node_mem_max_mb is None for p in parts)


def test_accounting_skips_slurmdbd_placeholder_rows() -> None:
    """Seen live: a step record reached slurmdbd before the job record, which then read
    JobName=allocation with no partition and ReqMem=16? for a moment."""
    placeholder = ("87|87|allocation|COMPLETED|0:0|1|2026-11-22T02:24:18|2026-11-22T02:24:19|"
                   "2026-11-22T02:24:20|vm|||hpcgear-dev|1|16?||None||00:00.001\n")
    runner = RecordedRunner()
    runner.add(completed(C.build_accounting(["87"]), 0, stdout=placeholder))
    assert SlurmBackend(runner).accounting(["87"]) == {}
    assert runner.commands() == ["sacct"]
