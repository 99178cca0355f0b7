"""Gear commands: validate, install, list, show, disable, enable, build, convert-dockerfile."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpcgear.cli.context import AppContext, safe_text, site_registry

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
        manifest = dict(g.manifest or {})
    what = "installed" if res.created else "already installed (identical manifest)"
    app.echo(f"{name}@{version}: {what}; image {digest[:19] if digest else 'not built yet'}")
    warn_api_key_sites(app, manifest)


def warn_api_key_sites(app: AppContext, manifest: dict[str, object]) -> None:
    """Gears with an api-key input run only on sites with api_url: say so at install."""
    inputs = manifest.get("inputs")
    if not isinstance(inputs, dict):
        return
    names = [n for n, d in inputs.items() if isinstance(d, dict) and d.get("base") == "api-key"]
    if not names:
        return
    try:
        sites = site_registry(app).sites
    except Exception:
        return
    without = sorted(n for n, site in sites.items() if not site.api_url)
    if without:
        app.note(
            f"warning: {manifest.get('name')} declares api-key input(s) {', '.join(names)}; "
            f"its jobs cannot run on site(s) without api_url: {', '.join(without)} "
            "(set api_url in the site YAML, or in the config file for the local site)"
        )


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
    if summary["bids_view"]:
        view = summary["bids_view"]
        kinds = ", ".join(view["data_types"]) or "every datatype"
        app.echo(f"{'bids view:':17} /flywheel/v0/{view['dir']} ({kinds})")
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


@gear_group.command("build")
@click.argument(
    "gear_dirs",
    nargs=-1,
    required=True,
    metavar="DIR...",
    type=click.Path(path_type=Path, file_okay=False),
)
@click.option("--no-install", is_flag=True, help="Only build (or find) the SIF; do not install.")
@click.option(
    "--apptainer",
    "apptainer",
    metavar="PATH",
    help="apptainer executable (default: settings, $HPCGEAR_APPTAINER, PATH).",
)
@click.option(
    "--cache",
    "cache",
    metavar="DIR",
    type=click.Path(path_type=Path, file_okay=False),
    help="Build cache (default: $HPCGEAR_BUILD_CACHE, the dev cluster's cache, "
    "~/.cache/hpcgear/build).",
)
@click.option(
    "--dry-run", is_flag=True, help="Show what would be built and reused; change nothing."
)
@click.option("--force", is_flag=True, help="Rebuild the SIF even when it is cached.")
@click.option(
    "--write-def",
    is_flag=True,
    help="Only regenerate each gear's Apptainer.def from its build.yaml.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def gear_build(
    app: AppContext,
    gear_dirs: tuple[Path, ...],
    no_install: bool,
    apptainer: str | None,
    cache: Path | None,
    dry_run: bool,
    force: bool,
    write_def: bool,
    as_json: bool,
) -> None:
    """Build bundled gears' images from DIR/build.yaml (cached), then install them.

    Root filesystems and SIFs are cached by content hash, so an unchanged gear
    is not rebuilt. Installing needs a site admin; --no-install only builds.
    """
    import shutil

    from hpcgear.gears.build import GearBuilder, default_cache_dir, load_recipe

    recipes = [load_recipe(d) for d in gear_dirs]
    if write_def:
        from hpcgear.gears.build import write_registry_definition

        for recipe in recipes:
            if recipe.shares_image:
                app.echo(
                    f"{recipe.name}: uses the image of {recipe.recipe_dir.name}; "
                    "no definition of its own"
                )
                continue
            path, changed = write_registry_definition(recipe)
            app.echo(f"{path}: {'written' if changed else 'up to date'}")
        return

    executable = (
        apptainer
        or app.settings.apptainer
        or shutil.which("apptainer")
        or shutil.which("singularity")
        or "apptainer"
    )
    builder = GearBuilder(
        cache or default_cache_dir(),
        apptainer=executable,
        progress=lambda line: app.note(f"==> {safe_text(line)}"),
    )
    if dry_run:
        plans = [builder.plan(r) for r in recipes]
        if as_json:
            app.emit_json(
                [
                    {
                        "gear": f"{p.recipe.manifest.name}@{p.recipe.manifest.version}",
                        "recipe_sha256": p.recipe_hash,
                        "rootfs": str(p.rootfs),
                        "rootfs_cached": p.rootfs_cached,
                        "sif": str(p.sif),
                        "sif_cached": p.sif_cached,
                        "steps": list(p.steps),
                        "install": not no_install,
                    }
                    for p in plans
                ]
            )
            return
        for p in plans:
            app.echo(
                f"{p.recipe.manifest.name}@{p.recipe.manifest.version}: recipe {p.recipe_hash[:19]}"
            )
            for step in p.steps:
                app.echo(f"  - {step}")
            if not no_install:
                app.echo("  - install the gear with that image")
        return

    rows = []
    for recipe in recipes:
        result = builder.build(recipe, force=force)
        row: dict[str, object] = {
            "gear": f"{recipe.manifest.name}@{recipe.manifest.version}",
            "sif": str(result.sif),
            "size": result.size,
            "recipe_sha256": result.recipe_hash,
            "cached": result.cached,
            "seconds": round(result.seconds, 1),
        }
        if not no_install:
            from hpcgear.gears.service import install_gear

            actor = app.actor
            with app.db.session() as s:
                res = install_gear(s, app.store, actor, recipe.gear_dir, image=str(result.sif))
                row["image_digest"] = res.gear.image_digest
                row["installed"] = res.created
                built_manifest = dict(res.gear.manifest or {})
            warn_api_key_sites(app, built_manifest)
        rows.append(row)
        if not as_json:
            how = "cached" if result.cached else f"built in {result.seconds:.0f}s"
            line = f"{row['gear']}: {result.sif} ({result.size / 1e6:.0f} MB, {how})"
            if "image_digest" in row:
                digest = str(row["image_digest"] or "")
                line += (
                    f"; installed, image {digest[:19]}"
                    if row["installed"]
                    else f"; already installed, image {digest[:19]}"
                )
            app.echo(line)
    if as_json:
        app.emit_json(rows)


@gear_group.command("convert-dockerfile")
@click.argument("dockerfile", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output",
    metavar="FILE",
    type=click.Path(path_type=Path),
    help="Write the Apptainer definition here (default: stdout).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the definition and the issues as JSON."
)
@pass_app
def gear_convert_dockerfile(
    app: AppContext, dockerfile: Path, output: Path | None, as_json: bool
) -> None:
    """Convert a gear's Dockerfile into an Apptainer definition (with spython).

    What has no Apptainer equivalent (USER, HEALTHCHECK, EXPOSE, ...) is listed
    on stderr with its line, so you can check the result before building.
    """
    from hpcgear.gears.dockerfile import convert_dockerfile

    conversion = convert_dockerfile(dockerfile)
    if output is not None:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(conversion.definition, encoding="utf-8")
        tmp.replace(output)
    if as_json:
        app.emit_json(
            {
                "definition": conversion.definition,
                "stages": conversion.stages,
                "issues": [
                    {
                        "line": i.line,
                        "instruction": i.instruction,
                        "severity": i.severity,
                        "message": i.message,
                    }
                    for i in conversion.issues
                ],
            }
        )
    elif output is None:
        app.stdout.write(conversion.definition)
    for issue in conversion.issues:
        app.note(
            f"{dockerfile}:{issue.line}: {issue.severity}: {issue.instruction}: "
            f"{safe_text(issue.message)}"
        )
    if output is not None and not as_json:
        dropped = sum(1 for i in conversion.issues if i.severity == "dropped")
        app.note(
            f"wrote {output} ({len(conversion.issues)} notes, {dropped} instructions not converted)"
        )
