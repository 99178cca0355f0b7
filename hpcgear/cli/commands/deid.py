"""`hpcgear deid`: test a profile on a file, attach profiles to projects, read re-id maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.group("deid")
def deid_group() -> None:
    """De-identification (DICOM PS3.15 basic profile, Flywheel deid YAML profiles)."""


def _profile(spec: str) -> Any:
    from hpcgear.ingest.deid import resolve_profile, with_baseline

    return with_baseline(resolve_profile(spec))


@deid_group.command("test")
@click.argument("profile", metavar="PROFILE")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def test_cmd(app: AppContext, profile: str, file: Path, as_json: bool) -> None:
    """Show what PROFILE (a file, or ps3.15-basic) would change in the DICOM FILE.

    Nothing is written. Shows each attribute that would be removed, changed or
    added, with its value before and after, on your terminal only.
    """
    from pydicom import dcmread

    from hpcgear.errors import InvalidInputError
    from hpcgear.ingest.deid import _snapshot, apply_profile

    prof = _profile(profile)
    try:
        ds = dcmread(file)
    except Exception as exc:
        raise InvalidInputError(
            f"{file} is not a readable DICOM file ({type(exc).__name__})",
            "give one .dcm file",
        ) from None
    before = _snapshot(ds)
    log = apply_profile(ds, prof)
    after = _snapshot(ds)
    rows = [
        {"attribute": k, "action": action, "before": before.get(k), "after": after.get(k)}
        for action, names in (("remove", log.removed), ("change", log.changed), ("add", log.added))
        for k in sorted(names)
    ]
    if as_json:
        app.emit_json(
            {
                "profile": prof.name,
                "changes": rows,
                "private_tags_removed": log.private_tags_removed,
            }
        )
        return
    app.echo(
        f"profile {safe_text(prof.name)}: {len(rows)} changes, "
        f"{log.private_tags_removed} private tags removed"
    )
    for r in rows:
        b = safe_text(str(r["before"]))[:60] if r["before"] is not None else "-"
        a = safe_text(str(r["after"]))[:60] if r["after"] is not None else "-"
        app.echo(f"  {r['action']:<6} {safe_text(str(r['attribute']))}: {b} -> {a}")


@deid_group.command("attach")
@click.argument("project", metavar="GROUP/PROJECT")
@click.argument("profile", metavar="PROFILE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def attach_cmd(app: AppContext, project: str, profile: str, as_json: bool) -> None:
    """Attach PROFILE (a file, or ps3.15-basic) to a project (project admins).

    Every later ingest and upload into the project is de-identified with it,
    whatever the command's flags.
    """
    from hpcgear.ingest.deid import resolve_profile
    from hpcgear.ingest.deid_service import attach_profile

    prof = resolve_profile(profile)
    with app.db.session() as s:
        out = attach_profile(s, app.actor, project, prof)
    if as_json:
        app.emit_json(out.to_json())
        return
    app.echo(f"{safe_text(project)}: profile {safe_text(out.name)} attached ({out.sha256[:19]})")


@deid_group.command("detach")
@click.argument("project", metavar="GROUP/PROJECT")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def detach_cmd(app: AppContext, project: str, as_json: bool) -> None:
    """Remove a project's de-identification profile (project admins)."""
    from hpcgear.ingest.deid_service import detach_profile

    with app.db.session() as s:
        detach_profile(s, app.actor, project)
    if as_json:
        app.emit_json({"project": project, "profile": None})
        return
    app.echo(f"{safe_text(project)}: profile removed")


@deid_group.command("show")
@click.argument("project", metavar="GROUP/PROJECT")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def show_cmd(app: AppContext, project: str, as_json: bool) -> None:
    """Show the profile attached to a project, if any."""
    from hpcgear.ingest.deid_service import show_profile

    with app.db.session() as s:
        out = show_profile(s, app.actor, project)
    if as_json:
        app.emit_json(out.to_json() if out is not None else None)
        return
    if out is None:
        app.echo(f"{safe_text(project)}: no de-identification profile")
        return
    app.echo(
        f"{safe_text(project)}: {safe_text(out.name)} {out.sha256[:19]} set by "
        f"{safe_text(out.set_by)}; re-identification map: {'kept' if out.reid_map else 'not kept'}"
    )


@deid_group.command("map")
@click.argument("project", metavar="GROUP/PROJECT")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def map_cmd(app: AppContext, project: str, as_json: bool) -> None:
    """The re-identification map (original -> new values) of a project (admins only).

    Kept only for data de-identified by a profile with `deid-log`.
    """
    from hpcgear.ingest.deid_service import read_map

    with app.db.session() as s:
        rows = read_map(s, app.actor, project)
    if as_json:
        app.emit_json(rows)
        return
    for r in rows:
        for entry in r["entries"]:
            for name, (old, new) in sorted(entry.items()):
                app.echo(
                    f"{r['file_id']} v{r['file_version']} {safe_text(name)}: "
                    f"{safe_text(str(old))} -> {safe_text(str(new))}"
                )
