"""Reorganising data: mv, rename, rm, trash, versions, classification, notes, history."""

from __future__ import annotations

import datetime as dt

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.command("mv")
@click.argument("source")
@click.argument("destination")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def mv_cmd(app: AppContext, source: str, destination: str, as_json: bool) -> None:
    """Move SOURCE (a file, subject, session, acquisition or analysis) into DESTINATION.

    \\b
    A file goes into any container; a subject into a project, a session into a
    subject, an acquisition into a session, an analysis into a project,
    subject, session or acquisition. Ids, versions, metadata and provenance
    stay; the move is recorded (`hpcgear history PATH`). Needs read-write on
    both ends. Example (a mis-routed subject):
      hpcgear mv imaging/Unsorted/P0042 imaging/study1
    """
    from hpcgear.hierarchy.manage import move

    actor = app.actor
    with app.db.session() as s:
        res = move(s, actor, source, destination)
    if as_json:
        app.emit_json(res.as_dict())
    else:
        app.echo(f"moved {res.kind} {safe_text(res.from_path)} -> {safe_text(res.to_path)}")


@click.command("rename")
@click.argument("path")
@click.argument("new_name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rename_cmd(app: AppContext, path: str, new_name: str, as_json: bool) -> None:
    """Rename a file, or relabel a subject, session, acquisition or analysis."""
    from hpcgear.hierarchy.manage import rename

    actor = app.actor
    with app.db.session() as s:
        res = rename(s, actor, path, new_name)
    if as_json:
        app.emit_json(res.as_dict())
    else:
        app.echo(f"renamed {res.kind} {safe_text(res.from_path)} -> {safe_text(res.to_path)}")


@click.command("rm")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--dry-run", is_flag=True, help="Show what would go to the trash.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rm_cmd(app: AppContext, paths: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Delete files or containers into the trash (site admins can restore them).

    \\b
    Files need read-write; subjects, sessions, acquisitions and analyses need
    the project's admin role. All PATHs go, or none.
    """
    from hpcgear.hierarchy.manage import remove

    actor = app.actor
    with app.db.session() as s:
        items = [remove(s, actor, p, dry_run=dry_run) for p in paths]
    if as_json:
        app.emit_json([i.as_dict() for i in items])
        return
    for i in items:
        verb = "would delete" if dry_run else "deleted"
        app.echo(
            f"{verb} {i.kind} {safe_text(i.path)} ({i.files} file(s))"
            + ("" if dry_run else f"; trash id {i.id}")
        )


@click.group("trash")
def trash_group() -> None:
    """Deleted data: list, restore, purge (site admins)."""


@trash_group.command("list")
@click.option("--group", "group", help="Only this group's entries.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def trash_list(app: AppContext, group: str | None, as_json: bool) -> None:
    """List trash entries, newest first."""
    from hpcgear.cli.commands.data import _human_size
    from hpcgear.hierarchy.manage import list_trash

    actor = app.actor
    with app.db.session() as s:
        items = list_trash(s, actor, group)
    if as_json:
        app.emit_json([i.as_dict() for i in items])
        return
    if not items:
        app.note("(trash is empty)")
        return
    app.table(
        [
            [
                i.id,
                i.kind,
                safe_text(i.path),
                str(i.files),
                _human_size(i.size),
                i.deleted_by,
                i.deleted.strftime("%Y-%m-%d %H:%M"),
            ]
            for i in items
        ],
        ["TRASH_ID", "KIND", "PATH", "FILES", "SIZE", "BY", "DELETED"],
    )


@trash_group.command("restore")
@click.argument("trash_ids", nargs=-1, required=True, metavar="TRASH_ID...")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def trash_restore(app: AppContext, trash_ids: tuple[str, ...], as_json: bool) -> None:
    """Put deleted data back where it was (same ids)."""
    from hpcgear.hierarchy.manage import restore

    actor = app.actor
    with app.db.session() as s:
        items = [restore(s, actor, t) for t in trash_ids]
    if as_json:
        app.emit_json([i.as_dict() for i in items])
        return
    for i in items:
        app.echo(f"restored {i.kind} {safe_text(i.path)}")


@trash_group.command("purge")
@click.argument("trash_ids", nargs=-1, metavar="[TRASH_ID...]")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="Purge every entry deleted at least DAYS ago (0: all).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be purged.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def trash_purge(
    app: AppContext,
    trash_ids: tuple[str, ...],
    older_than: float | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete trash entries for good.

    Bytes still referenced by a provenance record, a job's inputs, another file
    version or another trash entry stay in storage (provenance keeps working).
    """
    from hpcgear.hierarchy.manage import delete_objects, purge

    actor = app.actor
    age = dt.timedelta(days=older_than) if older_than is not None else None
    with app.db.session() as s:
        res = purge(s, actor, list(trash_ids), older_than=age, dry_run=dry_run)
    removed = 0 if dry_run else delete_objects(app.store, res.unreferenced)
    if as_json:
        data = res.as_dict()
        data["objects_removed"] = len(res.unreferenced) if dry_run else removed
        data["dry_run"] = dry_run
        app.emit_json(data)
        return
    verb = "would purge" if dry_run else "purged"
    for i in res.purged:
        app.echo(f"{verb} {i.kind} {safe_text(i.path)} ({i.id})")
    app.echo(
        f"objects removed: {len(res.unreferenced) if dry_run else removed}; kept "
        f"(still referenced): {len(res.kept)}"
    )


@click.command("history")
@click.argument("path", required=False)
@click.option(
    "--id", "item_id", metavar="ID", help="One item by id, even if deleted (site admins)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def history_cmd(app: AppContext, path: str | None, item_id: str | None, as_json: bool) -> None:
    """Moves, renames, deletes, restores and purges (of PATH, or all: site admins)."""
    from hpcgear.hierarchy.manage import history

    actor = app.actor
    with app.db.session() as s:
        rows = history(s, actor, path, item_id=item_id)
    if as_json:
        app.emit_json(rows)
        return
    app.table(
        [
            [
                str(r["seq"]),
                (r["ts"] or "")[:19],
                r["actor"],
                r["action"],
                r["kind"],
                safe_text(r["from"] or "-"),
                safe_text(r["to"] or "-"),
            ]
            for r in rows
        ],
        ["SEQ", "WHEN", "WHO", "ACTION", "KIND", "FROM", "TO"],
    )


@click.command("versions")
@click.argument("path", metavar="PATH/FILE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def versions_cmd(app: AppContext, path: str, as_json: bool) -> None:
    """List a file's versions (download one with `download --version N`)."""
    from hpcgear.cli.commands.data import _human_size
    from hpcgear.hierarchy.manage import list_versions

    actor = app.actor
    with app.db.session() as s:
        rows = list_versions(s, actor, path)
    if as_json:
        app.emit_json(rows)
        return
    app.table(
        [
            [
                f"v{r['version']}" + ("*" if r["current"] else ""),
                _human_size(r["size"]),
                r["hash"][:19],
                f"{r['origin']['type']}:{r['origin']['id']}",
                (r["created"] or "")[:19],
            ]
            for r in rows
        ],
        ["VERSION", "SIZE", "HASH", "ORIGIN", "CREATED"],
    )


@click.group("classification")
def classification_group() -> None:
    """Edit a file's classification by hand (Intent, Measurement, Features, ...)."""


def _classification_cmd(name: str, fn_name: str, doc: str, metavar: str) -> click.Command:
    @click.argument("path", metavar="PATH/FILE")
    @click.argument("pairs", nargs=-1, required=True, metavar=metavar)
    @click.option("--json", "as_json", is_flag=True, help="Print the classification as JSON.")
    @pass_app
    def cmd(app: AppContext, path: str, pairs: tuple[str, ...], as_json: bool) -> None:
        from hpcgear.hierarchy import metadata

        actor = app.actor
        with app.db.session() as s:
            cls = getattr(metadata, fn_name)(s, actor, path, list(pairs))
        if as_json:
            app.emit_json(cls)
        else:
            shown = "; ".join(f"{k}={','.join(v)}" for k, v in cls.items())
            app.echo(f"classification of {safe_text(path)}: {shown or '(empty)'}")

    cmd.__doc__ = doc
    return classification_group.command(name)(cmd)


classification_set = _classification_cmd(
    "set",
    "set_classification",
    "Replace the classification (KEY=V[,V...], e.g. Measurement=T1 Intent=Structural).",
    "KEY=VALUE[,VALUE]...",
)
classification_add = _classification_cmd(
    "add", "add_classification", "Add values to classification keys.", "KEY=VALUE[,VALUE]..."
)
classification_rm = _classification_cmd(
    "rm",
    "remove_classification",
    "Remove values (KEY=VALUE) or whole keys (KEY); each must be present.",
    "KEY[=VALUE]...",
)


@click.group("note")
def note_group() -> None:
    """Notes on containers and analyses."""


@note_group.command("add")
@click.argument("path")
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print all notes as JSON.")
@pass_app
def note_add(app: AppContext, path: str, text: str, as_json: bool) -> None:
    """Add a note TEXT to a container or analysis."""
    from hpcgear.hierarchy.metadata import add_note

    actor = app.actor
    with app.db.session() as s:
        notes = add_note(s, actor, path, text)
    if as_json:
        app.emit_json(notes)
    else:
        app.echo(f"{len(notes)} note(s) on {safe_text(path)}")


@note_group.command("list")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def note_list(app: AppContext, path: str, as_json: bool) -> None:
    """List the notes of a container or analysis."""
    from hpcgear.hierarchy.metadata import list_notes

    actor = app.actor
    with app.db.session() as s:
        notes = list_notes(s, actor, path)
    if as_json:
        app.emit_json(notes)
        return
    for n in notes:
        app.echo(f"{n['created'][:19]} {n['user']}: {safe_text(n['text'])}")
