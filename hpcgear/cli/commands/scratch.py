"""Scratch commands: garbage-collect orphan job directories."""

from __future__ import annotations

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.group("scratch")
def scratch_group() -> None:
    """Job directories on the sites' scratch file systems."""


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
    """Remove orphan job and array directories under <scratch>/hpcgear/ (site admins).

    A directory is removed when its job is finished or unknown and nothing in
    it changed for longer than the age limit. A live job's directory is never
    touched; an array directory goes when no live job belongs to the array.
    Temp files of interrupted uploads in storage older than an hour go too.
    """
    from hpcgear.cli.context import os_login
    from hpcgear.controller.housekeeping import collect_scratch
    from hpcgear.errors import TransportError
    from hpcgear.units import parse_time_minutes

    limit = parse_time_minutes(older_than, what="--older-than") if older_than else None
    result = collect_scratch(app.db, app.settings, app.actor, site_name=site_name,
                             older_than_minutes=limit, dry_run=dry_run,
                             fallback_user=os_login(), store=app.store)
    report = [d.as_dict(dry_run) for d in result.directories]
    errors = result.errors
    if as_json:
        app.emit_json({"dry_run": dry_run, "directories": report, "errors": errors,
                       "storage_tmp_removed": result.storage_tmp_removed})
    else:
        verb = "would remove" if dry_run else "removed"
        for r in report:
            action = verb if r["action"] == "remove" else r["action"]
            app.echo(f"{r['site']}: {action} {safe_text(r['path'])} ({safe_text(r['reason'])})")
        n = sum(1 for r in report if r["action"] == "remove")
        app.note(f"{verb} {n} of {len(report)} job director{'y' if len(report) == 1 else 'ies'}")
        if result.storage_tmp_removed:
            app.note(f"removed {result.storage_tmp_removed} stale temp file(s) in storage")
    for e in errors:
        app.note(f"error: {safe_text(e)}")
    if errors:
        raise TransportError(f"scratch gc could not reach {len(errors)} site(s)",
                             "see the errors above; the other sites were cleaned")
