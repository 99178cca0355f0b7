"""Usage figures of one ended job, from the SLURM accounting the controller stored.

The controller keeps each ended job's ``sacct`` record in
``scheduler_info["accounting"]``; :func:`usage_columns` turns it into the indexed
job columns (core-hours, GPU-hours, wall and wait seconds, CPU used, peak RSS)
that ``hpcgear usage`` and the HTML report sum, so no report parses JSON.
:func:`hpcgear.jobs.transitions.transition` fills them whenever a job moves to
``staging`` or a final state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

__all__ = ["usage_columns"]


def _when(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def usage_columns(
    scheduler_info: Mapping[str, Any] | None,
    resources: Mapping[str, Any] | None,
    *,
    submitted: dt.datetime | None = None,
    started: dt.datetime | None = None,
    finished: dt.datetime | None = None,
) -> dict[str, Any]:
    """The usage columns for a job; only the values that can be known are returned.

    Core-hours are allocated CPUs (``AllocCPUS``, else the requested CPUs) times
    the elapsed time; GPU-hours the requested GPUs times the elapsed time; the
    wait is SLURM's submit-to-start time (else the job row's own times).
    """
    acc = (scheduler_info or {}).get("accounting") or {}
    res = resources or {}
    out: dict[str, Any] = {}
    elapsed = _number(acc.get("elapsed_seconds"))
    start = _when(acc.get("start_time")) or _when(started)
    if elapsed is None:
        end = _when(acc.get("end_time")) or _when(finished)
        if start is not None and end is not None and end >= start:
            elapsed = (end - start).total_seconds()
    if elapsed is not None:
        out["wall_seconds"] = int(elapsed)
        cpus = _number(acc.get("alloc_cpus")) or _number(res.get("cpus")) or 1.0
        out["core_hours"] = round(cpus * elapsed / 3600.0, 6)
        gpus = _number(res.get("gpus")) or 0.0
        out["gpu_hours"] = round(gpus * elapsed / 3600.0, 6)
    submit = _when(acc.get("submit_time")) or _when(submitted)
    if submit is not None and start is not None and start >= submit:
        out["wait_seconds"] = int((start - submit).total_seconds())
    used = _number(acc.get("total_cpu_seconds"))
    if used is not None:
        out["cpu_used_seconds"] = used
    rss = _number(acc.get("max_rss_bytes"))
    if rss is not None:
        out["max_rss_mb"] = int(rss // (1024 * 1024))
    return out
