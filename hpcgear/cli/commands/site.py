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
    """Check site YAML FILES: every problem at once, each naming file:line and the fix.

    Also checks the site defaults against every partition's limits, and warns
    when two of the FILES route the same tag.
    """
    from hpcgear.config.schema import SchemaErrors
    from hpcgear.config.site import SiteConfig, load_site
    from hpcgear.errors import HpcgearError, SchemaError
    from hpcgear.jobs.sites import SiteRegistry

    bad = 0
    good: list[SiteConfig] = []
    for f in files:
        try:
            site = load_site(f, all_errors=True)
        except SchemaErrors as exc:
            bad += 1
            for err in exc.errors:
                hint = f"  (hint: {err.hint})" if err.hint else ""
                app.note(f"{safe_text(err.message)}{hint}")
            continue
        except HpcgearError as exc:
            bad += 1
            app.note(safe_text(exc.message))
            continue
        good.append(site)
        for w in site.warnings():
            app.note(f"warning: {w}")
        app.echo(
            f"{safe_text(str(f))}: site {safe_text(site.name)} is valid ({site.scheduler}, "
            f"{len(site.partitions)} partition(s))"
        )
    if len(good) > 1:
        try:
            for line in SiteRegistry(good).shared_tags_warnings():
                app.note(f"warning: {line}")
        except HpcgearError as exc:
            app.note(safe_text(exc.message))
            bad += 1
    if bad:
        raise SchemaError(
            f"{bad} of {len(files)} site config(s) have problems (listed above)",
            "fix each listed key; `hpcgear site schema` shows every valid key",
        )


@site_group.command("add")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--default", "make_default", is_flag=True,
              help="Also make it default_site (untagged jobs go there).")
@pass_app
def site_add(app: AppContext, file: Path, make_default: bool) -> None:
    """Attach a site: validate FILE and add it to `sites:` of the hpcgear config."""
    from dataclasses import replace

    from hpcgear.config.settings import load_settings, write_settings
    from hpcgear.config.site import load_site
    from hpcgear.errors import AlreadyExistsError
    from hpcgear.jobs.sites import SiteRegistry

    path = file.expanduser().resolve()
    site = load_site(path, all_errors=True)
    settings = load_settings(app.config_path)
    known = [Path(p).resolve() for p in settings.sites]
    reg = SiteRegistry.from_settings(settings)
    if path not in known and site.name in reg.sites:
        raise AlreadyExistsError(f"a site named {site.name!r} is already configured",
                                 "rename the site or remove the other one from `sites:`")
    sites = tuple(settings.sites) if path in known else (*settings.sites, path)
    new = replace(settings, sites=sites)
    if make_default:
        new = replace(new, default_site=site.name)
    write_settings(new)
    for w in site.warnings():
        app.note(f"warning: {w}")
    app.echo(f"site {site.name} attached ({path})" + (" as default" if make_default else ""))
    for line in SiteRegistry.from_settings(new).shared_tags_warnings():
        app.note(f"warning: {line}")


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
    from hpcgear.config.site import site_as_dict
    from hpcgear.jobs.sites import SiteRegistry

    reg = SiteRegistry.from_settings(app.settings)
    sites = [reg.get(name)] if name else list(reg.sites.values())
    if as_json:
        app.emit_json([site_as_dict(s) for s in sites])
        return
    for line in reg.shared_tags_warnings():
        app.note(f"warning: {line}")
    for s in sites:
        app.echo(
            f"{safe_text(s.name)}: scheduler={s.scheduler} transport={s.transport.kind} "
            f"routes={safe_join(s.routing.site_tags, ',') or '-'}"
        )
        app.echo(
            f"  scratch: {safe_text(s.scratch_root)}  images: {safe_text(s.runtime.image_cache)}"
        )
        app.echo(f"  scratch: {safe_text(s.scratch_root)} ({{user}} = {s.scratch_user}: "
                 f"{s.scratch_user_for('OWNER')})  images: {s.runtime.image_cache}")
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
    """Check a site against the live cluster: partitions, QOS, accounts, GPUs, runtime.

    \b
    Per partition: exists and is up; max_time/max_mem/max_cpus/max_gpus within
    what SLURM and the real nodes allow; QOS and account known to sacctmgr and
    allowed; sbatch --test-only accepts a job. For the site: the Apptainer
    executable runs, scratch and the image cache are writable. Exit 5 on problems.
    """
    from hpcgear.controller.preflight import run_site_preflight
    from hpcgear.jobs.sites import SiteRegistry

    site = SiteRegistry.from_settings(app.settings).get(name)
    report = run_site_preflight(site, app.settings)
    if as_json:
        app.emit_json(report.as_dict())
    else:
        c = report.cluster
        if c:
            app.echo(f"site {name}: SLURM {c.get('version')}, MaxArraySize "
                     f"{c.get('max_array_size')}, accounting {c.get('accounting')}")
        for chk in report.checks:
            app.echo(f"  {'ok' if chk.ok else 'PROBLEM':7} {chk.what}: {safe_text(chk.message)}")
        for pname, checks in report.partitions.items():
            status = "ok" if all(x.ok for x in checks) else "PROBLEM"
            app.echo(f"  partition {pname}: {status}")
            for chk in checks:
                mark = "" if chk.ok else "PROBLEM "
                app.echo(f"    {mark}{chk.what}: {safe_text(chk.message)}")
    if not report.ok:
        from hpcgear.errors import ConfigError

        raise ConfigError(
            f"site {name} does not match the live cluster: {len(report.problems)} problem(s)",
            "fix the site YAML (or the cluster) as listed above, then run preflight again",
        )
