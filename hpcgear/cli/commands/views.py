"""Data views (`hpcgear view`) and search (`hpcgear find`)."""

from __future__ import annotations

from typing import Any

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)

_COLUMNS_HELP = (
    "Comma-separated LEVEL.FIELD columns, e.g. subject.label,session.label,"
    "acquisition.label,file.name,file.classification.Measurement,file.info.RepetitionTime."
)


class ViewGroup(click.Group):
    """`view PROJECT ...` runs an ad-hoc view; `view save|list|run|rm` manage saved ones."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "show", self.commands["show"], args
        return super().resolve_command(ctx, args)


def _emit(app: AppContext, result: Any, fmt: str, out: str | None) -> None:
    text = result.render(fmt)
    if out:
        from pathlib import Path

        Path(out).write_text(text, encoding="utf-8")
        app.note(f"{len(result.rows)} row(s) -> {out}")
    else:
        app.stdout.write(text)


def _view_options(f: Any) -> Any:
    f = click.option("--columns", "columns", required=True, help=_COLUMNS_HELP)(f)
    f = click.option(
        "--level",
        type=click.Choice(["subject", "session", "acquisition", "file"]),
        help="One row per LEVEL (default: the deepest level a column names).",
    )(f)
    f = click.option(
        "--filter",
        "filters",
        multiple=True,
        metavar="EXPR",
        help="COLUMN OP VALUE (OP: = != < <= > >= =~); repeat to AND.",
    )(f)
    return f


def _spec(columns: str, level: str | None, filters: tuple[str, ...]) -> Any:
    from hpcgear.hierarchy.views import ViewSpec

    cols = tuple(c.strip() for c in columns.split(",") if c.strip())
    return ViewSpec(cols, level, tuple(filters))


@click.group("view", cls=ViewGroup)
def view_group() -> None:
    """A project's metadata as a table (CSV/TSV/JSON), and saved views.

    \b
      hpcgear view imaging/study1 --columns subject.label,session.label,file.name,\\
          file.info.RepetitionTime --filter 'file.type=nifti' --format csv > table.csv
      hpcgear view save imaging/study1 t1-table --columns ... --filter ...
      hpcgear view run imaging/study1 t1-table --format tsv
    """


@view_group.command("show", hidden=True)
@click.argument("project")
@_view_options
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "json"]), default="csv")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--out", "out", metavar="FILE", help="Write to FILE instead of stdout.")
@pass_app
def view_show(
    app: AppContext,
    project: str,
    columns: str,
    level: str | None,
    filters: tuple[str, ...],
    fmt: str,
    as_json: bool,
    out: str | None,
) -> None:
    """Run an ad-hoc view of PROJECT."""
    from hpcgear.hierarchy.views import run_view

    actor = app.actor
    with app.db.session() as s:
        result = run_view(s, actor, project, _spec(columns, level, filters))
    _emit(app, result, "json" if as_json else fmt, out)


@view_group.command("save")
@click.argument("project")
@click.argument("name")
@_view_options
@click.option("--replace", is_flag=True, help="Overwrite a view of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def view_save(
    app: AppContext,
    project: str,
    name: str,
    columns: str,
    level: str | None,
    filters: tuple[str, ...],
    replace: bool,
    as_json: bool,
) -> None:
    """Save a view of PROJECT under NAME (read-write on the project)."""
    from hpcgear.hierarchy.views import save_view

    actor = app.actor
    spec = _spec(columns, level, filters)
    with app.db.session() as s:
        save_view(s, actor, project, name, spec, replace=replace)
    if as_json:
        app.emit_json({"name": name, **spec.as_dict()})
    else:
        app.echo(f"saved view {safe_text(name)} of {safe_text(project)}")


@view_group.command("list")
@click.argument("project")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def view_list(app: AppContext, project: str, as_json: bool) -> None:
    """List the saved views of PROJECT."""
    from hpcgear.hierarchy.views import list_views

    actor = app.actor
    with app.db.session() as s:
        rows = list_views(s, actor, project)
    if as_json:
        app.emit_json(rows)
        return
    if not rows:
        app.note("(no saved views)")
    app.table(
        [
            [
                safe_text(r["name"]),
                r.get("level") or "auto",
                ",".join(r["columns"]),
                " AND ".join(r.get("filters") or []),
            ]
            for r in rows
        ],
        ["NAME", "LEVEL", "COLUMNS", "FILTERS"],
    )


@view_group.command("run")
@click.argument("project")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "json"]), default="csv")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--out", "out", metavar="FILE", help="Write to FILE instead of stdout.")
@pass_app
def view_run(
    app: AppContext, project: str, name: str, fmt: str, as_json: bool, out: str | None
) -> None:
    """Run the saved view NAME of PROJECT."""
    from hpcgear.hierarchy.views import get_view, run_view

    actor = app.actor
    with app.db.session() as s:
        spec = get_view(s, actor, project, name)
        result = run_view(s, actor, project, spec)
    _emit(app, result, "json" if as_json else fmt, out)


@view_group.command("rm")
@click.argument("project")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def view_rm(app: AppContext, project: str, name: str, as_json: bool) -> None:
    """Delete the saved view NAME of PROJECT."""
    from hpcgear.hierarchy.views import delete_view

    actor = app.actor
    with app.db.session() as s:
        delete_view(s, actor, project, name)
    if as_json:
        app.emit_json({"project": project, "deleted": name})
        return
    app.echo(f"deleted view {safe_text(name)}")


@click.command("find")
@click.argument("scope", required=False, default="")
@click.option("--label", help="Glob over labels and file names (e.g. 'sub-0*').")
@click.option("--tag", "tags", multiple=True, help="Has this tag (repeatable: all).")
@click.option("--type", "file_type", help="Files of this type (nifti, dicom, ...).")
@click.option(
    "--kind",
    type=click.Choice(["subject", "session", "acquisition", "analysis", "file"]),
    help="Only this kind.",
)
@click.option(
    "--classification",
    "classification",
    multiple=True,
    metavar="KEY=VALUE",
    help="File classification contains VALUE (e.g. Measurement=T1).",
)
@click.option("--info", "info", multiple=True, metavar="KEY=VALUE", help="Info key equals VALUE.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def find_cmd(
    app: AppContext,
    scope: str,
    label: str | None,
    tags: tuple[str, ...],
    file_type: str | None,
    kind: str | None,
    classification: tuple[str, ...],
    info: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """Search containers and files (in SCOPE: a group or project; default all you can read)."""
    from hpcgear.hierarchy.views import FindQuery, find

    actor = app.actor
    q = FindQuery(label, tags, file_type, kind, classification, info)
    with app.db.session() as s:
        hits = find(s, actor, q, scope, limit=limit)
    if as_json:
        app.emit_json(hits)
        return
    if not hits:
        app.note("(nothing found)")
    for h in hits:
        app.echo(f"{h['kind']:<11} {safe_text(h['path'])}")
