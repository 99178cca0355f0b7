"""``hpcgear usage``: jobs, success rate, core/GPU-hours, wall time and queue wait.

Everything is one ``GROUP BY`` over the indexed usage columns that
:func:`hpcgear.jobs.transitions.transition` fills from SLURM accounting when a
job ends (no provenance JSON is read), so 100,000 jobs summarise in well under
a second (``bench/bench_usage.py``). Storage per project is the sum of the
stored file versions of each project.

Who may see what: a site admin anything; a project's or group's members that
project or group; anybody their own jobs (``--user`` themselves, the default
for a user without a filter).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, case, func, literal, select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, FileVersion, Gear, Job
from hpcgear.errors import InvalidInputError, PermissionDeniedError
from hpcgear.hierarchy.permissions import RoleName, get_actor, require_role
from hpcgear.hierarchy.service import resolve_container

__all__ = ["BY_KEYS", "UsageReport", "usage_report"]

By = Literal["user", "gear", "project", "month"]
BY_KEYS: tuple[str, ...] = ("user", "gear", "project", "month")


@dataclass
class UsageReport:
    by: str
    since: dt.datetime | None
    scope: dict[str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    total: dict[str, Any] = field(default_factory=dict)
    storage: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since": self.since.isoformat() if self.since else None,
            "scope": self.scope,
            "rows": self.rows,
            "total": self.total,
            "storage": self.storage,
        }


def _month(session: Session) -> ColumnElement[Any]:
    when = func.coalesce(Job.finished, Job.created)
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", when), "YYYY-MM")
    return func.strftime("%Y-%m", when)


def _user_key() -> ColumnElement[Any]:
    return case((Job.origin_type == "user", Job.origin_id),
                else_=Job.origin_type + literal(":") + Job.origin_id)


def _row(key: Any, n: int, complete: int, failed: int, cancelled: int, core: Any, gpu: Any,
         wall: Any, wait: Any, waited: int) -> dict[str, Any]:
    complete, failed, cancelled = int(complete or 0), int(failed or 0), int(cancelled or 0)
    ended = complete + failed
    return {
        "key": key if key is not None else "-",
        "jobs": int(n or 0),
        "complete": complete,
        "failed": failed,
        "cancelled": cancelled,
        "success_rate": round(complete / ended, 4) if ended else None,
        "core_hours": round(float(core or 0.0), 3),
        "gpu_hours": round(float(gpu or 0.0), 3),
        "wall_hours": round(float(wall or 0) / 3600.0, 3),
        "mean_wait_seconds": round(float(wait) / waited, 1) if waited else None,
    }


def usage_report(
    session: Session,
    actor: str,
    *,
    project: str | None = None,
    group: str | None = None,
    user: str | None = None,
    since: dt.datetime | None = None,
    by: str = "project",
) -> UsageReport:
    """Sum the usage columns of the jobs in scope, one row per ``by`` key."""
    if by not in BY_KEYS:
        raise InvalidInputError(f"--by {by!r} is not one of {', '.join(BY_KEYS)}",
                                "group by user, gear, project or month")
    me = get_actor(session, actor)
    conds: list[ColumnElement[bool]] = []
    scope: dict[str, str] = {}
    storage_scope: Any = None
    if project:
        p = resolve_container(session, project, min_depth=2, max_depth=2)
        require_role(session, actor, p, RoleName.READ_ONLY, "reading a project's usage")
        conds.append(Job.project_id == p.id)
        scope["project"] = project
        storage_scope = [p.id]
    if group:
        g = resolve_container(session, group, min_depth=1, max_depth=1)
        require_role(session, actor, g, RoleName.READ_ONLY, "reading a group's usage")
        projects = select(Container.id).where(
            Container.group_id == g.id, Container.type == "project")
        conds.append(Job.project_id.in_(projects))
        scope["group"] = group
        storage_scope = projects if storage_scope is None else storage_scope
    if user is None and not project and not group and not me.site_admin:
        user = actor  # a user without a filter sees their own jobs
    if user is not None:
        if user != actor and not me.site_admin:
            raise PermissionDeniedError(
                f"reading {user!r}'s usage needs the site-admin role",
                "ask for --project or --group usage you are a member of, or your own",
            )
        conds.append(and_(Job.origin_type == "user", Job.origin_id == user))
        scope["user"] = user
    if since is not None:
        conds.append(func.coalesce(Job.finished, Job.created) >= since)

    keys: dict[str, Any] = {
        "user": _user_key(),
        "gear": Gear.name,
        "project": Job.project_id,
        "month": _month(session),
    }
    key = keys[by].label("key")
    measures = (
        func.count(),
        func.sum(case((Job.state == "complete", 1), else_=0)),
        func.sum(case((Job.state == "failed", 1), else_=0)),
        func.sum(case((Job.state == "cancelled", 1), else_=0)),
        func.sum(Job.core_hours),
        func.sum(Job.gpu_hours),
        func.sum(Job.wall_seconds),
        func.sum(Job.wait_seconds),
        func.count(Job.wait_seconds),
    )
    q = select(key, *measures).select_from(Job)
    if by == "gear":
        q = q.join(Gear, Gear.id == Job.gear_id)
    q = q.where(*conds).group_by(key).order_by(key)
    rows = [_row(*r) for r in session.execute(q).all()]
    total_q = select(literal("total"), *measures).select_from(Job).where(*conds)
    total = _row(*session.execute(total_q).one())
    report = UsageReport(by=by, since=since, scope=scope, rows=rows, total=total)
    project_ids = [r["key"] for r in rows] if by == "project" else []
    if storage_scope is None and by == "project":
        storage_scope = [i for i in project_ids if i and i != "-"]
    if storage_scope is not None:
        report.storage = _storage(session, storage_scope)
        labels = _project_labels(session, [s["project_id"] for s in report.storage] + project_ids)
        for s in report.storage:
            s["project"] = labels.get(s["project_id"], s["project_id"])
        if by == "project":
            sizes = {s["project_id"]: s["bytes"] for s in report.storage}
            for r in rows:
                r["project_id"] = r["key"]
                r["key"] = labels.get(r["key"], r["key"])
                r["storage_bytes"] = sizes.get(r["project_id"], 0)
    return report


def _project_labels(session: Session, ids: list[str]) -> dict[str, str]:
    wanted = [i for i in dict.fromkeys(ids) if i and i != "-"]
    if not wanted:
        return {}
    rows = session.execute(
        select(Container.id, Container.label, Container.group_id).where(Container.id.in_(wanted))
    ).all()
    return {i: f"{g}/{label}" for i, label, g in rows}


def _storage(session: Session, scope: Any) -> list[dict[str, Any]]:
    """Bytes of every stored file version, per project in ``scope`` (ids or a subquery)."""
    q = (
        select(File.project_id, func.sum(FileVersion.size), func.count(FileVersion.id))
        .join(FileVersion, FileVersion.file_id == File.id)
        .where(File.project_id.in_(scope))
        .group_by(File.project_id)
        .order_by(File.project_id)
    )
    return [
        {"project_id": pid, "bytes": int(size or 0), "versions": int(n)}
        for pid, size, n in session.execute(q).all()
        if pid is not None
    ]
