"""Requested versus used resources of an ended job (``job show``, the HTML report).

Reads the usage columns filled from SLURM accounting at finish
(:mod:`hpcgear.jobs.usage_columns`) and the resources the job asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["efficiency"]


def _pct(used: float, asked: float) -> float | None:
    return round(100.0 * used / asked, 1) if asked > 0 else None


def efficiency(job: Any) -> dict[str, Any] | None:
    """CPU, memory and time used as a share of what was requested; None if not known.

    ``job`` is a ``Job`` model or a row of the ``jobs`` table (``job show`` reads
    rows in Core, :mod:`hpcgear.jobs.queries`): only its columns are read.
    """
    if job.wall_seconds is None:
        return None
    res: Mapping[str, Any] = job.resources or {}
    cpus = float(res.get("cpus") or 1)
    mem_mb = float(res.get("mem_mb") or 0)
    limit_s = float(res.get("time_minutes") or 0) * 60.0
    wall = float(job.wall_seconds)
    out: dict[str, Any] = {
        "wall_seconds": job.wall_seconds,
        "time_limit_seconds": int(limit_s) if limit_s else None,
        "time_pct": _pct(wall, limit_s),
        "cpus": int(cpus),
        "cpu_used_seconds": job.cpu_used_seconds,
        "cpu_pct": (_pct(job.cpu_used_seconds, cpus * wall)
                    if job.cpu_used_seconds is not None and wall > 0 else None),
        "mem_requested_mb": int(mem_mb) if mem_mb else None,
        "max_rss_mb": job.max_rss_mb,
        "mem_pct": _pct(float(job.max_rss_mb), mem_mb) if job.max_rss_mb is not None else None,
        "core_hours": job.core_hours,
        "gpu_hours": job.gpu_hours,
        "wait_seconds": job.wait_seconds,
    }
    return out
