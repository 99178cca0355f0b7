"""Gear commands: validate, install, list, show, disable, enable."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.group("gear")
def gear_group() -> None:
    """Gears: Flywheel manifests plus container images."""


@gear_group.command("validate")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the parsed summary as JSON.")
@pass_app
def gear_validate(app: AppContext, manifest: Path, as_json: bool) -> None:
    """Check MANIFEST (a manifest.json or a gear directory) without installing it."""
    from hpcgear.gears.manifest import load_manifest

    m = load_manifest(manifest)
    if as_json:
        app.emit_json(
            {
                "name": m.name,
                "version": m.version,
                "category": m.category,
                "image": m.image,
                "sha256": m.sha256,
                "inputs": list(m.input_names),
                "config": list(m.config_names),
                "warnings": list(m.warnings),
            }
        )
        return
    app.echo(
        f"{m.name}@{m.version}: valid ({m.category}, {len(m.inputs)} inputs, "
        f"{len(m.config)} config options)"
    )
    for w in m.warnings:
        app.note(f"warning: {safe_text(w)}")


@gear_group.command("install")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--image", metavar="SIF|REF", help="A built SIF file, or an image reference.")
@pass_app
def gear_install(app: AppContext, source: Path, image: str | None) -> None:
    """Install a gear from DIR (with manifest.json) or a MANIFEST file (site admins)."""
    from hpcgear.gears.service import install_gear

    actor = app.actor
    with app.db.session() as s:
        res = install_gear(s, app.store, actor, source, image=image)
        g = res.gear
        name, version, digest = g.name, g.version, g.image_digest
    what = "installed" if res.created else "already installed (identical manifest)"
    app.echo(f"{name}@{version}: {what}; image {digest[:19] if digest else 'not built yet'}")


@gear_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--enabled", is_flag=True, help="Hide disabled versions.")
@pass_app
def gear_list(app: AppContext, as_json: bool, enabled: bool) -> None:
    """List installed gears and versions."""
    from hpcgear.gears.service import gear_summary, list_gears

    actor = app.actor
    with app.db.session() as s:
        rows = [gear_summary(g) for g in list_gears(s, actor, include_disabled=not enabled)]
    if as_json:
        app.emit_json(rows)
        return
    if not rows:
        app.note("no gears installed (hpcgear gear install DIR)")
        return
    app.table(
        [
            [
                r["name"],
                r["version"],
                r["category"],
                (r["image_digest"] or "-")[:19],
                "disabled" if r["disabled"] else "",
            ]
            for r in rows
        ],
        ["NAME", "VERSION", "CATEGORY", "IMAGE", "STATE"],
    )


@gear_group.command("show")
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--manifest", "show_manifest", is_flag=True, help="Print the verbatim manifest.")
@pass_app
def gear_show(app: AppContext, ref: str, as_json: bool, show_manifest: bool) -> None:
    """Show one gear version (latest when no version is given)."""
    from hpcgear.gears.service import gear_summary, get_gear

    with app.db.session() as s:
        g = get_gear(s, ref, include_disabled=True)
        summary = gear_summary(g)
        manifest = g.manifest
    if show_manifest:
        app.echo(json.dumps(manifest, indent=2))
        return
    if as_json:
        app.emit_json({**summary, "manifest": manifest})
        return
    for key in (
        "name",
        "version",
        "label",
        "category",
        "image_ref",
        "image_digest",
        "manifest_sha256",
        "installed_by",
        "installed",
    ):
        app.echo(f"{key + ':':17} {safe_text(str(summary[key]))}")
    app.echo(f"{'inputs:':17} {', '.join(summary['inputs']) or '-'}")
    app.echo(f"{'config:':17} {', '.join(summary['config']) or '-'}")
    if summary["disabled"]:
        app.echo("state:            disabled")


@gear_group.command("disable")
@click.argument("ref", metavar="NAME@VERSION")
@pass_app
def gear_disable(app: AppContext, ref: str) -> None:
    """Disable a gear version: no new jobs; running jobs are unaffected."""
    from hpcgear.gears.service import set_disabled

    actor = app.actor
    with app.db.session() as s:
        g = set_disabled(s, actor, ref, True)
        label = f"{g.name}@{g.version}"
    app.echo(f"disabled {label}")


@gear_group.command("enable")
@click.argument("ref", metavar="NAME@VERSION")
@pass_app
def gear_enable(app: AppContext, ref: str) -> None:
    """Enable a disabled gear version again."""
    from hpcgear.gears.service import set_disabled

    actor = app.actor
    with app.db.session() as s:
        g = set_disabled(s, actor, ref, False)
        label = f"{g.name}@{g.version}"
    app.echo(f"enabled {label}")
