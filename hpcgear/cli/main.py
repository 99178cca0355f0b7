"""The ``hpcgear`` command: a lazily loaded command table plus error handling.

This is the only place that turns errors into exit statuses and messages;
library code raises ``HpcgearError`` with a message and a hint.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from hpcgear import __version__
from hpcgear.cli.context import AppContext

# name -> (module, attribute, short help). Modules load only when the command runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("hpcgear.cli.commands.admin", "init_cmd", "Create an instance: config, DB, storage."),
    "db": ("hpcgear.cli.commands.admin", "db_group", "Database migrations and status."),
    "user": ("hpcgear.cli.commands.admin", "user_group", "Users (add, promote, disable); keys."),
    "login": ("hpcgear.cli.commands.auth", "login_cmd", "Use an API key (client mode)."),
    "logout": ("hpcgear.cli.commands.auth", "logout_cmd", "Forget the configured API key."),
    "whoami": ("hpcgear.cli.commands.auth", "whoami_cmd", "Who you are, how, and where."),
    "serve": ("hpcgear.cli.commands.serve", "serve_cmd", "Run the HTTP API server."),
    "role": ("hpcgear.cli.commands.admin", "role_group", "Grant and revoke roles."),
    "group": ("hpcgear.cli.commands.admin", "group_group", "Create groups."),
    "project": ("hpcgear.cli.commands.admin", "project_group", "Create projects."),
    "ls": ("hpcgear.cli.commands.data", "ls_cmd", "List groups, containers and files."),
    "upload": ("hpcgear.cli.commands.data", "upload_cmd", "Upload files into the hierarchy."),
    "download": ("hpcgear.cli.commands.data", "download_cmd", "Download a file or a tree."),
    "info": ("hpcgear.cli.commands.data", "info_group", "Set or unset info metadata."),
    "mv": ("hpcgear.cli.commands.manage", "mv_cmd", "Move files, containers, analyses."),
    "rename": ("hpcgear.cli.commands.manage", "rename_cmd", "Rename a file or container."),
    "rm": ("hpcgear.cli.commands.manage", "rm_cmd", "Delete into the trash."),
    "trash": ("hpcgear.cli.commands.manage", "trash_group", "List, restore, purge deleted data."),
    "history": ("hpcgear.cli.commands.manage", "history_cmd", "Moves and deletes, recorded."),
    "versions": ("hpcgear.cli.commands.manage", "versions_cmd", "List a file's versions."),
    "classification": (
        "hpcgear.cli.commands.manage",
        "classification_group",
        "Edit a file's classification.",
    ),
    "note": ("hpcgear.cli.commands.manage", "note_group", "Notes on containers."),
    "view": ("hpcgear.cli.commands.views", "view_group", "Metadata tables; saved views."),
    "find": ("hpcgear.cli.commands.views", "find_cmd", "Search by label, tag, type, info."),
    "tag": ("hpcgear.cli.commands.data", "tag_group", "Add or remove tags."),
    "ingest": ("hpcgear.cli.commands.ingest", "ingest_group", "Ingest DICOM/NIfTI folders."),
    "export": ("hpcgear.cli.commands.export", "export_group", "Export a BIDS tree."),
    "deid": ("hpcgear.cli.commands.deid", "deid_group", "De-identification profiles and maps."),
    "gear": ("hpcgear.cli.commands.gear", "gear_group", "Validate, install, build gears."),
    "run": ("hpcgear.cli.commands.jobs", "run_cmd", "Run a gear once (--tag hpc: on SLURM)."),
    "batch": ("hpcgear.cli.commands.jobs", "batch_cmd", "Run a gear over many containers."),
    "jobs": ("hpcgear.cli.commands.jobs", "jobs_cmd", "List jobs."),
    "job": ("hpcgear.cli.commands.jobs", "job_group", "Show, cancel, retry, debug a job; logs."),
    "usage": ("hpcgear.cli.commands.jobs", "usage_cmd", "Core-hours, success rate, wait, storage."),
    "report": ("hpcgear.cli.commands.jobs", "report_cmd", "A project's HTML report (charts)."),
    "controller": (
        "hpcgear.cli.commands.controller",
        "controller_group",
        "Run the controller; its status, health and metrics.",
    ),
    "site": ("hpcgear.cli.commands.site", "site_group", "Attach, validate, check site configs."),
    "rule": ("hpcgear.cli.commands.rules", "rule_group", "Add, apply, show, test gear rules."),
    "rules": ("hpcgear.cli.commands.rules", "rules_group", "Evaluate gear rules (for cron)."),
    "provenance": ("hpcgear.cli.commands.provenance", "provenance_group", "Show, export, trace."),
    "scratch": ("hpcgear.cli.commands.scratch", "scratch_group", "Clean up scratch job dirs."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        cmd = getattr(module, spec[1])
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar="HPCGEAR_CONFIG",
    help="Config file (default ~/.config/hpcgear/config.yaml; env HPCGEAR_CONFIG).",
)
@click.option("--as", "as_user", metavar="USER", help="Act as another user (site admins only).")
@click.option("--traceback", is_flag=True, help="Show the full traceback on errors.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug, -vvv +Alembic).")
@click.option("--log-json", is_flag=True, help="Log lines as JSON objects (for log shippers).")
@click.version_option(__version__, prog_name="hpcgear")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    as_user: str | None,
    traceback: bool,
    verbose: int,
    log_json: bool,
) -> None:
    """hpcgear runs Flywheel-style gears on SLURM clusters.

    \b
    Quick start (embedded SQLite + local storage):
      hpcgear init
      hpcgear group create imaging
      hpcgear project create imaging/study1
      hpcgear upload imaging/study1/sub-01/ses-01/T1w scan.nii.gz
      hpcgear ls imaging/study1/sub-01/ses-01/T1w
    """
    if verbose or log_json:
        from hpcgear.cli.logsetup import configure_logging

        level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
        configure_logging(level, as_json=log_json, verbose=verbose)
    if isinstance(ctx.obj, AppContext):  # the HTTP API runs a command for a key's owner
        ctx.obj.as_user = as_user
        return
    app = AppContext(config_path=config_path, as_user=as_user, traceback=traceback)
    app.log_json = log_json
    ctx.obj = app
    ctx.call_on_close(app.close)


def _remote_key(argv: list[str]) -> str | None:
    """The configured API key when this command should go through the API."""
    import os

    if not argv or os.environ.get("HPCGEAR_LOCAL") == "1":
        return None
    if any(a in ("-h", "--help", "--version") for a in argv):
        return None
    from hpcgear.cli.client import remote_key

    return remote_key(argv)


GENERIC_HINT = "correct what the error names and run the command again"


def _check_arguments_are_text(args: list[str]) -> None:
    """Refuse arguments that are not UTF-8 (Python hands over such bytes as lone
    surrogates, which no database, terminal or JSON document can hold)."""
    from hpcgear.errors import InvalidInputError

    for i, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape" if _escapable(arg) else "replace")
            raise InvalidInputError(
                f"argument {i} ({shown.decode('utf-8', 'backslashreplace')[:120]!r}) is not "
                "UTF-8 text",
                "pass names and values as UTF-8; rename files whose names are in another "
                "encoding",
            ) from None


def _escapable(arg: str) -> bool:
    try:
        arg.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _wants_traceback(argv: list[str]) -> bool:
    return "--traceback" in argv


def main(argv: list[str] | None = None, *, standalone: bool = True) -> int:
    """Entry point; returns the exit status (and exits with it when standalone)."""
    from hpcgear.cli.startup import collect_less_often, defer_unused_imports

    defer_unused_imports()
    if standalone:  # this process is the command's own (not a test's, not the server's)
        collect_less_often()
    from hpcgear.cli.exit_codes import ExitStatus, exit_status_for
    from hpcgear.errors import HpcgearError

    args = list(sys.argv[1:] if argv is None else argv)
    status: int = ExitStatus.OK
    try:
        _check_arguments_are_text(args)
        key = _remote_key(args)
        if key is not None:  # client mode: the command runs on the API server
            from hpcgear.cli.client import run_remote

            status = run_remote(args, key)
        else:
            rv = cli.main(args=args, prog_name="hpcgear", standalone_mode=False)
            if isinstance(rv, int) and not isinstance(rv, bool) and rv:
                status = rv  # a command's own exit status (click.exceptions.Exit(1))
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        status = ExitStatus.INTERRUPTED
    except click.exceptions.Exit as exc:
        status = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        status = exc.exit_code
    except HpcgearError as exc:
        if _wants_traceback(args):
            import traceback

            traceback.print_exc()
        click.echo(f"error: {_one_line(exc.message)}", err=True)
        # Every refusal ends with a hint, even where the raiser had nothing specific to add.
        click.echo(f"hint: {_one_line(exc.hint or GENERIC_HINT)}", err=True)
        status = exit_status_for(exc)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        status = ExitStatus.INTERRUPTED
    except BrokenPipeError:
        status = ExitStatus.OK
    except Exception as exc:  # a bug: say so plainly, keep the traceback opt-in
        if _wants_traceback(args):
            raise
        if _is_busy_database(exc):  # SQLite's "database is locked" after the busy timeout
            click.echo("error: the database was busy with other writers for too long", err=True)
            click.echo("hint: run the command again; nothing was changed", err=True)
            status = ExitStatus.UNAVAILABLE
        else:
            click.echo(f"internal error: {type(exc).__name__}: {_one_line(str(exc))}", err=True)
            click.echo(
                "hint: this is a bug in hpcgear; rerun with --traceback and report it", err=True
            )
            status = ExitStatus.INTERNAL
    if standalone:
        _skip_final_collection()
        sys.exit(status)
    return status


def _skip_final_collection() -> None:
    """Spare the exiting process the cyclic garbage collector's last full pass.

    Interpreter shutdown runs a full collection over every object still alive:
    SQLAlchemy's and click's classes, functions and caches, which outlive the process
    anyway. For ``hpcgear jobs`` that pass (and the teardown it triggers) took longer
    than the command's own work. ``gc.freeze()`` moves them all to the permanent
    generation, which that collection skips; nothing else changes: files and the
    database are closed (``AppContext.close``), standard streams flushed and
    ``atexit``/``weakref.finalize`` hooks run by the interpreter as before.
    """
    import gc

    gc.freeze()


def _is_busy_database(exc: BaseException) -> bool:
    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig).lower()


def _one_line(text: str) -> str:
    from hpcgear.cli.context import safe_text

    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return safe_text("; ".join(lines))[:4000]


def get_app(ctx: click.Context) -> AppContext:
    obj: Any = ctx.find_object(AppContext)
    assert isinstance(obj, AppContext)
    return obj
