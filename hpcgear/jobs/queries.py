"""Job listing and job show in SQLAlchemy Core: the login-node read paths.

``hpcgear jobs`` and ``hpcgear job show`` read through these functions on a Core
``Connection`` (``Database.connect()``), so they never import ``sqlalchemy.orm``
or the ORM models (100-150 ms of a call's start-up). They return ``Row`` objects
with the columns of :data:`hpcgear.db.tables.jobs` as attributes, and apply the
same visibility rules as the ORM services in :mod:`hpcgear.jobs.service`, which
share the listing's statement (:func:`jobs_page`) and the dict shapes
(:func:`job_dict`, :func:`event_dict`) defined here.
``tests/unit/test_login_node_reads.py`` checks that both give the same answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from hpcgear.db.tables import containers, controller_leases, controller_status, gears, job_events
from hpcgear.db.tables import jobs as jobs_t
from hpcgear.errors import InvalidInputError, NotFoundError
from hpcgear.hierarchy.access import (
    RoleName,
    get_actor,
    get_container,
    require_role,
    resolve_project,
    visible_scopes,
)
from hpcgear.states import JobState

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Connection, Row
    from sqlalchemy.sql import Select

    from hpcgear.hierarchy.access import Reader

__all__ = [
    "MIN_STALE_SECONDS",
    "check_state",
    "container_paths",
    "event_dict",
    "get_job",
    "job_dict",
    "job_dicts",
    "job_events_of",
    "jobs_page",
    "last_led",
    "list_jobs",
    "paths_of",
    "stale_after",
    "visible_to",
]

#: A site whose controller has not cycled for this long (or 3 poll intervals,
#: whichever is longer) counts as not led.
MIN_STALE_SECONDS = 300


def stale_after(poll_interval_seconds: int) -> dt.timedelta:
    """How old a site's last cycle may be before the site counts as not led."""
    return dt.timedelta(seconds=max(MIN_STALE_SECONDS, 3 * poll_interval_seconds))


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def last_led(conn: Connection, site: str) -> dt.datetime | None:
    """When a controller last cycled ``site`` (None: never): the later of its last
    recorded cycle and its lease's heartbeat."""
    cycle = conn.scalar(
        select(controller_status.c.last_cycle).where(controller_status.c.site == site)
    )
    beat = conn.scalar(
        select(controller_leases.c.heartbeat).where(controller_leases.c.site == site)
    )
    times = [t for t in (_aware(cycle), _aware(beat)) if t is not None]
    return max(times) if times else None


def check_state(state: str) -> None:
    try:
        JobState(state)
    except ValueError:
        raise InvalidInputError(
            f"unknown state {state!r}", f"states: {', '.join(s.value for s in JobState)}"
        ) from None


def visible_to(actor: str) -> ColumnElement[bool]:
    """Jobs ``actor`` started, or on a project/group where ``actor`` holds any role."""
    scopes, projects_of_groups = visible_scopes(actor)
    c = jobs_t.c
    return or_(
        c.origin_id == actor,
        c.project_id.in_(scopes),
        c.project_id.in_(projects_of_groups),
        c.destination_id.in_(scopes),  # a job whose destination is a group
    )


def jobs_page(
    conn: Reader,
    actor: str,
    *,
    state: str | None = None,
    mine: bool = False,
    project: str | None = None,
    limit: int = 200,
) -> Select[Any]:
    """The SELECT of the newest ``limit`` jobs the actor may see, filtered in SQL.

    Visibility (own jobs, or a role on the destination's project or group,
    :func:`visible_to`) is a WHERE clause, so the limit counts visible jobs and the
    newest-first order walks the ``ix_jobs_created`` index instead of sorting the
    table. The actor and project checks read through ``conn``, a Core connection or
    an ORM session: :func:`list_jobs` runs the statement for rows,
    :func:`hpcgear.jobs.service.list_jobs` for ``Job`` models.
    """
    user = get_actor(conn, actor)
    c = jobs_t.c
    q = select(jobs_t).order_by(c.created.desc(), c.id.desc()).limit(limit)
    if state:
        check_state(state)
        q = q.where(c.state == state)
    if mine:
        q = q.where(c.origin_id == actor)
    if project:
        p = resolve_project(conn, project)
        require_role(conn, actor, p, RoleName.READ_ONLY, "listing jobs")
        q = q.where(c.project_id == p.id)
    elif not user.site_admin:
        q = q.where(visible_to(actor))
    return q


def list_jobs(
    conn: Connection,
    actor: str,
    *,
    state: str | None = None,
    mine: bool = False,
    project: str | None = None,
    limit: int = 200,
) -> list[Row[Any]]:
    """The newest ``limit`` jobs the actor may see (:func:`jobs_page`), as rows."""
    q = jobs_page(conn, actor, state=state, mine=mine, project=project, limit=limit)
    return list(conn.execute(q))


def get_job(conn: Connection, actor: str, job_id: str) -> Row[Any]:
    """One job the actor may see (:func:`hpcgear.jobs.service.get_job` in Core)."""
    job = conn.execute(select(jobs_t).where(jobs_t.c.id == job_id)).first()
    if job is None:
        raise NotFoundError(f"job {job_id!r} does not exist", "list jobs with `hpcgear jobs`")
    dest = get_container(conn, job.destination_id)
    user = get_actor(conn, actor)
    if dest is not None and not user.site_admin and job.origin_id != actor:
        require_role(conn, actor, dest, RoleName.READ_ONLY, "viewing a job")
    return job


def job_events_of(conn: Connection, job_id: str) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
        )
    )


def event_dict(e: Any) -> dict[str, Any]:
    """A job event (model or row) as ``job show`` and the API give it."""
    return {
        "ts": e.ts.isoformat(),
        "actor": e.actor,
        "kind": e.kind,
        "old_state": e.old_state,
        "new_state": e.new_state,
        "message": e.message,
        "data": e.data,
    }


def job_dict(job: Any, gears_by_id: Mapping[int, str], paths: Mapping[str, str]) -> dict[str, Any]:
    """A job (model or row) as ``jobs --json``, ``job show`` and the API give it."""
    return {
        "id": job.id,
        "attempt": job.attempt,
        "previous_id": job.previous_id,
        "gear": gears_by_id.get(job.gear_id),
        "state": job.state,
        "failure_kind": job.failure_kind,
        "failure_message": job.failure_message,
        "site": job.site,
        "native_id": job.native_id,
        "scheduler_state": job.scheduler_state,
        "pending_reason": job.pending_reason,
        "destination": paths.get(job.destination_id, job.destination_id),
        "destination_type": job.destination_type,
        "tags": job.tags,
        "priority": job.priority,
        "origin": {"type": job.origin_type, "id": job.origin_id},
        "config": job.config,
        "inputs": job.inputs,
        "resources": job.resources,
        "created": job.created.isoformat() if job.created else None,
        "modified": job.modified.isoformat() if job.modified else None,
    }


def job_dicts(conn: Connection, jobs: Sequence[Any]) -> list[dict[str, Any]]:
    """:func:`job_dict` of many jobs: gears, destinations and their paths in 3 queries."""
    gear_ids = {j.gear_id for j in jobs}
    names = {
        g.id: f"{g.name}@{g.version}"
        for g in (
            conn.execute(select(gears.c.id, gears.c.name, gears.c.version)
                         .where(gears.c.id.in_(gear_ids)))
            if gear_ids else []
        )
    }  # fmt: skip
    paths = container_paths(conn, {j.destination_id for j in jobs})
    return [job_dict(job, names, paths) for job in jobs]


_PATH_COLUMNS = (
    containers.c.id,
    containers.c.type,
    containers.c.label,
    containers.c.parent_id,
    containers.c.group_id,
    containers.c.project_id,
    containers.c.subject_id,
    containers.c.session_id,
    containers.c.acquisition_id,
)


def container_paths(conn: Connection, ids: set[str]) -> dict[str, str]:
    """Human paths of many containers: the containers, then all their ancestors, at once."""
    if not ids:
        return {}

    def fetch(wanted: set[str]) -> list[Any]:
        return list(conn.execute(select(*_PATH_COLUMNS).where(containers.c.id.in_(wanted))))

    return paths_of(ids, fetch)


def paths_of(ids: set[str], fetch: Callable[[set[str]], Sequence[Any]]) -> dict[str, str]:
    """Paths of the containers ``ids``; ``fetch(ids)`` loads containers (models or rows).

    Two fetches for the whole set (the containers, then every ancestor their id
    columns name); a parent none of them names (an analysis below an analysis's
    container) is fetched on its own.
    """
    found: dict[str, Any] = {c.id: c for c in fetch(ids)}
    ancestors = {
        a
        for c in found.values()
        for a in (c.group_id, c.project_id, c.subject_id, c.session_id, c.acquisition_id,
                  c.parent_id)
        if a and a not in found
    }  # fmt: skip
    if ancestors:
        found.update((c.id, c) for c in fetch(ancestors))
    out = {}
    for cid in ids:
        parts: list[str] = []
        node = found.get(cid)
        while node is not None:
            parts.append(node.id if node.type == "group" else node.label)
            if not node.parent_id:
                break
            parent = found.get(node.parent_id)
            if parent is None:  # an ancestor the id columns do not name (analyses)
                got = fetch({node.parent_id})
                parent = got[0] if got else None
                if parent is not None:
                    found[parent.id] = parent
            node = parent
        if parts:
            out[cid] = "/".join(reversed(parts))
    return out
