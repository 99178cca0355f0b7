"""Job commands: run, batch, jobs, job show|cancel|retry|logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from hpcgear.cli.context import AppContext, parse_pairs, safe_text, site_registry

pass_app = click.make_pass_decorator(AppContext)
F = TypeVar("F", bound=Callable[..., Any])


def _job_options(dry_run_help: str) -> Callable[[F], F]:
    """Options shared by ``run`` and ``batch``: config, tags, priority, dry run, json."""

    def wrap(fn: F) -> F:
        for opt in reversed(
            (
                click.option(
                    "--config",
                    "config",
                    multiple=True,
                    metavar="KEY=VALUE",
                    help="A config value, converted to the manifest's type (repeatable).",
                ),
                click.option(
                    "--tag",
                    "tags",
                    multiple=True,
                    metavar="TAG",
                    help="Job tag: hpc routes to the cluster; cpu=4, ram=16G, time=2h, gpu ...",
                ),
                click.option(
                    "--priority",
                    type=click.Choice(["low", "medium", "high", "critical"]),
                    default="medium",
                    show_default=True,
                ),
                click.option("--dry-run", is_flag=True, help=dry_run_help),
                click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
            )
        ):
            fn = opt(fn)
        return fn

    return wrap


@click.command("run")
@click.argument("gear", metavar="GEAR[@VERSION]")
@click.option("--dest", required=True, metavar="PATH", help="Destination container path.")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=PATH/FILE",
    help="A file input (repeat for each input).",
)
@_job_options("Print the resolved resources and the exact sbatch script; change nothing.")
@pass_app
def run_cmd(
    app: AppContext,
    gear: str,
    dest: str,
    inputs: tuple[str, ...],
    config: tuple[str, ...],
    tags: tuple[str, ...],
    priority: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Create one job running GEAR on --dest (needs read-write on the destination)."""
    from hpcgear.controller.preview import preview_job
    from hpcgear.jobs.service import run_gear

    actor = app.actor
    sites = site_registry(app)
    with app.db.session() as s:
        prepared = run_gear(
            s,
            actor,
            sites,
            gear_ref=gear,
            dest_path=dest,
            inputs=parse_pairs(inputs, "--input"),
            config=parse_pairs(config, "--config"),
            tags=list(tags),
            priority=priority,
            dry_run=dry_run,
        )
        preview = preview_job(s, prepared, actor) if dry_run else None
        if dry_run:
            s.rollback()
        job_id = prepared.job.id if prepared.job is not None else None
        label = f"{prepared.gear.name}@{prepared.gear.version}"
    if preview is not None:
        if as_json:
            app.emit_json(
                {
                    "dry_run": True,
                    "gear": label,
                    "site": preview.site,
                    "resources": preview.resources,
                    "script": preview.script,
                    "script_sha256": preview.script_sha256,
                    "argv": preview.argv,
                }
            )
            return
        app.echo(f"# dry run: {label} on site {preview.site}; nothing was stored")
        app.echo("# resources:")
        for line in preview.resources:
            app.echo(f"#   {line}")
        app.echo(preview.script.rstrip("\n"))
        return
    if as_json:
        app.emit_json({"id": job_id, "gear": label, "site": prepared.site.name})
        return
    app.echo(f"job {job_id}: {label} on site {prepared.site.name} (pending)")


@click.command("batch")
@click.argument("gear", metavar="GEAR[@VERSION]")
@click.option(
    "--over",
    required=True,
    metavar="GROUP/PROJECT/*/*",
    help="Containers to run on; '*' and globs per level below the project.",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=REGEX",
    help="Input NAME is the one file whose name matches REGEX (repeatable).",
)
@click.option(
    "--per-file",
    is_flag=True,
    help="One job per matching file on each container (needs exactly one --input).",
)
@click.option(
    "--type", "file_type", metavar="TYPE", help="Only files of this type (dicom, nifti...)."
)
@click.option(
    "--skip-completed",
    is_flag=True,
    help="Skip (and name) containers where this gear version with this config already completed.",
)
@_job_options("Show which containers would get a job; change nothing.")
@pass_app
def batch_cmd(
    app: AppContext,
    gear: str,
    over: str,
    inputs: tuple[str, ...],
    per_file: bool,
    file_type: str | None,
    skip_completed: bool,
    config: tuple[str, ...],
    tags: tuple[str, ...],
    priority: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Create one job per container matching --over; containers lacking inputs are skipped."""
    from hpcgear.hierarchy.service import container_path
    from hpcgear.jobs.service import batch_run

    actor = app.actor
    sites = site_registry(app)
    with app.db.session() as s:
        res = batch_run(
            s,
            actor,
            sites,
            gear_ref=gear,
            over=over,
            inputs=parse_pairs(inputs, "--input"),
            config=parse_pairs(config, "--config"),
            tags=list(tags),
            priority=priority,
            dry_run=dry_run,
            per_file=per_file,
            file_type=file_type,
            skip_completed=skip_completed,
        )
        rows: list[dict[str, Any]] = [
            {
                "destination": container_path(s, p.destination),
                "id": p.job.id if p.job is not None else None,
                "site": p.site.name,
                "inputs": {i.name: i.file_name for i in p.inputs if i.base == "file"},
            }
            for p in res.prepared
        ]
        if dry_run:
            s.rollback()
    skipped = [{"destination": d, "reason": r} for d, r in res.skipped]
    if as_json:
        app.emit_json({"dry_run": dry_run, "jobs": rows, "skipped": skipped})
        return
    verb = "would create" if dry_run else "created"
    app.echo(f"{verb} {len(rows)} job(s), skipped {len(skipped)} container(s)")
    for r in rows:
        ins = ", ".join(f"{k}={safe_text(str(v))}" for k, v in r["inputs"].items())
        app.echo(f"  {r['id'] or '-':24}  {safe_text(r['destination'])}  [{ins}]")
    for sk in skipped:
        app.echo(f"  skipped {safe_text(sk['destination'])}: {safe_text(sk['reason'])}")


@click.command("jobs")
@click.option("--state", help="Only jobs in this state.")
@click.option("--mine", is_flag=True, help="Only jobs I started.")
@click.option("--project", metavar="GROUP/PROJECT", help="Only jobs of this project.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def jobs_cmd(
    app: AppContext, state: str | None, mine: bool, project: str | None, limit: int, as_json: bool
) -> None:
    """List jobs (newest first) with state, failure kind, SLURM id and pending reason."""
    from hpcgear.jobs.service import jobs_to_dicts, list_jobs

    actor = app.actor
    with app.db.session() as s:
        rows = jobs_to_dicts(
            s, list_jobs(s, actor, state=state, mine=mine, project=project, limit=limit)
        )
    if as_json:
        app.emit_json(rows)
        return
    if not rows:
        app.note("no jobs")
        return
    app.table(
        [
            [
                r["id"],
                r["gear"] or "",
                r["state"],
                r["failure_kind"] or "",
                r["site"],
                r["native_id"] or "",
                r["scheduler_state"] or "",
                r["pending_reason"] or "",
                safe_text(r["destination"]),
            ]
            for r in rows
        ],
        [
            "ID",
            "GEAR",
            "STATE",
            "FAILURE",
            "SITE",
            "SLURM-ID",
            "SLURM-STATE",
            "REASON",
            "DESTINATION",
        ],
    )


@click.group("job")
def job_group() -> None:
    """One job: show, cancel, retry, logs."""


@job_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def job_show(app: AppContext, job_id: str, as_json: bool) -> None:
    """A job's state, failure, SLURM details and its event timeline."""
    from hpcgear.jobs.service import get_job, job_to_dict

    actor = app.actor
    with app.db.session() as s:
        data = job_to_dict(s, get_job(s, actor, job_id), events=True)
    if as_json:
        app.emit_json(data)
        return
    for key in (
        "id",
        "gear",
        "state",
        "failure_kind",
        "failure_message",
        "site",
        "native_id",
        "scheduler_state",
        "pending_reason",
        "destination",
        "priority",
        "created",
    ):
        if data.get(key) is not None:
            app.echo(f"{key + ':':17} {safe_text(str(data[key]))}")
    if data.get("pending_reason"):
        from hpcgear.scheduler.slurm_tables import describe_reason

        app.echo(f"{'waiting because:':17} {describe_reason(data['pending_reason']).sentence}")
    app.echo(
        f"{'attempt:':17} {data['attempt']}"
        + (f" (previous {data['previous_id']})" if data["previous_id"] else "")
    )
    res = data.get("resources") or {}
    app.echo(
        f"{'resources:':17} cpus={res.get('cpus')} mem={res.get('mem_mb')}M "
        f"time={res.get('time_minutes')}m partition={res.get('partition') or '-'}"
    )
    app.echo("events:")
    for e in data["events"]:
        move = f"{e['old_state'] or ''}->{e['new_state']}" if e["new_state"] else e["kind"]
        app.echo(f"  {e['ts'][:19]}  {move:22} {safe_text(e['message'] or '')}  ({e['actor']})")


@job_group.command("cancel")
@click.argument("job_id")
@pass_app
def job_cancel(app: AppContext, job_id: str) -> None:
    """Cancel a job (the controller scancels it if it was submitted)."""
    from hpcgear.jobs.service import cancel_job

    actor = app.actor
    with app.db.session() as s:
        job = cancel_job(s, actor, job_id)
        native = job.native_id
    app.echo(
        f"cancelled {job_id}"
        + (f" (SLURM {native} is scancelled by the controller)" if native else "")
    )


@job_group.command("retry")
@click.argument("job_id")
@pass_app
def job_retry(app: AppContext, job_id: str) -> None:
    """Retry a failed or cancelled job as a new attempt."""
    from hpcgear.jobs.service import retry_job

    actor = app.actor
    with app.db.session() as s:
        new = retry_job(s, actor, job_id)
        new_id, attempt = new.id, new.attempt
    app.echo(f"job {new_id}: attempt {attempt} of {job_id} (pending)")


@job_group.command("logs")
@click.argument("job_id")
@pass_app
def job_logs(app: AppContext, job_id: str) -> None:
    """Print a job's log (stored with the job, or read from scratch while it runs)."""
    from hpcgear.controller.logs import job_log_text
    from hpcgear.jobs.service import get_job

    actor = app.actor
    with app.db.session() as s:
        job = get_job(s, actor, job_id)
        text = job_log_text(s, app.store, app.settings, job)
    app.stdout.write(text if text.endswith("\n") or not text else text + "\n")
