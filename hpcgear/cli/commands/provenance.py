"""Provenance commands: show a job's record, export it, trace a file back to raw data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.group("provenance")
def provenance_group() -> None:
    """Provenance records of jobs: show, export (PROV-JSON, RO-Crate, BIDS), trace."""


def _load_record(app: AppContext, job_id: str) -> dict[str, Any]:
    from hpcgear.controller.record import get_record, verify_record
    from hpcgear.errors import NotFoundError
    from hpcgear.jobs.service import get_job

    actor = app.actor
    with app.db.session() as s:
        job = get_job(s, actor, job_id)
        row = get_record(s, job.id)
        if row is None:
            raise NotFoundError(
                f"job {job_id} has no provenance record (state {job.state})",
                "records are written when a job finishes; check `hpcgear job show`",
            )
        return {"job_id": row.job_id, "sha256": row.sha256, "verified": verify_record(row),
                "created": row.created.isoformat() if row.created else None,
                "record": row.record}


@provenance_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@pass_app
def provenance_show(app: AppContext, job_id: str, as_json: bool) -> None:
    """Show the provenance record of JOB_ID."""
    data = _load_record(app, job_id)
    if as_json:
        app.emit_json(data)
        return
    r = data["record"]
    job, gear, image = r["job"], r["gear"], r.get("image") or {}
    sched, times, acct = r.get("scheduler") or {}, r.get("times") or {}, r.get("accounting") or {}
    execution = r.get("execution") or {}
    who = r.get("started_by") or {}
    rows = [
        ("job", f"{job['id']} (attempt {job.get('attempt')}, {job.get('state')})"),
        ("gear", f"{gear['name']}@{gear['version']} ({gear.get('category')})"),
        ("image", f"{image.get('ref') or '-'} {image.get('digest') or ''}".strip()),
        ("started by", f"{who.get('type')} {who.get('name')}"
                       + (f": {who['reason']}" if who.get("reason") else "")),
        ("site", f"{job.get('site')}  slurm {sched.get('slurm_job_id') or '-'}  "
                 f"partition {sched.get('partition') or '-'}  nodes {sched.get('nodes') or '-'}"),
        ("times", f"submit {times.get('submit') or '-'}  start {times.get('start') or '-'}  "
                  f"end {times.get('end') or '-'}"),
        ("accounting", f"elapsed {acct.get('elapsed_seconds')}s  cpu {acct.get('cpu_seconds')}s"
                       f"  maxrss {acct.get('max_rss_bytes')}"),
        ("exit", f"{execution.get('exit_code')}"),
        ("script", execution.get("script_sha256") or "-"),
        ("record", f"{data['sha256']} "
                   f"({'verified' if data['verified'] else 'DOES NOT MATCH ITS HASH'})"),
    ]
    for key, value in rows:
        app.echo(f"{key + ':':12} {safe_text(str(value))}")
    for title, files in (("inputs", r.get("inputs") or []), ("outputs", r.get("outputs") or [])):
        app.echo(f"{title}:")
        if not files:
            app.echo("  -")
        for f in files:
            role = f"{f['role']}: " if f.get("role") else ""
            app.echo(f"  {safe_text(role + str(f.get('name')))} v{f.get('version')} "
                     f"{f.get('sha256')} ({f.get('size')} bytes)")
    for refused in r.get("refused_outputs") or []:
        app.echo(f"refused:     {safe_text(refused['path'])}: {safe_text(refused['reason'])}")


@provenance_group.command("export")
@click.argument("job_id")
@click.option("--format", "fmt", type=click.Choice(["prov-json", "ro-crate", "bids"]),
              required=True, help="prov-json (W3C PROV), ro-crate (ro-crate-metadata.json), "
                                  "bids (dataset_description.json with GeneratedBy).")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write to FILE instead of standard output.")
@pass_app
def provenance_export(app: AppContext, job_id: str, fmt: str, output: Path | None) -> None:
    """Export the provenance record of JOB_ID."""
    from hpcgear.provenance.export import export_record

    doc = export_record(_load_record(app, job_id)["record"], fmt)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        app.stdout.write(text)
        return
    from hpcgear.errors import InvalidInputError

    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot write {output}: {exc.strerror or exc}",
                                "choose a writable output file") from None
    app.note(f"wrote {fmt} export of job {job_id} to {output}")


def _redact(session: Any, actor: str, tree: dict[str, Any], cache: dict[str, bool]) -> None:
    """Hide names of files on containers the actor may not read (ids and hashes stay)."""
    from hpcgear.db.models import Container
    from hpcgear.errors import PermissionDeniedError
    from hpcgear.hierarchy.permissions import RoleName, require_role

    cid = (tree.get("container") or {}).get("id")
    if cid:
        if cid not in cache:
            container = session.get(Container, cid)
            try:
                if container is not None:
                    require_role(session, actor, container, RoleName.READ_ONLY, "tracing")
                cache[cid] = True
            except PermissionDeniedError:
                cache[cid] = False
        if not cache[cid]:
            tree["name"] = "(no access)"
    for child in (tree.get("produced_by") or {}).get("inputs") or []:
        _redact(session, actor, child, cache)


def _print_tree(app: AppContext, node: dict[str, Any], depth: int) -> None:
    pad = "  " * depth
    origin = node.get("origin") or {}
    line = f"{pad}{safe_text(str(node.get('name')))} v{node['version']}  {node.get('sha256')}"
    step = node.get("produced_by")
    if step:
        line += f"  <- job {step['job_id']} {step['gear']} ({step['state']})"
    else:
        line += f"  [{origin.get('type')} {origin.get('id')}]"
    if node.get("note"):
        line += f"  ({node['note']})"
    app.echo(line)
    for child in (step or {}).get("inputs") or []:
        _print_tree(app, child, depth + 1)


@provenance_group.command("trace")
@click.argument("path", metavar="PATH/FILE")
@click.option("--version", "version", type=int, help="File version (default: current).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def provenance_trace(app: AppContext, path: str, version: int | None, as_json: bool) -> None:
    """Walk back from a file to the raw inputs, through every job that produced it."""
    from hpcgear.hierarchy.permissions import RoleName
    from hpcgear.hierarchy.service import resolve_file
    from hpcgear.provenance.trace import jobs_in, raw_inputs, trace

    actor = app.actor
    with app.db.session() as s:
        _container, row = resolve_file(s, actor, path, RoleName.READ_ONLY)
        node = trace(s, row.id, version)
        tree = node.as_dict()
        _redact(s, actor, tree, {})
        leaves = [leaf.urn for leaf in raw_inputs(node)]
        jobs = jobs_in(node)
    if as_json:
        app.emit_json({"trace": tree, "jobs": jobs, "raw_inputs": leaves})
        return
    _print_tree(app, tree, 0)
    app.note(f"{len(jobs)} job(s), {len(leaves)} raw input(s)")
