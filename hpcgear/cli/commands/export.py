"""`hpcgear export bids`: a BIDS tree of a project, subject or session."""

from __future__ import annotations

from pathlib import Path

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.group("export")
def export_group() -> None:
    """Export data in community layouts (BIDS)."""


@export_group.command("bids")
@click.argument("path", metavar="GROUP/PROJECT[/SUBJECT[/SESSION]]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the tree into (not needed with --dry-run).")
@click.option("--dry-run", is_flag=True, help="List what would be written; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def bids_cmd(app: AppContext, path: str, out: Path | None, dry_run: bool, as_json: bool) -> None:
    """Write a BIDS tree (names from info.BIDS or classification, JSON sidecars,
    dataset_description.json, participants.tsv) under --out."""
    from hpcgear.ingest.bids import export_bids

    with app.db.session() as s:
        res = export_bids(s, app.store, app.actor, path, out, dry_run=dry_run)
    if as_json:
        app.emit_json({**res.to_json(), "dry_run": dry_run})
        return
    for rel in res.written:
        app.echo(safe_text(rel))
    for where, reason in res.skipped:
        app.echo(f"skipped {safe_text(where)}: {safe_text(reason)}")
    verb = "would write" if dry_run else "wrote"
    where = f" to {safe_text(str(out))}" if out is not None else ""
    app.note(f"{verb} {len(res.written)} file(s){where}; skipped {len(res.skipped)}")
