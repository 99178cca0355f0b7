"""Job commands: run, batch, jobs, job show|cancel|retry|logs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hpcgear.cli.context import AppContext, parse_pairs, safe_text, site_registry

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from hpcgear.controller.preview import Preview
    from hpcgear.jobs.service import PreparedJob

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
    def create(s: Session) -> tuple[PreparedJob, Preview | None, str | None, str]:
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
        return prepared, preview, job_id, f"{prepared.gear.name}@{prepared.gear.version}"

    # a race with another writer (a new analysis container, SQLite busy) runs it again
    prepared, preview, job_id, label = app.db.write(create)
    for note in prepared.notes:
        app.note(f"warning: {safe_text(note)}")
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
    metavar="NAME=REGEX|PATH/FILE",
    help="Input NAME is the one file whose name matches REGEX on each container, or a "
    "fixed PATH/FILE (e.g. in an analysis) for every job (repeatable).",
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
    for note in dict.fromkeys(n for p in res.prepared for n in p.notes):
        app.note(f"warning: {safe_text(note)}")
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


def _as_time(value: Any) -> dt.datetime | None:
    """A stored time (ISO text or datetime; naive means UTC) as an aware datetime."""
    if value is None:
        return None
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def zoned(value: Any) -> str:
    """A time in the local zone with its name, e.g. ``2026-12-03 22:30:05 UTC``."""
    when = _as_time(value)
    if when is None:
        return "-"
    local = when.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or local.strftime("%z"))


def _iso_zoned(value: Any) -> str | None:
    when = _as_time(value)
    return when.isoformat() if when else None


def _age(value: Any, now: dt.datetime) -> str:
    when = _as_time(value)
    if when is None:
        return "-"
    secs = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _fit(rows: list[list[str]], headers: list[str], width: int, flex: int) -> list[str]:
    """Lines of a table at most ``width`` wide; column ``flex`` absorbs the squeeze."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    spare = width - (sum(widths) + 2 * (len(widths) - 1))
    if spare < 0:
        widths[flex] = max(len(headers[flex]), widths[flex] + spare)

    def cell(text: str, w: int) -> str:
        return text if len(text) <= w else text[: max(0, w - 1)] + "~"

    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers).rstrip()]
    out += [fmt.format(*(cell(c, w) for c, w in zip(r, widths, strict=True))).rstrip()
            for r in rows]
    return out


def _unled_sites(
    app: AppContext, conn: Any, rows: list[dict[str, Any]]
) -> dict[str, tuple[int, dt.datetime | None]]:
    """Sites with unfinished listed jobs that no controller cycled recently."""
    from hpcgear.jobs.queries import last_led

    waiting: dict[str, int] = {}
    for r in rows:
        if r["state"] not in ("complete", "failed", "cancelled"):
            waiting[r["site"]] = waiting.get(r["site"], 0) + 1
    now = dt.datetime.now(dt.UTC)
    out = {}
    for site, n in waiting.items():
        led = last_led(conn, site)
        if not _is_led(app, site, led, now):
            out[site] = (n, led)
    return out


def _is_led(app: AppContext, site: str, led: dt.datetime | None, now: dt.datetime) -> bool:
    """A controller cycled ``site`` recently (``stale_after`` its poll interval).

    The site's config (its poll interval) is read only when the answer depends on
    it: never led, or a cycle within the shortest staleness, need no site schema.
    """
    from hpcgear.jobs.queries import MIN_STALE_SECONDS, stale_after

    if led is None:
        return False
    if now - led <= dt.timedelta(seconds=MIN_STALE_SECONDS):
        return True
    return now - led <= stale_after(_poll_interval(app, site))


@click.command("jobs")
@click.option("--state", help="Only jobs in this state.")
@click.option("--mine", is_flag=True, help="Only jobs I started.")
@click.option("--project", metavar="GROUP/PROJECT", help="Only jobs of this project.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100000),
              help="Show at most this many jobs (newest first).")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0, 10_000_000),
              help="Skip this many of the newest jobs first (paging).")
@click.option("--wide", is_flag=True, help="Every column (SLURM state, reason, site, times).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def jobs_cmd(
    app: AppContext,
    state: str | None,
    mine: bool,
    project: str | None,
    limit: int,
    offset: int,
    wide: bool,
    as_json: bool,
) -> None:
    """List jobs (newest first); the table fits 100 columns, --wide shows everything.

    A listing cut by --limit says so on stderr with the --offset of the next page.
    """
    # Core only (hpcgear.jobs.queries): a login-node listing does not pay for the ORM.
    from hpcgear.jobs.queries import job_dicts, list_jobs

    actor = app.actor
    with app.db.connect() as conn:
        found = list_jobs(conn, actor, state=state, mine=mine, project=project,
                          limit=offset + limit + 1)
        more = len(found) > offset + limit
        rows = job_dicts(conn, found[offset : offset + limit])
        unled = _unled_sites(app, conn, rows)
    for r in rows:
        for key in ("created", "modified"):
            r[key] = _iso_zoned(r.get(key))
    if more:
        app.note(f"note: showing jobs {offset + 1}-{offset + len(rows)}; more exist: "
                 f"add --offset {offset + limit} for the next page")
    for site, (waiting, since) in unled.items():
        app.note(f"note: {waiting} listed job(s) wait on site {site}, which no controller has "
                 f"led since {zoned(since) if since else 'ever'} (`hpcgear controller status`)")
    if as_json:
        app.emit_json(rows)
        return
    if not rows:
        app.note("no jobs")
        return
    now = dt.datetime.now(dt.UTC)

    def state_text(r: dict[str, Any]) -> str:
        return str(r["state"]) + (f":{r['failure_kind']}" if r["failure_kind"] else "")

    if wide:
        for line in _fit(
            [[r["id"], r["gear"] or "", state_text(r), r["site"], r["native_id"] or "",
              r["scheduler_state"] or "", r["pending_reason"] or "", zoned(r["created"]),
              safe_text(r["destination"])] for r in rows],
            ["ID", "GEAR", "STATE", "SITE", "SLURM-ID", "SLURM-STATE", "REASON", "CREATED",
             "DESTINATION"],
            width=10_000, flex=8,
        ):
            app.echo(line)
        return
    for line in _fit(
        [[r["id"], state_text(r)[:17], (r["gear"] or "")[:20], r["native_id"] or "",
          _age(r["created"], now), safe_text(r["destination"])] for r in rows],
        ["ID", "STATE", "GEAR", "SLURM", "AGE", "DESTINATION"],
        width=100, flex=5,
    ):
        app.echo(line)


@click.group("job")
def job_group() -> None:
    """One job: show, cancel, retry, logs."""


def _poll_interval(app: AppContext, site: str) -> int:
    """The site's poll interval; 60 s for a site no longer configured."""
    from hpcgear.errors import HpcgearError
    from hpcgear.jobs.sites import SiteRegistry

    try:
        return SiteRegistry.from_settings(app.settings).get(site).poll_interval_seconds
    except HpcgearError:
        return 60


@job_group.command("show")
@click.argument("job_id")
@click.option("--tail", "tail_lines", default=20, show_default=True, type=click.IntRange(0, 10000),
              help="Log lines shown for a failed job.")
@click.option("--no-remote", is_flag=True,
              help="Do not ask the cluster (no start estimate, no live log tail).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def job_show(
    app: AppContext, job_id: str, tail_lines: int, no_remote: bool, as_json: bool
) -> None:
    """A job's state, SLURM details, efficiency, estimated start, log tail and events.

    \b
    failed jobs:   the last --tail lines of the job log
    ended jobs:    requested vs used CPU, memory and time (SLURM accounting)
    queued jobs:   SLURM's estimated start (squeue --start)
    pending jobs:  a warning when no controller has led the site recently
    Times are shown in your local zone, with its name.
    """
    # Core only (hpcgear.jobs.queries) unless the cluster is asked (a queued job's
    # start estimate, a failed job's log): those read the job through the ORM.
    from hpcgear.jobs.efficiency import efficiency
    from hpcgear.jobs.queries import event_dict, get_job, job_dicts, job_events_of, last_led

    actor = app.actor
    now = dt.datetime.now(dt.UTC)
    with app.db.connect() as conn:
        job = get_job(conn, actor, job_id)
        data = job_dicts(conn, [job])[0]
        data["events"] = [event_dict(e) for e in job_events_of(conn, job.id)]
        data["efficiency"] = efficiency(job)
        led = last_led(conn, job.site)
    data["controller"] = {"last_cycle": _iso_zoned(led)}
    final = job.state in ("complete", "failed", "cancelled")
    data["controller"]["led"] = _is_led(app, job.site, led, now)
    data["estimated_start"] = None
    data["log_tail"] = None
    remote_queued = job.state == "queued" and not no_remote
    remote_failed = job.state == "failed" and bool(tail_lines) and not no_remote
    if remote_queued or remote_failed:
        from hpcgear.controller.jobinfo import estimated_start, log_tail
        from hpcgear.db.models import Job

        with app.db.session() as s:
            model = s.get(Job, job.id)
            if model is not None and remote_queued:
                when = estimated_start(app.settings, model)
                data["estimated_start"] = when.isoformat() if when else None
            if model is not None and remote_failed:
                data["log_tail"] = log_tail(s, app.store, app.settings, model, tail_lines)
    for key in ("submitted", "started", "finished"):
        data[key] = _iso_zoned(getattr(job, key))
    for key in ("created", "modified"):
        data[key] = _iso_zoned(data.get(key))
    for e in data["events"]:
        e["ts"] = _iso_zoned(e["ts"])
    if as_json:
        app.emit_json(data)
        return
    for key in ("id", "gear", "state", "failure_kind", "failure_message", "site", "native_id",
                "scheduler_state", "pending_reason", "destination", "priority"):
        if data.get(key) is not None:
            app.echo(f"{key + ':':17} {safe_text(str(data[key]))}")
    if data.get("pending_reason"):
        from hpcgear.scheduler.slurm_tables import describe_reason

        app.echo(f"{'waiting because:':17} {describe_reason(data['pending_reason']).sentence}")
    if data["estimated_start"]:
        app.echo(f"{'estimated start:':17} {data['estimated_start'].replace('T', ' ')} "
                 "(SLURM's estimate, cluster time)")
    if not final and not data["controller"]["led"]:
        since = zoned(led) if led else "ever"
        app.echo(f"{'controller:':17} no controller has led site {job.site} since {since}; "
                 "this job will not move until one runs (`hpcgear controller run`, or cron "
                 "`hpcgear controller once`)")
    for key in ("created", "submitted", "started", "finished"):
        if data.get(key):
            app.echo(f"{key + ':':17} {zoned(data[key])}")
    app.echo(
        f"{'attempt:':17} {data['attempt']}"
        + (f" (previous {data['previous_id']})" if data["previous_id"] else "")
    )
    res = data.get("resources") or {}
    app.echo(
        f"{'resources:':17} cpus={res.get('cpus')} mem={res.get('mem_mb')}M "
        f"time={res.get('time_minutes')}m partition={res.get('partition') or '-'}"
    )
    eff = data["efficiency"]
    if eff:
        def pct(v: Any) -> str:
            return "-" if v is None else f"{v:.0f}%"

        rss = "-" if eff["max_rss_mb"] is None else str(eff["max_rss_mb"])
        app.echo(
            f"{'efficiency:':17} cpu {pct(eff['cpu_pct'])} of {eff['cpus']} CPU(s), "
            f"memory {pct(eff['mem_pct'])} ({rss}M of {eff['mem_requested_mb'] or '-'}M), "
            f"time {pct(eff['time_pct'])} "
            f"({eff['wall_seconds']}s of {eff['time_limit_seconds'] or '-'}s)"
        )
        if eff["wait_seconds"] is not None:
            app.echo(f"{'queue wait:':17} {eff['wait_seconds']}s; "
                     f"core-hours {eff['core_hours']:.3f}")
    if data["log_tail"]:
        app.echo(f"log (last {len(data['log_tail'])} lines):")
        for line in data["log_tail"]:
            app.echo(f"  | {safe_text(line)}")
    app.echo("events:")
    for e in data["events"]:
        move = f"{e['old_state'] or ''}->{e['new_state']}" if e["new_state"] else e["kind"]
        app.echo(f"  {zoned(e['ts'])}  {move:22} {safe_text(e['message'] or '')}  "
                 f"({e['actor']})")


@job_group.command("cancel")
@click.argument("job_id")
@pass_app
def job_cancel(app: AppContext, job_id: str) -> None:
    """Cancel a job (the controller scancels it if it was submitted)."""
    from hpcgear.jobs.service import cancel_job

    actor = app.actor
    native = app.db.write(lambda s: cancel_job(s, actor, job_id).native_id)
    app.echo(
        f"cancelled {job_id}"
        + (f" (SLURM {native} is scancelled by the controller)" if native else "")
    )


@job_group.command("retry")
@click.argument("job_id")
@click.option("--config", "config", multiple=True, metavar="KEY=VALUE",
              help="Change a config value for the new attempt (repeatable), e.g. slurm-ram=8G.")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="The new attempt's tags, replacing the old ones (repeatable): cpu=4, ...")
@click.option("--dry-run", is_flag=True, help="Show the new attempt's site and resources only.")
@pass_app
def job_retry(
    app: AppContext, job_id: str, config: tuple[str, ...], tags: tuple[str, ...], dry_run: bool
) -> None:
    """Retry a failed or cancelled job as a new attempt, optionally with changes.

    Without --config/--tag the new attempt repeats the old one exactly. With them
    the config is merged and re-validated, and the site and resources are
    resolved again (same gear version and input versions).
    """
    if not config and not tags and not dry_run:
        from hpcgear.jobs.service import retry_job

        actor = app.actor
        with app.db.session() as s:
            new = retry_job(s, actor, job_id)
            new_id, attempt = new.id, new.attempt
        app.echo(f"job {new_id}: attempt {attempt} of {job_id} (pending)")
        return
    from hpcgear.jobs.retry_changed import retry_with_changes

    actor = app.actor
    sites = site_registry(app)
    with app.db.session() as s:
        prepared = retry_with_changes(
            s, actor, sites, job_id, config=parse_pairs(config, "--config"),
            tags=list(tags) if tags else None, dry_run=dry_run,
        )
        explain = prepared.resources.explain()
        site = prepared.site.name
        if dry_run:
            s.rollback()
        new_job_id = prepared.job.id if prepared.job is not None else None
        new_attempt = prepared.job.attempt if prepared.job is not None else None
    for note in prepared.notes:
        app.note(f"warning: {safe_text(note)}")
    if dry_run:
        app.echo(f"# dry run: retry of {job_id} on site {site}; nothing was stored")
        for line in explain:
            app.echo(f"#   {line}")
        return
    app.echo(f"job {new_job_id}: attempt {new_attempt} of {job_id} on site {site} (pending)")


@job_group.command("logs")
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new log lines until the job ends (Ctrl-C stops).")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.2, 600),
              help="Seconds between reads with --follow.")
@pass_app
def job_logs(app: AppContext, job_id: str, follow: bool, interval: float) -> None:
    """Print a job's log (stored with the job, or read from scratch while it runs)."""
    import time

    from hpcgear.controller.logs import job_log_text
    from hpcgear.jobs.service import get_job
    from hpcgear.text import is_log_placeholder

    actor = app.actor
    shown = ""
    while True:
        with app.db.session() as s:
            job = get_job(s, actor, job_id)
            text = job_log_text(s, app.store, app.settings, job)
            final = job.state in ("complete", "failed", "cancelled")
        placeholder = is_log_placeholder(text)
        if not follow:
            app.stdout.write(text if text.endswith("\n") or not text else text + "\n")
            return
        if not placeholder:
            new = text[len(shown):] if text.startswith(shown) else text
            if new:
                app.stdout.write(new)
                app.stdout.flush()
            shown = text
        if final:
            if shown and not shown.endswith("\n"):
                app.stdout.write("\n")
            app.note(f"job {job_id} is {job.state}")
            return
        time.sleep(interval)


@job_group.command("debug")
@click.argument("job_id")
@click.option("--shell", is_flag=True,
              help="Open a shell in the same container setup instead of running the gear.")
@click.option("--run", "run_it", is_flag=True, help="Run the gear command now (in the foreground).")
@click.option("--image", metavar="SIF", help="Use this image instead of the job's (by digest).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def job_debug(
    app: AppContext, job_id: str, shell: bool, run_it: bool, image: str | None, as_json: bool
) -> None:
    """Recreate an ended job's attempt in a fresh scratch dir and print its exact command.

    \b
    Same inputs (pinned versions, verified copies), same config.json, same gear
    environment and the same image digest, in <scratch>/hpcgear-debug/<job>-.../.
    Prints the Apptainer command (and the ssh command on an SSH site); --run runs
    it, --shell opens a shell in the same container setup instead.
    """
    import subprocess

    from hpcgear.controller.debug import prepare_debug
    from hpcgear.jobs.service import get_job

    actor = app.actor
    with app.db.session() as s:
        job = get_job(s, actor, job_id)
        plan = prepare_debug(s, app.store, app.settings, job, image=image, shell=shell)
    if as_json:
        app.emit_json({"job": plan.job_id, "site": plan.site, "job_dir": plan.job_dir,
                       "image": plan.image, "argv": list(plan.argv),
                       "ssh_argv": list(plan.ssh_argv) if plan.ssh_argv else None})
        if not (shell or run_it):
            return
    else:
        app.echo(f"# job {plan.job_id} recreated on site {plan.site} in {plan.job_dir}")
        app.echo(f"# image {plan.image}")
        if plan.ssh_argv:
            import shlex

            app.echo(shlex.join(plan.ssh_argv))
        else:
            app.echo(plan.shell_line)
    if not (shell or run_it):
        return
    argv = list(plan.ssh_argv) if plan.ssh_argv else list(plan.argv)
    cwd = None if plan.ssh_argv else plan.job_dir
    rc = subprocess.call(argv, cwd=cwd)  # argv built from the job; no shell
    if rc:
        raise click.exceptions.Exit(rc)


@click.command("usage")
@click.option("--project", metavar="GROUP/PROJECT", help="Only this project's jobs.")
@click.option("--group", metavar="GROUP", help="Only the jobs of this group's projects.")
@click.option("--user", metavar="USER", help="Only this user's jobs (yours, unless site admin).")
@click.option("--since", metavar="T", help="Jobs ended since T: 30d, 2w, or a date (2026-01-01).")
@click.option("--by", type=click.Choice(["user", "gear", "project", "month"]), default="project",
              show_default=True, help="One row per user, gear, project or month.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@pass_app
def usage_cmd(
    app: AppContext,
    project: str | None,
    group: str | None,
    user: str | None,
    since: str | None,
    by: str,
    fmt: str,
) -> None:
    """Jobs, success rate, core-hours, GPU-hours, wall time and queue wait; storage.

    Figures come from SLURM accounting stored with each job when it ended.
    Success rate is complete / (complete + failed); cancelled jobs are counted
    but not in the rate.
    """
    from hpcgear.jobs.usage import usage_report
    from hpcgear.units import parse_since

    actor = app.actor
    when = parse_since(since) if since else None
    with app.db.session() as s:
        rep = usage_report(s, actor, project=project, group=group, user=user, since=when, by=by)
    if fmt == "json":
        app.emit_json(rep.as_dict())
        return
    cols = ["key", "jobs", "complete", "failed", "cancelled", "success_rate", "core_hours",
            "gpu_hours", "wall_hours", "mean_wait_seconds"]
    if by == "project":
        cols.append("storage_bytes")
    if fmt == "csv":
        import csv

        w = csv.writer(app.stdout)
        w.writerow([by if c == "key" else c for c in cols])
        for r in [*rep.rows, {**rep.total, "key": "TOTAL"}]:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
        return

    def cell(r: dict[str, Any], c: str) -> str:
        v = r.get(c)
        if v is None:
            return "-"
        if c == "success_rate":
            return f"{100 * v:.0f}%"
        if c == "storage_bytes":
            return _size(int(v))
        if c == "mean_wait_seconds":
            return f"{v:.0f}s"
        return safe_text(str(v))

    heads = {"key": by.upper(), "success_rate": "OK%", "core_hours": "CORE-H",
             "gpu_hours": "GPU-H", "wall_hours": "WALL-H", "mean_wait_seconds": "WAIT",
             "storage_bytes": "STORAGE", "cancelled": "CANCEL"}
    headers = [heads.get(c, c.upper()) for c in cols]
    rows = [[cell(r, c) for c in cols] for r in rep.rows]
    rows.append([cell({**rep.total, "key": "TOTAL"}, c) for c in cols])
    for line in _fit(rows, headers, width=100, flex=0):
        app.echo(line)
    if rep.storage and by != "project":
        for st in rep.storage:
            app.echo(f"storage {safe_text(st['project'])}: {_size(st['bytes'])} in "
                     f"{st['versions']} file version(s)")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"


@click.command("report")
@click.argument("project", metavar="GROUP/PROJECT")
@click.option("--html", "out", required=True, type=click.Path(path_type=Path, dir_okay=False,
              allow_dash=True), help="Write the self-contained HTML page here ('-': stdout).")
@click.option("--session", "session_path", metavar="G/P/SUBJECT/SESSION",
              help="Session whose provenance graph is drawn (default: the one with most runs).")
@pass_app
def report_cmd(app: AppContext, project: str, out: Path, session_path: str | None) -> None:
    """A project's report as one HTML file that needs no network.

    Charts (inline SVG): jobs over time by state, core-hours by gear and by
    user, queue wait against run time, failure kinds, and a session's
    provenance graph (input files -> gear runs -> outputs).
    """
    from hpcgear.jobs.report import project_report
    from hpcgear.jobs.report_html import render_report_html

    actor = app.actor
    with app.db.session() as s:
        data = project_report(s, actor, project, session_path=session_path)
    text = render_report_html(data)
    if str(out) == "-":  # stdout
        app.stdout.write(text)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    app.echo(f"wrote {out} ({data.totals.get('jobs', 0)} jobs"
             + (f", provenance of {safe_text(data.session)}" if data.session else "") + ")")
