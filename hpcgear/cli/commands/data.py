"""Data commands: ls, upload, download (one file or a tree), info, tag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpcgear.cli.context import AppContext, safe_join, safe_text

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
@click.option(
    "-r", "--recursive", is_flag=True, help="Everything below PATH, one path per line."
)
@pass_app
def ls_cmd(app: AppContext, path: str, as_json: bool, recursive: bool) -> None:
    """List groups (no PATH), or the children and files of PATH.

    Analyses are listed with their parent and entered by label or @ID
    (group/project/sub-01/ses-01/"mriqc 2026-12-03 19:58:12").
    """
    from hpcgear.hierarchy.service import list_path

    actor = app.actor
    if recursive and path:
        from hpcgear.hierarchy.export import list_tree

        with app.db.session() as s:
            tree = list_tree(s, actor, path)
        if as_json:
            app.emit_json(tree)
            return
        for e in tree:
            size = f"  {_human_size(e['size'])} v{e['version']}" if e["kind"] == "file" else ""
            app.echo(f"{e['kind']:<11} {safe_text(e['path'])}{size}")
        return
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
    # Core first (hpcgear.hierarchy.uploads: no ORM on a login node); a project with a
    # de-identification profile goes through the ORM path, which de-identifies.
    from hpcgear.db.session import retry_conflicts
    from hpcgear.hierarchy.uploads import UploadResult, store_upload

    actor = app.actor

    def store_core() -> list[UploadResult] | None:
        with app.db.connect() as conn:
            return store_upload(conn, app.store, actor, path, list(files))

    results = retry_conflicts(store_core)
    if results is None:
        from hpcgear.ingest.upload import upload_deidentified

        results = app.db.write(
            lambda s: upload_deidentified(s, app.store, actor, path, list(files))
        )
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
@click.argument("path", metavar="PATH")
@click.option(
    "--version", "version", type=click.IntRange(min=1), help="File version (default latest)."
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write into (a container's files land at their hierarchy path).",
)
@click.option(
    "--tar",
    "tar",
    metavar="FILE",
    help="Write a tar stream instead (FILE.tar.gz / .tgz: gzipped; '-': stdout).",
)
@click.option("-r", "--recursive", is_flag=True, help="Everything below a container PATH.")
@click.option("--type", "types", multiple=True, help="Only files of this type (repeatable).")
@click.option(
    "--include-analyses", is_flag=True, help="With --recursive: also the analyses' files."
)
@click.option("--dry-run", is_flag=True, help="List what would be written; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@pass_app
def download_cmd(
    app: AppContext,
    path: str,
    version: int | None,
    out: Path | None,
    tar: str | None,
    recursive: bool,
    types: tuple[str, ...],
    include_analyses: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Download a file (into --out DIR), or a container's files (--recursive: its subtree).

    \b
    Container downloads keep the hierarchy's paths under DIR
    (DIR/group/project/subject/session/acquisition/FILE; analyses as their
    label or @ID), verify every file's sha256, and resume: files already
    present with the right hash are skipped. --tar streams the same tree.
    """
    import sys

    from hpcgear.errors import InvalidInputError, NotFoundError
    from hpcgear.hierarchy.export import download_tree, plan_download, write_tar
    from hpcgear.hierarchy.service import download_file, resolve_target

    if (out is None) == (tar is None) and not dry_run:
        raise InvalidInputError("give exactly one of --out DIR and --tar FILE", "e.g. --out ./data")
    actor = app.actor
    with app.db.session() as s:
        try:
            target = resolve_target(s, path)
        except NotFoundError:
            if out is None or recursive:
                raise
            download_file(s, app.store, actor, path, out, version=version)  # the precise error
            raise
        single = target.file is not None and tar is None
        if single and out is not None and not dry_run:
            dest, fv = download_file(s, app.store, actor, path, out, version=version)
            if as_json:
                app.emit_json({"path": str(dest), "version": fv.version, "hash": fv.hash})
            else:
                app.echo(f"{safe_text(str(dest))} (v{fv.version}, {fv.hash[:19]})")
            return
        if version is not None:
            raise InvalidInputError("--version applies to one file", "drop --version")
        items = plan_download(
            s, actor, path, recursive=recursive, types=types, include_analyses=include_analyses
        )
    total = sum(i.size for i in items)
    if dry_run:
        if as_json:
            app.emit_json({"files": [i.as_dict() for i in items], "bytes": total})
        else:
            for i in items:
                app.echo(f"{safe_text(i.path)}  {_human_size(i.size)}")
            app.note(f"{len(items)} file(s), {_human_size(total)} (dry run)")
        return
    progress = _progress_printer(app)
    if tar is not None:
        gz = tar.endswith((".tar.gz", ".tgz"))
        if tar == "-":
            report = write_tar(app.store, items, sys.stdout.buffer, progress=progress)
        else:
            dest_tar = Path(tar)
            tmp = dest_tar.with_name(f".{dest_tar.name}.part")
            with tmp.open("wb") as fh:
                report = write_tar(app.store, items, fh, gzip=gz, progress=progress)
            tmp.replace(dest_tar)
    else:
        assert out is not None
        report = download_tree(app.store, items, out, progress=progress)
    if as_json and tar != "-":
        app.emit_json(report.as_dict())
    elif tar != "-":
        app.echo(
            f"{len(report.written)} written, {len(report.skipped)} already present "
            f"({_human_size(report.bytes_written)}) -> {safe_text(str(tar or out))}"
        )


def _progress_printer(app: AppContext) -> Any:
    """Progress on stderr, at most every 2 seconds, and at the end of long work."""
    import time

    state = {"last": time.monotonic(), "start": time.monotonic()}

    def show(done: int, total: int, nbytes: int, total_bytes: int, path: str) -> None:
        now = time.monotonic()
        if now - state["last"] < 2 and done != total:
            return
        if done == total and now - state["start"] < 2:
            return
        state["last"] = now
        app.note(
            f"[{done}/{total}] {_human_size(nbytes)}/{_human_size(total_bytes)} {safe_text(path)}"
        )

    return show


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
    info: dict[str, Any] = app.db.write(lambda s: set_info(s, actor, path, list(pairs)))
    if as_json:
        app.emit_json(info)
    else:
        app.echo(f"updated info on {safe_text(path)}: {safe_join(sorted(info))}")


@info_group.command("unset")
@click.argument("path")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting info as JSON.")
@pass_app
def info_unset(app: AppContext, path: str, keys: tuple[str, ...], as_json: bool) -> None:
    """Remove info KEYS from PATH (dots nest); every key must be set."""
    from hpcgear.hierarchy.metadata import unset_info

    actor = app.actor
    info = app.db.write(lambda s: unset_info(s, actor, path, list(keys)))
    if as_json:
        app.emit_json(info)
    else:
        app.echo(f"removed {', '.join(keys)} from {safe_text(path)}")


@click.group("tag")
def tag_group() -> None:
    """Tags on containers and files."""


@tag_group.command("add")
@click.argument("path")
@click.argument("tags", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def tag_add(app: AppContext, path: str, tags: tuple[str, ...], as_json: bool) -> None:
    """Add TAGS to PATH."""
    from hpcgear.hierarchy.service import change_tags

    actor = app.actor
    now = app.db.write(lambda s: change_tags(s, actor, path, add=list(tags)))
    if as_json:
        app.emit_json({"path": path, "tags": list(now)})
        return
    app.echo(f"tags on {safe_text(path)}: {safe_join(now)}")


@tag_group.command("rm")
@click.argument("path")
@click.argument("tags", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def tag_rm(app: AppContext, path: str, tags: tuple[str, ...], as_json: bool) -> None:
    """Remove TAGS from PATH."""
    from hpcgear.hierarchy.service import change_tags

    actor = app.actor
    now = app.db.write(lambda s: change_tags(s, actor, path, remove=list(tags)))
    if as_json:
        app.emit_json({"path": path, "tags": list(now)})
        return
    app.echo(f"tags on {safe_text(path)}: {safe_join(now) or '(none)'}")
