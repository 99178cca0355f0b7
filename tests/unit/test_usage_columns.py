"""Usage columns from a stored sacct record (or the job's own times when there is none)."""

from __future__ import annotations

import datetime as dt

from hpcgear.jobs.usage_columns import usage_columns

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


def test_from_sacct() -> None:
    acc = {"elapsed_seconds": 3600, "alloc_cpus": 4, "total_cpu_seconds": 7200.5,
           "max_rss_bytes": 3 * 1024**3, "submit_time": T0.isoformat(),
           "start_time": (T0 + dt.timedelta(minutes=5)).isoformat()}
    out = usage_columns({"accounting": acc}, {"cpus": 2, "gpus": 1})
    assert out == {"wall_seconds": 3600, "core_hours": 4.0, "gpu_hours": 1.0,
                   "wait_seconds": 300, "cpu_used_seconds": 7200.5, "max_rss_mb": 3072}


def test_without_accounting_the_job_times_and_request_are_used() -> None:
    out = usage_columns({}, {"cpus": 2}, submitted=T0, started=T0 + dt.timedelta(seconds=30),
                        finished=T0 + dt.timedelta(seconds=930))
    assert out == {"wall_seconds": 900, "core_hours": 0.5, "gpu_hours": 0.0, "wait_seconds": 30}
    naive = usage_columns(None, None, started=dt.datetime(2026, 1, 1, 0, 0),
                          finished=dt.datetime(2026, 1, 1, 1, 0))
    assert naive["wall_seconds"] == 3600 and naive["core_hours"] == 1.0


def test_nothing_known_gives_nothing() -> None:
    assert usage_columns({"accounting": None}, {}) == {}
    assert usage_columns({"accounting": {"elapsed_seconds": "x"}}, {}) == {}
