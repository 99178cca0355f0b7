"""Data commands: ls, upload, download, info, tag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"


@click.command("ls")
@click.argument("path", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def ls_cmd(app: AppContext, path: str, as_json: bool) -> None:
    """List groups (no PATH), or the children and files of PATH."""
    from hpcgear.hierarchy.service import list_path

    actor = app.actor
    with app.db.session() as s:
        entries = list_path(s, actor, path)
    if as_json:
        app.emit_json(entries)
        return
    if not entries:
        app.note("(empty)")
        return
    rows: list[list[str]] = []
    for e in entries:
        if e["kind"] == "file":
            cls = e.get("classification") or {}
            intent = ",".join(str(x) for k in ("Intent", "Measurement") for x in (cls.get(k) or []))
            rows.append(
                [
                    "file",
                    safe_text(e["name"]),
                    f"v{e['version']}",
                    _human_size(e["size"]),
                    e.get("type") or "",
                    intent,
                    ",".join(e.get("tags") or []),
                ]
            )
        else:
            rows.append(
                [
                    e["kind"],
                    safe_text(e["label"]),
                    e["id"],
                    "",
                    "",
                    "",
                    ",".join(e.get("tags") or []),
                ]
            )
    app.table(rows, ["KIND", "NAME", "ID/VER", "SIZE", "TYPE", "CLASS", "TAGS"])


@click.command("upload")
@click.argument("path", metavar="PATH")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def upload_cmd(app: AppContext, path: str, files: tuple[Path, ...], as_json: bool) -> None:
    """Upload FILES to PATH (group/project[/subject[/session[/acquisition]]]).

    Missing subject/session/acquisition levels are created. Uploading a file
    whose name exists makes a new version; identical bytes change nothing.
    """
    from hpcgear.ingest.upload import upload_deidentified

    actor = app.actor
    with app.db.session() as s:
        results = upload_deidentified(s, app.store, actor, path, list(files))
    if as_json:
        app.emit_json(
            [
                {
                    "name": r.name,
                    "file_id": r.file_id,
                    "version": r.version,
                    "hash": r.hash,
                    "size": r.size,
                    "created": r.created,
                }
                for r in results
            ]
        )
        return
    for r in results:
        what = f"v{r.version}" if r.created else f"unchanged (v{r.version})"
        app.echo(f"{safe_text(r.name)}: {what} {_human_size(r.size)} {r.hash[:19]}")


@click.command("download")
@click.argument("path", metavar="PATH/FILE")
@click.option(
    "--version", "version", type=click.IntRange(min=1), help="File version (default latest)."
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the file into.",
)
@pass_app
def download_cmd(app: AppContext, path: str, version: int | None, out: Path) -> None:
    """Download a file version (hash verified) into --out DIR."""
    from hpcgear.hierarchy.service import download_file

    actor = app.actor
    with app.db.session() as s:
        dest, fv = download_file(s, app.store, actor, path, out, version=version)
    app.echo(f"{dest} (v{fv.version}, {fv.hash[:19]})")


@click.group("info")
def info_group() -> None:
    """Free-form info metadata on containers and files."""


@info_group.command("set")
@click.argument("path")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting info as JSON.")
@pass_app
def info_set(app: AppContext, path: str, pairs: tuple[str, ...], as_json: bool) -> None:
    """Set info keys on PATH (dots nest: scanner.model=prisma; values parse as JSON)."""
    from hpcgear.hierarchy.service import set_info

    actor = app.actor
    with app.db.session() as s:
        info: dict[str, Any] = set_info(s, actor, path, list(pairs))
    if as_json:
        app.emit_json(info)
    else:
        app.echo(f"updated info on {safe_text(path)}: {', '.join(sorted(info))}")


@click.group("tag")
def tag_group() -> None:
    """Tags on containers and files."""


@tag_group.command("add")
@click.argument("path")
@click.argument("tags", nargs=-1, required=True)
@pass_app
def tag_add(app: AppContext, path: str, tags: tuple[str, ...]) -> None:
    """Add TAGS to PATH."""
    from hpcgear.hierarchy.service import change_tags

    actor = app.actor
    with app.db.session() as s:
        now = change_tags(s, actor, path, add=list(tags))
    app.echo(f"tags on {safe_text(path)}: {', '.join(now)}")


@tag_group.command("rm")
@click.argument("path")
@click.argument("tags", nargs=-1, required=True)
@pass_app
def tag_rm(app: AppContext, path: str, tags: tuple[str, ...]) -> None:
    """Remove TAGS from PATH."""
    from hpcgear.hierarchy.service import change_tags

    actor = app.actor
    with app.db.session() as s:
        now = change_tags(s, actor, path, remove=list(tags))
    app.echo(f"tags on {safe_text(path)}: {', '.join(now) or '(none)'}")
