"""Scratch garbage collection: orphan job directories under ``<scratch>/hpcgear/``.

A job directory is normally removed right after its outputs are committed.
What is left behind (failed jobs kept for debugging, crashes between commit
and cleanup, jobs whose rows were deleted) is collected here once it is older
than the site's ``scratch_gc_age``.

The rules, in :func:`plan_gc` (pure, so they are tested without a cluster):

* a directory of a **live** job (any non-final state) is never touched, however
  old it looks: a long job may not write for days;
* otherwise an attempt directory ``<job-id>/a<n>`` is removed when its
  *activity time* - the newest mtime of the directory, its ``.hpcgear`` files
  (log, exit record) and its ``flywheel/v0`` entries - is older than the limit;
* names that are not hpcgear job directories are left alone;
* an array directory ``arrays/<array-id>`` (the array's script and SLURM's
  per-task logs) is removed when no live job belongs to that array and it is
  older than the limit (:func:`plan_array_gc`).

:func:`list_scratch` gathers what the rules need with one ``find`` through the
transport (local or SSH), :func:`remove_scratch` removes the chosen directories.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from hpcgear.errors import HpcgearError, StagingError
from hpcgear.render.paths import JOB_ID_RE
from hpcgear.scheduler.transport import Transport

logger = logging.getLogger(__name__)

ATTEMPT_RE = re.compile(r"^a([1-9][0-9]{0,5})$")
#: Depth below ``<scratch>/hpcgear`` that is looked at: job/aN/.hpcgear/slurm-1.out.
SCAN_DEPTH = 4
SKIPPED_TOP = frozenset({"arrays"})


@dataclass(frozen=True, slots=True)
class ScratchDir:
    """One attempt directory as found on scratch."""

    job_id: str
    attempt: int
    path: str
    activity: float  # newest mtime seen in it (epoch seconds)


@dataclass(frozen=True, slots=True)
class GcDecision:
    job_id: str
    attempt: int
    path: str
    age_seconds: float
    action: Literal["remove", "keep"]
    reason: str


def parse_scratch_listing(root: str, stdout: str) -> list[ScratchDir]:
    """``find ROOT -mindepth 2 -maxdepth 4 -printf '%T@\\0%P\\0'`` -> attempt dirs.

    Entries that are not ``<job-id>/a<n>[/...]`` are ignored.
    """
    fields = stdout.split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    newest: dict[tuple[str, int], float] = {}
    for i in range(0, len(fields) - 1, 2):
        try:
            mtime = float(fields[i])
        except ValueError:
            continue
        parts = fields[i + 1].split("/")
        if len(parts) < 2 or parts[0] in SKIPPED_TOP or not JOB_ID_RE.fullmatch(parts[0]):
            continue
        m = ATTEMPT_RE.fullmatch(parts[1])
        if not m:
            continue
        key = (parts[0], int(m.group(1)))
        newest[key] = max(newest.get(key, 0.0), mtime)
    return [ScratchDir(job, attempt, posixpath.join(root, job, f"a{attempt}"), t)
            for (job, attempt), t in sorted(newest.items())]


def plan_gc(dirs: Sequence[ScratchDir], *, live_job_ids: Collection[str],
            known_job_ids: Collection[str] | None = None, now: float,
            older_than_seconds: float) -> list[GcDecision]:
    """Decide for each attempt directory (see the module docstring)."""
    live = set(live_job_ids)
    known = set(known_job_ids) if known_job_ids is not None else None
    out: list[GcDecision] = []
    for d in dirs:
        age = max(0.0, now - d.activity)
        if d.job_id in live:
            out.append(GcDecision(d.job_id, d.attempt, d.path, age, "keep", "job is live"))
        elif age < older_than_seconds:
            out.append(GcDecision(d.job_id, d.attempt, d.path, age, "keep",
                                  f"active {_age(age)} ago (limit {_age(older_than_seconds)})"))
        else:
            what = "unknown job" if known is not None and d.job_id not in known else "job finished"
            out.append(GcDecision(d.job_id, d.attempt, d.path, age, "remove",
                                  f"{what}, idle for {_age(age)}"))
    return out


def _age(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 60}m"


def list_scratch(transport: Transport, scratch_root: str) -> list[ScratchDir]:
    """Attempt directories under ``<scratch_root>/hpcgear`` (empty if it does not exist)."""
    root = posixpath.join(scratch_root, "hpcgear")
    try:
        if not transport.exists(root):
            return []
        result = transport.run(["find", "-P", root, "-mindepth", "2", "-maxdepth",
                                str(SCAN_DEPTH), "-printf", "%T@\\0%P\\0"], timeout=600)
    except HpcgearError as exc:
        raise StagingError(f"cannot list {root}: {exc.message}", exc.hint,
                           transient=exc.transient) from None
    if result.returncode not in (0, 1):  # 1: something vanished while listing
        raise StagingError(f"listing {root} failed (exit {result.returncode}): "
                           f"{result.output[:200]}", "check the scratch file system",
                           transient=True)
    return parse_scratch_listing(root, result.stdout)


def remove_scratch(transport: Transport, decisions: Sequence[GcDecision]) -> list[GcDecision]:
    """Remove every ``remove`` decision's directory; returns those removed."""
    done: list[GcDecision] = []
    for d in decisions:
        if d.action != "remove":
            continue
        try:
            transport.remove_tree(d.path)
        except HpcgearError as exc:
            logger.warning("scratch gc: cannot remove %s: %s", d.path, exc)
            continue
        done.append(d)
        parent = posixpath.dirname(d.path)
        try:
            if not transport.listdir(parent):
                transport.remove_tree(parent)
        except HpcgearError:
            pass
    return done


def parse_array_listing(arrays_root: str, stdout: str) -> list[ScratchDir]:
    """``find <scratch>/hpcgear/arrays -mindepth 1 -maxdepth 2 -printf '%T@\\0%P\\0'``.

    Returns one entry per ``<array-id>`` directory (``attempt`` 0), with the
    newest mtime seen in it.
    """
    fields = stdout.split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    newest: dict[str, float] = {}
    for i in range(0, len(fields) - 1, 2):
        try:
            mtime = float(fields[i])
        except ValueError:
            continue
        name = fields[i + 1].split("/")[0]
        if not JOB_ID_RE.fullmatch(name):
            continue
        newest[name] = max(newest.get(name, 0.0), mtime)
    return [ScratchDir(a, 0, posixpath.join(arrays_root, a), t) for a, t in sorted(newest.items())]


def list_array_dirs(transport: Transport, scratch_root: str) -> list[ScratchDir]:
    """Array directories under ``<scratch_root>/hpcgear/arrays`` (empty if none)."""
    root = posixpath.join(scratch_root, "hpcgear", "arrays")
    try:
        if not transport.exists(root):
            return []
        result = transport.run(["find", "-P", root, "-mindepth", "1", "-maxdepth", "2",
                                "-printf", "%T@\\0%P\\0"], timeout=600)
    except HpcgearError as exc:
        raise StagingError(f"cannot list {root}: {exc.message}", exc.hint,
                           transient=exc.transient) from None
    if result.returncode not in (0, 1):
        raise StagingError(f"listing {root} failed (exit {result.returncode}): "
                           f"{result.output[:200]}", "check the scratch file system",
                           transient=True)
    return parse_array_listing(root, result.stdout)


def plan_array_gc(dirs: Sequence[ScratchDir], *, live_array_ids: Collection[str], now: float,
                  older_than_seconds: float) -> list[GcDecision]:
    """Decide for each array directory: kept while a live job uses it or it is recent."""
    live = set(live_array_ids)
    out: list[GcDecision] = []
    for d in dirs:
        age = max(0.0, now - d.activity)
        if d.job_id in live:
            out.append(GcDecision(d.job_id, 0, d.path, age, "keep", "a live job uses the array"))
        elif age < older_than_seconds:
            out.append(GcDecision(d.job_id, 0, d.path, age, "keep",
                                  f"array active {_age(age)} ago "
                                  f"(limit {_age(older_than_seconds)})"))
        else:
            out.append(GcDecision(d.job_id, 0, d.path, age, "remove",
                                  f"array no live job uses, idle for {_age(age)}"))
    return out
