"""What a researcher on a login node sees: job table, paging, show, retry with changes."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from hpcgear.cli.context import AppContext
from hpcgear.db.models import Job
from hpcgear.jobs.transitions import transition
from hpcgear.states import FailureKind, JobState
from tests.conftest import CliEnv
from tests.unit.test_jobs_service import gear_env  # noqa: F401  (fixture)


def _run(env: CliEnv, sub: str = "s1", *extra: str) -> str:
    out = env.ok("run", "test-gear", "--dest", f"lab/p1/{sub}/ses1", "--input",
                 f"input_file=lab/p1/{sub}/ses1/{sub}.nii.gz", *extra, "--json").json()
    return str(out["id"])


def _end(env: CliEnv, job_id: str, *, failed: bool) -> None:
    """Move a job to its end the way the controller does, with a sacct record."""
    app = AppContext(config_path=str(env.config))
    now = dt.datetime.now(dt.UTC)
    acc = {"elapsed_seconds": 600, "alloc_cpus": 2, "total_cpu_seconds": 900.0,
           "max_rss_bytes": 512 * 1024 * 1024,
           "submit_time": (now - dt.timedelta(minutes=15)).isoformat(),
           "start_time": (now - dt.timedelta(minutes=10)).isoformat(),
           "end_time": now.isoformat()}
    with app.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        for state in (JobState.SUBMITTING, JobState.QUEUED, JobState.RUNNING):
            transition(s, job, state, "controller", native_id="4242")
        info = {"accounting": acc}
        if failed:
            transition(s, job, JobState.FAILED, "controller", "gear exited 3",
                       failure_kind=FailureKind.GEAR_ERROR, scheduler_info=info, finished=now)
        else:
            transition(s, job, JobState.STAGING, "controller", "gear exited 0",
                       scheduler_info=info, finished=now)
            transition(s, job, JobState.COMPLETE, "controller", "published")
    app.close()


def test_table_fits_100_columns_and_wide_shows_everything(gear_env: CliEnv) -> None:  # noqa: F811
    env = gear_env
    for sub in ("s1", "s2"):
        _run(env, sub)
    listing = env.ok("jobs")
    assert "note: 2 listed job(s) wait on site local, which no controller has led since ever" \
        in listing.err
    narrow = listing.out.splitlines()
    assert narrow[0].split() == ["ID", "STATE", "GEAR", "SLURM", "AGE", "DESTINATION"]
    assert all(len(line) <= 100 for line in narrow), max(map(len, narrow))
    wide = env.ok("jobs", "--wide").out.splitlines()
    assert "SLURM-STATE" in wide[0] and "REASON" in wide[0] and "CREATED" in wide[0]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z+\-0-9]+", wide[1])


def test_json_listing_pages_and_says_when_cut(gear_env: CliEnv) -> None:  # noqa: F811
    env = gear_env
    ids = [_run(env, sub) for sub in ("s1", "s2")]
    first = env.ok("jobs", "--json", "--limit", "1")
    assert [j["id"] for j in first.json()] == [ids[1]]
    assert "more exist: add --offset 1" in first.err
    second = env.ok("jobs", "--json", "--limit", "1", "--offset", "1")
    assert [j["id"] for j in second.json()] == [ids[0]] and "more exist" not in second.err
    assert second.json()[0]["created"].endswith("+00:00")


def test_show_failed_job_efficiency_and_controller_line(gear_env: CliEnv) -> None:  # noqa: F811
    env = gear_env
    pending = _run(env, "s1")
    text = env.ok("job", "show", pending).out
    assert "no controller has led site local since ever" in text
    failed = _run(env, "s2")
    _end(env, failed, failed=True)
    data = env.ok("job", "show", failed, "--json").json()
    eff = data["efficiency"]
    assert eff["wall_seconds"] == 600 and eff["cpus"] == 1
    assert eff["core_hours"] == round(2 * 600 / 3600, 6)
    assert eff["wait_seconds"] == 300 and eff["max_rss_mb"] == 512
    assert eff["cpu_pct"] == 150.0  # 900 s of CPU in 600 s on the 1 CPU requested
    assert data["log_tail"] and "job" in data["log_tail"][0]  # no log: says so
    out = env.ok("job", "show", failed).out
    assert "efficiency:" in out and "queue wait:       300s" in out, out
    assert "no controller has led" not in out  # ended jobs need no controller
    assert re.search(r"finished: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", out)


def test_retry_with_changed_config_and_tags(gear_env: CliEnv) -> None:  # noqa: F811
    env = gear_env
    jid = _run(env, "s1", "--config", "num_files=3")
    _end(env, jid, failed=True)
    dry = env.ok("job", "retry", jid, "--config", "num_files=5", "--tag", "cpu=2", "--dry-run")
    assert "cpus       2" in dry.out and "nothing was stored" in dry.out
    out = env.ok("job", "retry", jid, "--config", "num_files=5", "--tag", "cpu=2").out
    new_id = out.split()[1].rstrip(":")
    new = env.ok("job", "show", new_id, "--json").json()
    assert new["attempt"] == 2 and new["previous_id"] == jid
    assert new["config"]["num_files"] == 5 and new["tags"] == ["cpu=2"]
    assert new["resources"]["cpus"] == 2
    assert "num_files=5" in new["events"][0]["message"]
    again = env.run("job", "retry", jid)
    assert again.code == 5 and "already retried" in again.err
    bad = env.run("job", "retry", new_id, "--config", "num_files=5")
    assert bad.code == 5 and "only failed or cancelled" in bad.err


def test_logs_follow_stops_when_the_job_ends(gear_env: CliEnv, tmp_path: Path) -> None:  # noqa: F811
    env = gear_env
    jid = _run(env, "s1")
    _end(env, jid, failed=False)
    res = env.ok("job", "logs", jid, "-f", "--interval", "0.2")
    assert f"job {jid} is complete" in res.err


def test_squeue_start_parser() -> None:
    from hpcgear.scheduler.slurm_start import build_start, parse_start

    assert build_start("77") == ["squeue", "--start", "--noheader", "--jobs=77", "--format=%S"]
    assert parse_start("N/A\n") is None
    assert parse_start("2026-12-03T23:10:00\n") == dt.datetime(2026, 12, 3, 23, 10)
    assert parse_start("") is None
