"""Run one CLI command in-process for the HTTP API, as a key's owner (server side).

``hpcgear/api/native.py`` checks the command against its allowlist first; the
output is captured, errors become the usual ``error:``/``hint:`` lines.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import click

from hpcgear.cli.context import AppContext
from hpcgear.cli.exit_codes import ExitStatus, exit_status_for
from hpcgear.errors import HpcgearError

if TYPE_CHECKING:
    from hpcgear.config.settings import Settings
    from hpcgear.db.session import Database
    from hpcgear.storage.objects import ObjectStore


def run_cli(
    settings: Settings, db: Database, store: ObjectStore, login: str, argv: list[str]
) -> dict[str, Any]:
    from hpcgear.cli.main import _one_line, cli

    out, err = io.StringIO(), io.StringIO()
    app = AppContext(stdout=out, stderr=err, key_login=login)
    app._settings, app._db, app._store = settings, db, store
    code: int = ExitStatus.OK
    try:
        rv = cli.main(args=argv, prog_name="hpcgear", standalone_mode=False, obj=app)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            code = rv  # a command's own exit status (click.exceptions.Exit(1), e.g. health)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        err.write(f"error: {exc.format_message()}\n")
        code = exc.exit_code
    except HpcgearError as exc:
        err.write(f"error: {_one_line(exc.message)}\n")
        if exc.hint:
            err.write(f"hint: {_one_line(exc.hint)}\n")
        code = exit_status_for(exc)
    return {"code": int(code), "stdout": out.getvalue(), "stderr": err.getvalue()}
