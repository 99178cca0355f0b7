"""The controller: ``hpcgear controller run`` (daemon) and ``once`` (cron)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


def _controller(
    app: AppContext, sites: tuple[str, ...], quiet: bool, as_json: bool, *, daemon: bool = False
) -> object:
    from hpcgear.controller.context import ControllerContext, CycleReport
    from hpcgear.controller.lease import holder_id
    from hpcgear.controller.loop import Controller
    from hpcgear.controller.status import record_cycle

    holder = holder_id()
    cycle_log = logging.getLogger("hpcgear.controller.cycle")

    def show(report: CycleReport) -> None:
        try:
            record_cycle(app.db, report.as_dict(), holder)
        except Exception:  # status is for humans; it must never stop job handling
            logging.getLogger(__name__).exception("could not store the cycle report")
        if as_json:
            app.emit_json(report.as_dict())
            return
        if quiet and not report.busy and not report.errors:
            return
        parts = [
            f"{k}={v}" for k, v in report.as_dict().items() if k not in ("site", "errors") and v
        ]
        line = f"[{report.site}] " + (" ".join(parts) or "idle")
        if daemon:  # journald/log files: timestamped log lines (--log-json: JSON)
            cycle_log.info("%s", line)
            for err in report.errors:
                cycle_log.warning("[%s] %s", report.site, err)
            return
        # cron mail and log files: every line starts with an ISO timestamp and its zone
        stamp = dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds")
        app.note(f"{stamp} {line}")
        for err in report.errors:
            app.note(f"{stamp} [{report.site}] warning: {err}")

    ctx = ControllerContext(db=app.db, store=app.store, settings=app.settings)
    hook = None
    try:
        from hpcgear.rules.engine import evaluate_for_controller

        hook = evaluate_for_controller
    except ImportError:  # rules not installed in this build
        hook = None
    from hpcgear.controller.lease import LEASE_SECONDS

    lease = os.environ.get("HPCGEAR_CONTROLLER_LEASE_SECONDS", "")  # the chaos tier shortens it
    return Controller(
        settings_path=app.config_path,
        ctx=ctx,
        site_names=sites,
        holder=holder,
        on_report=show,
        rules_hook=hook,
        lease_seconds=int(lease) if lease.isdigit() and int(lease) > 0 else LEASE_SECONDS,
    )


@click.group("controller")
def controller_group() -> None:
    """Run the controller that submits, polls and stages jobs."""


@controller_group.command("run")
@click.option(
    "--site",
    "sites",
    multiple=True,
    metavar="NAME",
    help="Lead only these sites (default: all configured sites and local).",
)
@click.option("--until-idle", is_flag=True, help="Stop once no job is left unfinished.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Stop after this long.")
@click.option(
    "--interval",
    type=float,
    metavar="SECONDS",
    help="Seconds between cycles (default: the sites' poll_interval).",
)
@click.option("--quiet", is_flag=True, help="Report only cycles that changed something.")
@pass_app
def controller_run(
    app: AppContext,
    sites: tuple[str, ...],
    until_idle: bool,
    timeout: float | None,
    interval: float | None,
    quiet: bool,
) -> None:
    """Run the daemon: SIGTERM finishes the current step and exits; SIGHUP reloads sites."""
    if not logging.getLogger().handlers:
        from hpcgear.cli.logsetup import configure_logging

        configure_logging(logging.WARNING, as_json=app.log_json)
        logging.getLogger("hpcgear.controller.cycle").setLevel(logging.INFO)
    from hpcgear.controller.loop import Controller

    app.require_site_admin("running the controller")
    ctl = _controller(app, sites, quiet, False, daemon=True)
    assert isinstance(ctl, Controller)
    ctl.install_signal_handlers()
    ctl.warm_up()  # templates compiled, lazy imports done: before the freeze below
    _long_lived_process()
    ctl.run(until_idle=until_idle, timeout=timeout, interval=interval)


def _long_lived_process() -> None:
    """Tune the garbage collector for the daemon (its own process, never a library call).

    What is alive now (modules, tables, compiled statements, site configs) lives as
    long as the daemon: frozen out of every collection. Fewer young-generation passes
    matter more: a cycle that submits 10,000 jobs allocates millions of short-lived
    objects (rows, specs, events), and with the default threshold the collector ran
    every 700 of them, walking all the cycle's live objects each time (measured:
    about a fifth of a 3,000-job submission's CPU). It still runs; only less often.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 10)


@controller_group.command("once")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Only these sites.")
@click.option("--json", "as_json", is_flag=True, help="Print each site's cycle report as JSON.")
@click.option("--wait", is_flag=True,
              help="If another controller leads a site, wait for its lease instead of failing.")
@click.option("--quiet", is_flag=True,
              help="Print only cycles that changed something or had errors (cron mail).")
@pass_app
def controller_once(
    app: AppContext, sites: tuple[str, ...], as_json: bool, wait: bool, quiet: bool
) -> None:
    """One pass over every site (for cron); releases the site leases when done.

    Exits non-zero (6) when another live controller leads a site, unless --wait.
    """
    from hpcgear.controller.loop import Controller
    from hpcgear.errors import LeaderConflictError

    if not logging.getLogger().handlers:  # warnings too get a timestamp (cron mail)
        from hpcgear.cli.logsetup import configure_logging

        configure_logging(logging.WARNING, as_json=app.log_json)
    app.require_site_admin("running the controller")
    ctl = _controller(app, sites, quiet, as_json)
    assert isinstance(ctl, Controller)
    try:
        ctl.once(wait=wait)
    finally:
        ctl.close()
    if ctl.not_led:
        led = "; ".join(f"{site} by {who}" for site, who in sorted(ctl.not_led.items()))
        raise LeaderConflictError(
            f"another controller leads {led}; nothing was done there",
            "let it work (it handles those jobs), or run with --wait to wait for its lease",
        )



def _statuses(app: AppContext, sites: tuple[str, ...]) -> list[Any]:
    from hpcgear.controller.status import controller_status
    from hpcgear.jobs.sites import SiteRegistry

    reg = SiteRegistry.from_settings(app.settings)
    wanted = {n: reg.get(n).poll_interval_seconds for n in (sites or tuple(reg.sites))}
    from hpcgear.db.models import User

    with app.db.session() as s:
        found = controller_status(s, wanted)
        user = s.get(User, app.actor)  # monitoring may run as an unregistered account
        admin = user is not None and user.site_admin and not user.disabled
    return [st if admin else st.redacted() for st in found if not sites or st.site in sites]


def _when(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "never"
    age = int((now - value).total_seconds())
    return f"{value.astimezone().isoformat(timespec='seconds')} ({age}s ago)"


@controller_group.command("status")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Only these sites.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def controller_status_cmd(app: AppContext, sites: tuple[str, ...], as_json: bool) -> None:
    """Who leads each site, its last cycle and scheduler answer, backlog, recent errors."""
    now = dt.datetime.now(dt.UTC)
    statuses = _statuses(app, sites)
    if as_json:
        app.emit_json([st.as_dict(now) for st in statuses])
        return
    for st in statuses:
        led = "led" if st.led(now) else "NOT LED"
        app.echo(f"site {st.site}: {led}")
        app.echo(f"  leader:           {st.leader or '-'}"
                 + (f" (lease until {st.lease_expires.astimezone().isoformat(timespec='seconds')})"
                    if st.lease_expires else ""))
        app.echo(f"  last cycle:       {_when(st.last_cycle, now)}")
        app.echo(f"  scheduler answer: {_when(st.last_clean_cycle, now)} (last error-free cycle)")
        busy = {k: v for k, v in st.last_report.items() if k not in ("site", "errors") and v}
        if busy:
            app.echo("  last cycle did:   " + " ".join(f"{k}={v}" for k, v in busy.items()))
        backlog = " ".join(f"{k}={v}" for k, v in st.backlog.items()) or "none"
        app.echo(f"  backlog:          {backlog}")
        for err in st.recent_errors[-5:]:
            app.echo(f"  error {err.get('ts', '')[:19]}: {safe_text(str(err.get('error')))}")


@controller_group.command("health")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Only these sites.")
@pass_app
def controller_health(app: AppContext, sites: tuple[str, ...]) -> None:
    """Exit 0 if every site with work was cycled recently without errors, else 1 (monitoring).

    A site counts as led when its last cycle is younger than 3 poll intervals
    (at least 5 minutes). Prints one line per problem.
    """
    from hpcgear.controller.status import health

    now = dt.datetime.now(dt.UTC)
    ok, reasons = health(_statuses(app, sites), now)
    if ok:
        app.echo("ok")
        return
    for r in reasons:
        app.echo(f"unhealthy: {safe_text(r)}")
    raise click.exceptions.Exit(1)


@controller_group.command("metrics")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Only these sites.")
@click.option(
    "--textfile",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write atomically to this file (node_exporter's textfile collector) instead of stdout.",
)
@pass_app
def controller_metrics(app: AppContext, sites: tuple[str, ...], textfile: Path | None) -> None:
    """Prometheus metrics of the controllers and the job backlog."""
    import os
    import tempfile

    from hpcgear.controller.status import metrics_text

    text = metrics_text(_statuses(app, sites), dt.datetime.now(dt.UTC))
    if textfile is None:
        app.stdout.write(text)
        return
    fd, tmp = tempfile.mkstemp(dir=textfile.parent, prefix=".hpcgear-metrics-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, textfile)
