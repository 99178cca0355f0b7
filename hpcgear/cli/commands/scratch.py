"""Scratch commands: garbage-collect orphan job directories."""

from __future__ import annotations

import time
from typing import Any

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.group("scratch")
def scratch_group() -> None:
    """Job directories on the sites' scratch file systems."""


def _scratch_roots(app: AppContext, session: Any, site: Any, transport_user: str | None
                   ) -> list[str]:
    """Every scratch root jobs of ``site`` may have used ({user} filled per job user)."""
    from sqlalchemy import select

    from hpcgear.cli.context import os_login
    from hpcgear.db.models import Job
    from hpcgear.errors import InvalidInputError

    users = {"hpcgear", transport_user or os_login()}
    users |= set(session.scalars(select(Job.origin_id).where(
        Job.site == site.name, Job.origin_type == "user").distinct()).all())
    roots: list[str] = []
    for user in sorted(users):
        try:
            root = site.render_scratch_root(user)
        except InvalidInputError:
            continue
        if root not in roots:
            roots.append(root)
    return roots


@scratch_group.command("gc")
@click.option("--site", "site_name", metavar="NAME", help="Only this site (default: every site).")
@click.option("--older-than", "older_than", metavar="AGE",
              help="Remove directories idle this long (default: the site's scratch_gc_age), "
                   "e.g. 3d, 12h.")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def scratch_gc(app: AppContext, site_name: str | None, older_than: str | None, dry_run: bool,
               as_json: bool) -> None:
    """Remove orphan job directories under <scratch>/hpcgear/ (site admins).

    A directory is removed when its job is finished or unknown and nothing in
    it changed for longer than the age limit. A live job's directory is never
    touched.
    """
    from sqlalchemy import select

    from hpcgear.controller.sites import connect_site
    from hpcgear.db.models import Job
    from hpcgear.errors import HpcgearError, TransportError
    from hpcgear.hierarchy.permissions import require_site_admin
    from hpcgear.jobs.sites import SiteRegistry
    from hpcgear.staging.gc import list_scratch, plan_gc, remove_scratch
    from hpcgear.states import JobState
    from hpcgear.units import parse_time_minutes

    actor = app.actor
    registry = SiteRegistry.from_settings(app.settings)
    sites = [registry.get(site_name)] if site_name else list(registry.sites.values())
    limit_override = parse_time_minutes(older_than, what="--older-than") if older_than else None
    final = [s.value for s in JobState if s.final]
    report: list[dict[str, Any]] = []
    errors: list[str] = []
    with app.db.session() as s:
        require_site_admin(s, actor, "cleaning scratch")
    for site in sites:
        limit_min = limit_override or site.scratch_gc_age_minutes
        rt = connect_site(site, app.settings)
        try:
            with app.db.session() as s:
                roots = _scratch_roots(app, s, site, site.transport.user)
            dirs = []
            for root in roots:
                dirs += list_scratch(rt.transport, root)
            ids = sorted({d.job_id for d in dirs})
            with app.db.session() as s:
                known: set[str] = set()
                live: set[str] = set()
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    for job_id, state in s.execute(select(Job.id, Job.state)
                                                   .where(Job.id.in_(chunk))).all():
                        known.add(job_id)
                        if state not in final:
                            live.add(job_id)
            decisions = plan_gc(dirs, live_job_ids=live, known_job_ids=known, now=time.time(),
                                older_than_seconds=limit_min * 60)
            removed = {d.path for d in (decisions if dry_run else
                                        remove_scratch(rt.transport, decisions))
                       if d.action == "remove"}
        except HpcgearError as exc:  # one unreachable site must not stop the others
            errors.append(f"{site.name}: {exc.message}")
            continue
        finally:
            rt.close()
        for d in decisions:
            report.append({"site": site.name, "job_id": d.job_id, "attempt": d.attempt,
                           "path": d.path, "age_seconds": int(d.age_seconds),
                           "action": d.action if d.action == "keep" or d.path in removed
                           else "failed",
                           "reason": d.reason, "dry_run": dry_run})
    if as_json:
        app.emit_json({"dry_run": dry_run, "directories": report, "errors": errors})
    else:
        verb = "would remove" if dry_run else "removed"
        for r in report:
            action = verb if r["action"] == "remove" else r["action"]
            app.echo(f"{r['site']}: {action} {safe_text(r['path'])} ({safe_text(r['reason'])})")
        n = sum(1 for r in report if r["action"] == "remove")
        app.note(f"{verb} {n} of {len(report)} job director{'y' if len(report) == 1 else 'ies'}")
    for e in errors:
        app.note(f"error: {safe_text(e)}")
    if errors:
        raise TransportError(f"scratch gc could not reach {len(errors)} site(s)",
                             "see the errors above; the other sites were cleaned")
