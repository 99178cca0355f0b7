"""Which values of a command line fill which click parameters (client and server side).

The CLI as a client replaces the values of file parameters with placeholders
(``hpcgear/api/cliplan.py``); the server checks, with click's own parser, that
every file parameter holds only a path it staged itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from hpcgear.errors import InvalidInputError


def resolve(rest: Sequence[str]) -> tuple[click.Command, list[str]]:
    """The click command a command line (after global options) names, and its arguments."""
    from hpcgear.cli.main import cli

    ctx = click.Context(cli, info_name="hpcgear", resilient_parsing=True)
    cmd: click.Command = cli
    args = list(rest)
    while isinstance(cmd, click.Group):
        group = cmd
        sub_args = list(args)
        while sub_args and sub_args[0].startswith("-"):  # a group's own --help: ignored
            sub_args.pop(0)
        try:
            _name, sub, args = group.resolve_command(ctx, sub_args)
        except click.UsageError as exc:
            raise InvalidInputError(exc.format_message(), "`hpcgear --help`") from None
        if sub is None:
            raise InvalidInputError("no such command", "`hpcgear --help` lists them")
        ctx = click.Context(sub, parent=ctx, info_name=_name, resilient_parsing=True)
        cmd = sub
    return cmd, args


def parse_raw(cmd: click.Command, args: Sequence[str]) -> dict[str, Any]:
    """Parameter name -> what click's parser read for it (strings, lists, flags)."""
    ctx = click.Context(cmd, info_name=cmd.name, resilient_parsing=True)
    parser = cmd.make_parser(ctx)
    try:
        opts, _largs, _order = parser.parse_args(list(args))
    except click.UsageError as exc:
        raise InvalidInputError(exc.format_message(), f"`hpcgear ... {cmd.name} --help`") from None
    return {str(k): v for k, v in opts.items()}


def raw_values(cmd: click.Command, args: Sequence[str]) -> dict[str, list[str]]:
    """Parameter name -> the strings given for it (before any type conversion)."""
    out: dict[str, list[str]] = {}
    for name, value in parse_raw(cmd, args).items():
        vals: Any = value if isinstance(value, list | tuple) else [value]
        flat: list[str] = []
        for v in vals:
            flat.extend(v if isinstance(v, list | tuple) else [v])
        out[str(name)] = [v for v in flat if isinstance(v, str)]
    return out


def option_label(cmd: click.Command, name: str) -> str:
    for p in cmd.params:
        if p.name == name:
            return "/".join(p.opts) if isinstance(p, click.Option) else p.human_readable_name
    return name
