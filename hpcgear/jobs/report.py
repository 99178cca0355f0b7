"""``hpcgear report PROJECT --html OUT``: the figures behind a project's report page.

Reads the job rows (state, gear, user, usage columns) and, for one session, the
provenance records, and hands plain values to
:func:`hpcgear.jobs.report_html.render_report_html`. Needs read access to the
project.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, Gear, Job, ProvenanceRecord
from hpcgear.hierarchy.permissions import RoleName, require_role
from hpcgear.hierarchy.service import container_path, resolve_container
from hpcgear.jobs.report_html import ProvEdge, ProvNode, ReportData
from hpcgear.jobs.usage import usage_report

__all__ = ["project_report"]

STATE_ORDER = ("complete", "failed", "cancelled", "staging", "running", "queued", "submitting",
               "pending")


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    return None if t is None else (t if t.tzinfo else t.replace(tzinfo=dt.UTC))


def project_report(
    session: Session, actor: str, project: str, *, session_path: str | None = None,
    now: dt.datetime | None = None,
) -> ReportData:
    """Everything the report page shows for ``project`` (``group/project``)."""
    p = resolve_container(session, project, min_depth=2, max_depth=2)
    require_role(session, actor, p, RoleName.READ_ONLY, "reading a project's report")
    now = now or dt.datetime.now(dt.UTC)
    totals = usage_report(session, actor, project=project, by="project").total
    rows = session.execute(
        select(Job.state, Job.failure_kind, Gear.name, Job.origin_type, Job.origin_id,
               Job.created, Job.core_hours, Job.wait_seconds, Job.wall_seconds)
        .join(Gear, Gear.id == Job.gear_id)
        .where(Job.project_id == p.id)
    ).all()
    days = sorted({t.date() for t in (_aware(r.created) for r in rows) if t is not None})
    monthly = len(days) > 60 or (bool(days) and (days[-1] - days[0]).days > 90)

    def bucket(t: dt.datetime) -> str:
        t = _aware(t) or now
        return t.strftime("%Y-%m") if monthly else t.strftime("%Y-%m-%d")

    buckets = sorted({bucket(r.created) for r in rows if r.created is not None})
    index = {b: i for i, b in enumerate(buckets)}
    by_state: dict[str, list[int]] = {}
    core_gear: defaultdict[str, float] = defaultdict(float)
    core_user: defaultdict[str, float] = defaultdict(float)
    failures: Counter[str] = Counter()
    points: list[tuple[float, float, str]] = []
    for r in rows:
        if r.created is not None:
            by_state.setdefault(r.state, [0] * len(buckets))[index[bucket(r.created)]] += 1
        user = r.origin_id if r.origin_type == "user" else f"{r.origin_type}:{r.origin_id}"
        if r.core_hours:
            core_gear[r.name] += r.core_hours
            core_user[user] += r.core_hours
        if r.state == "failed":
            failures[r.failure_kind or "unknown"] += 1
        if r.wait_seconds is not None and r.wall_seconds is not None:
            points.append((float(r.wait_seconds), float(r.wall_seconds), r.state))
    ordered = {s: by_state[s] for s in STATE_ORDER if s in by_state}
    data = ReportData(
        project=project,
        generated=now.astimezone().isoformat(timespec="seconds"),
        totals=totals,
        buckets=buckets,
        by_state=ordered,
        core_by_gear=sorted(core_gear.items()),
        core_by_user=sorted(core_user.items()),
        wait_run=points,
        failure_kinds=sorted(failures.items()),
    )
    ses = _pick_session(session, p, session_path)
    if ses is not None:
        data.session = container_path(session, ses)
        data.prov_nodes, data.prov_edges = _provenance(session, ses)
    return data


def _pick_session(session: Session, project: Container, path: str | None) -> Container | None:
    if path:
        return resolve_container(session, path, min_depth=4, max_depth=4)
    q = (
        select(Container.session_id, func.count())
        .select_from(Job)
        .join(ProvenanceRecord, ProvenanceRecord.job_id == Job.id)
        .join(Container, Container.id == Job.destination_id)
        .where(Job.project_id == project.id, Container.session_id.is_not(None))
        .group_by(Container.session_id)
        .order_by(func.count().desc(), Container.session_id)
        .limit(1)
    )
    row = session.execute(q).first()
    return session.get(Container, row[0]) if row else None


def _provenance(session: Session, ses: Container) -> tuple[list[ProvNode], list[ProvEdge]]:
    records = session.execute(
        select(ProvenanceRecord.record, Job.state)
        .join(Job, Job.id == ProvenanceRecord.job_id)
        .join(Container, Container.id == Job.destination_id)
        .where(Container.session_id == ses.id)
        .order_by(Job.created)
    ).all()
    nodes: dict[str, ProvNode] = {}
    edges: list[ProvEdge] = []
    for rec, state in records[:60]:
        jid = str(rec.get("id"))
        gear = rec.get("gear") or {}
        nodes[jid] = ProvNode(jid, f"{gear.get('name')}@{gear.get('version')}", "job", state)
        for f in rec.get("inputs") or []:
            fid = str(f.get("id"))
            nodes.setdefault(fid, ProvNode(fid, f"{f.get('name')} v{f.get('version')}", "file"))
            edges.append(ProvEdge(fid, jid))
        for f in rec.get("outputs") or []:
            fid = str(f.get("id"))
            nodes.setdefault(fid, ProvNode(fid, f"{f.get('name')} v{f.get('version')}", "file"))
            edges.append(ProvEdge(jid, fid))
    return list(nodes.values()), edges
