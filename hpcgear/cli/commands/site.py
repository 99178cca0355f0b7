"""Site configs: validate, show, schema, preflight."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpcgear.cli.context import AppContext, safe_join, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.group("site")
def site_group() -> None:
    """Cluster site configs (partitions, QOS, accounts, limits)."""


@site_group.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_app
def site_validate(app: AppContext, files: tuple[Path, ...]) -> None:
    """Check site YAML FILES; errors name file:line and the valid keys."""
    from hpcgear.config.site import load_site

    for f in files:
        site = load_site(f)
        app.echo(
            f"{safe_text(str(f))}: site {safe_text(site.name)} is valid ({site.scheduler}, "
            f"{len(site.partitions)} partition(s))"
        )


@site_group.command("schema")
def site_schema() -> None:
    """Print the site config JSON Schema (for editors)."""
    from hpcgear.config.site import site_schema_json

    click.echo(json.dumps(site_schema_json(), indent=2))


@site_group.command("show")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def site_show(app: AppContext, name: str | None, as_json: bool) -> None:
    """List the configured sites, or show one."""
    import dataclasses

    from hpcgear.jobs.sites import SiteRegistry

    reg = SiteRegistry.from_settings(app.settings)
    sites = [reg.get(name)] if name else list(reg.sites.values())
    if as_json:
        app.emit_json([json.loads(json.dumps(dataclasses.asdict(s), default=str)) for s in sites])
        return
    for s in sites:
        app.echo(
            f"{safe_text(s.name)}: scheduler={s.scheduler} transport={s.transport.kind} "
            f"routes={safe_join(s.routing.site_tags, ',') or '-'}"
        )
        app.echo(
            f"  scratch: {safe_text(s.scratch_root)}  images: {safe_text(s.runtime.image_cache)}"
        )
        for pname, p in s.partitions.items():
            star = " (default)" if pname == s.default_partition else ""
            app.echo(
                safe_text(
                    f"  partition {pname}{star}: {p.limits_text()}"
                    + (f" qos={p.qos}" if p.qos else "")
                    + (f" account={p.account}" if p.account else "")
                )
            )


@site_group.command("preflight")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def site_preflight(app: AppContext, name: str, as_json: bool) -> None:
    """Compare a site's config with the live cluster and test-submit to each partition."""
    from hpcgear.controller.preflight import run_preflight
    from hpcgear.jobs.sites import SiteRegistry

    site = SiteRegistry.from_settings(app.settings).get(name)
    result = run_preflight(site, app.settings)
    if as_json:
        app.emit_json(result)
        return
    app.echo(
        f"site {name}: SLURM {result['cluster'].get('version')}, "
        f"MaxArraySize {result['cluster'].get('max_array_size')}"
    )
    for p in result["partitions"]:
        status = "ok" if p["ok"] else "PROBLEM"
        app.echo(f"  {p['name']}: {status}")
        for msg in p["messages"]:
            app.echo(f"    {safe_text(msg)}")
    if not result["ok"]:
        from hpcgear.errors import ConfigError

        raise ConfigError(
            f"site {name} does not match the live cluster",
            "fix the partition limits in the site YAML (see above)",
        )
