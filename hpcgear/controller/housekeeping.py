"""Housekeeping: what crashes and failures leave on disk (``hpcgear scratch gc``).

* orphan job directories and array directories on the sites' scratch;
* partial temp files of interrupted puts in permanent storage (older than
  :data:`STORAGE_TMP_AGE_SECONDS`), also swept by the controller once an hour.

A service function: it takes the acting user and checks the role; the CLI (and
the HTTP API) only present its result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.config.site import SiteConfig
from hpcgear.db.models import Job
from hpcgear.db.session import Database
from hpcgear.errors import HpcgearError, InvalidInputError
from hpcgear.hierarchy.permissions import require_site_admin
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.staging.gc import (
    list_array_dirs,
    list_scratch,
    plan_array_gc,
    plan_gc,
    remove_scratch,
)
from hpcgear.states import JobState
from hpcgear.storage.objects import ObjectStore

from .sites import connect_site

#: A temp file in storage this old belongs to no running put.
STORAGE_TMP_AGE_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class ScratchEntry:
    site: str
    job_id: str
    attempt: int
    path: str
    age_seconds: int
    action: str  # "remove" (done or, in a dry run, planned), "keep" or "failed"
    reason: str

    def as_dict(self, dry_run: bool) -> dict[str, Any]:
        return {
            "site": self.site,
            "kind": "array" if self.attempt == 0 else "job",
            "job_id": self.job_id,
            "attempt": self.attempt,
            "path": self.path,
            "age_seconds": self.age_seconds,
            "action": self.action,
            "reason": self.reason,
            "dry_run": dry_run,
        }


@dataclass
class ScratchGcResult:
    dry_run: bool
    directories: list[ScratchEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one per unreachable site
    storage_tmp_removed: int = 0

    @property
    def removed(self) -> int:
        return sum(1 for d in self.directories if d.action == "remove")


def scratch_roots(session: Session, site: SiteConfig, fallback_user: str) -> list[str]:
    """Every scratch root jobs of ``site`` may have used ({user} filled per job user)."""
    users = {"hpcgear", site.transport.user or fallback_user}
    users |= set(
        session.scalars(
            select(Job.origin_id)
            .where(Job.site == site.name, Job.origin_type == "user")
            .distinct()
        ).all()
    )
    roots: list[str] = []
    for user in sorted(users):
        try:
            root = site.render_scratch_root(user)
        except InvalidInputError:
            continue
        if root not in roots:
            roots.append(root)
    return roots


def _live_arrays(db: Database, array_ids: Sequence[str]) -> set[str]:
    final = [s.value for s in JobState if s.final]
    live: set[str] = set()
    with db.session() as s:
        for i in range(0, len(array_ids), 500):
            chunk = list(array_ids[i : i + 500])
            live |= {
                str(a)
                for a in s.scalars(
                    select(Job.array_id)
                    .where(Job.array_id.in_(chunk), Job.state.not_in(final))
                    .distinct()
                ).all()
            }
    return live


def _live_and_known(db: Database, ids: Sequence[str]) -> tuple[set[str], set[str]]:
    final = [s.value for s in JobState if s.final]
    known: set[str] = set()
    live: set[str] = set()
    with db.session() as s:
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            for job_id, state in s.execute(
                select(Job.id, Job.state).where(Job.id.in_(chunk))
            ).all():
                known.add(job_id)
                if state not in final:
                    live.add(job_id)
    return live, known


def collect_scratch(
    db: Database,
    settings: Settings,
    actor: str,
    *,
    site_name: str | None = None,
    older_than_minutes: int | None = None,
    dry_run: bool = False,
    fallback_user: str = "hpcgear",
    store: ObjectStore | None = None,
) -> ScratchGcResult:
    """Remove orphan job directories under ``<scratch>/hpcgear/`` of every (or one) site.

    A directory goes when its job is finished or unknown and nothing in it
    changed for longer than the age limit (``older_than_minutes``, else the
    site's ``scratch_gc_age``). A live job's directory is never touched. One
    unreachable site is reported in ``errors`` and does not stop the others.
    An array directory goes when no live job belongs to the array (same age
    limit). With ``store``, temp files of interrupted puts older than an hour
    are removed too. Site admins only.
    """
    with db.session() as s:
        require_site_admin(s, actor, "cleaning scratch")
    registry = SiteRegistry.from_settings(settings)
    sites = [registry.get(site_name)] if site_name else list(registry.sites.values())
    result = ScratchGcResult(dry_run=dry_run)
    for site in sites:
        limit_min = older_than_minutes or site.scratch_gc_age_minutes
        rt = connect_site(site, settings)
        try:
            with db.session() as s:
                roots = scratch_roots(s, site, fallback_user)
            dirs = []
            for root in roots:
                dirs += list_scratch(rt.transport, root)
            live, known = _live_and_known(db, sorted({d.job_id for d in dirs}))
            decisions = plan_gc(
                dirs,
                live_job_ids=live,
                known_job_ids=known,
                now=time.time(),
                older_than_seconds=limit_min * 60,
            )
            arrays = []
            for root in roots:
                arrays += list_array_dirs(rt.transport, root)
            decisions += plan_array_gc(
                arrays,
                live_array_ids=_live_arrays(db, sorted({a.job_id for a in arrays})),
                now=time.time(),
                older_than_seconds=limit_min * 60,
            )
            removed = {
                d.path
                for d in (decisions if dry_run else remove_scratch(rt.transport, decisions))
                if d.action == "remove"
            }
        except HpcgearError as exc:  # one unreachable site must not stop the others
            result.errors.append(f"{site.name}: {exc.message}")
            continue
        finally:
            rt.close()
        for d in decisions:
            result.directories.append(
                ScratchEntry(
                    site=site.name,
                    job_id=d.job_id,
                    attempt=d.attempt,
                    path=d.path,
                    age_seconds=int(d.age_seconds),
                    action=d.action if d.action == "keep" or d.path in removed else "failed",
                    reason=d.reason,
                )
            )
    if store is not None and not dry_run:
        result.storage_tmp_removed = store.clean_tmp(older_than_seconds=STORAGE_TMP_AGE_SECONDS)
    return result
