"""The controller: ``hpcgear controller run`` (daemon) and ``once`` (cron)."""

from __future__ import annotations

import logging
import os
import sys

import click

from hpcgear.cli.context import AppContext

pass_app = click.make_pass_decorator(AppContext)


def _controller(app: AppContext, sites: tuple[str, ...], quiet: bool, as_json: bool) -> object:
    from hpcgear.controller.context import ControllerContext, CycleReport
    from hpcgear.controller.loop import Controller

    def show(report: CycleReport) -> None:
        if as_json:
            app.emit_json(report.as_dict())
            return
        if quiet and not report.busy and not report.errors:
            return
        parts = [
            f"{k}={v}" for k, v in report.as_dict().items() if k not in ("site", "errors") and v
        ]
        app.note(f"[{report.site}] " + (" ".join(parts) or "idle"))
        for err in report.errors:
            app.note(f"[{report.site}] warning: {err}")

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
        logging.basicConfig(
            level=logging.WARNING,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    from hpcgear.controller.loop import Controller

    ctl = _controller(app, sites, quiet, False)
    assert isinstance(ctl, Controller)
    ctl.install_signal_handlers()
    ctl.run(until_idle=until_idle, timeout=timeout, interval=interval)


@controller_group.command("once")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Only these sites.")
@click.option("--json", "as_json", is_flag=True, help="Print each site's cycle report as JSON.")
@click.option("--wait", is_flag=True,
              help="If another controller leads a site, wait for its lease instead of failing.")
@pass_app
def controller_once(app: AppContext, sites: tuple[str, ...], as_json: bool, wait: bool) -> None:
    """One pass over every site (for cron); releases the site leases when done.

    Exits non-zero (6) when another live controller leads a site, unless --wait.
    """
    from hpcgear.controller.loop import Controller
    from hpcgear.errors import LeaderConflictError

    ctl = _controller(app, sites, False, as_json)
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
