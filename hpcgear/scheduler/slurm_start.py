"""``squeue --start``: SLURM's estimated start time of a pending job.

Command builder plus pure parser (captured output in the tests). SLURM prints
``N/A`` while the backfill scheduler has not yet estimated the job, and an
ISO-like local time (``2026-12-03T23:10:00``) once it has.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["build_start", "parse_start"]


def build_start(native_id: str) -> list[str]:
    """argv asking SLURM when ``native_id`` is expected to start."""
    return ["squeue", "--start", "--noheader", f"--jobs={native_id}", "--format=%S"]


def parse_start(stdout: str) -> datetime | None:
    """The estimated start (naive, the cluster's local time), or None if unknown."""
    for line in stdout.splitlines():
        text = line.strip()
        if not text or text in ("N/A", "Unknown", "None"):
            continue
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            continue
    return None
