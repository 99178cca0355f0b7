"""Run one CLI command in-process for the HTTP API, as a key's owner (server side).

``hpcgear/api/native.py`` checks the command against the plan first
(``hpcgear/api/cliplan.py``); here click's own parser checks that every file
parameter holds a path the server staged (``files``), never one the client
named. The output is captured, errors become the usual ``error:``/``hint:`` lines.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from hpcgear.cli.context import AppContext
from hpcgear.cli.exit_codes import ExitStatus, exit_status_for
from hpcgear.errors import HpcgearError, InvalidInputError

if TYPE_CHECKING:
    from hpcgear.config.settings import Settings
    from hpcgear.db.session import Database
    from hpcgear.storage.objects import ObjectStore


def check_paths(argv: list[str], files: Mapping[str, str]) -> list[str]:
    """``argv`` with its placeholders replaced by the staged paths in ``files``.

    Raises when a file parameter of the command holds anything but a staged
    path (or a value its plan allows, like '-' for stdout or a built-in name),
    and for ``job logs --follow``, which would hold a server thread until the
    job ends and answer only then (the CLI follows by polling the logs endpoint).
    """
    from hpcgear.api.cliplan import plan_for
    from hpcgear.api.native import split_global
    from hpcgear.cli.argmap import option_label, parse_raw, raw_values, resolve

    out = []
    for a in argv:
        if any(path in a for path in files.values()):  # only placeholders may name them
            raise InvalidInputError(
                "an argument names a file of the server by its path, which no client may do",
                "run it with `hpcgear` and an API key: the client stages the files",
            )
        for ph in sorted(files, key=len, reverse=True):
            a = a.replace(ph, files[ph])
        out.append(a)
    _as, rest, _ = split_global(out)
    found = plan_for(rest)
    if found is None:
        raise InvalidInputError("no such command", "`hpcgear --help` lists them")
    name, plan = found
    cmd, args = resolve(rest)
    if name == "job logs" and parse_raw(cmd, args).get("follow"):
        raise InvalidInputError(
            "job logs --follow is not run on the server",
            "the CLI follows by reading GET /api/jobs/{id}/logs: run `hpcgear job logs -f ID`",
        )
    staged = set(files.values())
    for pname, values in raw_values(cmd, args).items():
        param = plan.paths.get(pname)
        is_path = any(p.name == pname and isinstance(p.type, click.Path) for p in cmd.params)
        for v in values:
            if v in staged or (param is not None and param.allows_literal(v)):
                continue
            if param is None and not is_path:
                continue
            raise InvalidInputError(
                f"{option_label(cmd, pname)} of `hpcgear {name}` names a file, and the server "
                "reads or writes no file a client names",
                "run it with `hpcgear` and an API key: the client sends the file's content "
                "and saves what the command writes",
            )
    return out


def run_cli(
    settings: Settings, db: Database, store: ObjectStore, login: str, argv: list[str],
    files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    from hpcgear.cli.main import _one_line, cli

    argv = check_paths(argv, files or {})  # raises before anything runs
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
