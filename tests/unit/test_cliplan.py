"""Every click command has a place in the client-mode plan (hpcgear/api/cliplan.py), and
no forwarded command has a file parameter the plan does not declare.

Walks the whole command tree, so a new command (or a new --out option) fails
here until someone decides where it runs and how its files travel.
"""

from __future__ import annotations

import click
import pytest

from hpcgear.api.cliplan import PLAN, Mode, PathRole, plan_for
from hpcgear.cli.main import cli

# Parameter names that hold files whatever their click type (a plain string --out).
FILE_LIKE = {"out", "output", "tar", "html", "file", "files", "directory", "source",
             "manifest", "dockerfile", "profile", "deid_profile", "gear_dirs", "textfile",
             "image", "config_path", "cache", "write_def"}
# ...except where the name means something else (checked by reading each command).
NOT_FILES = {
    ("job debug", "image"),  # refused anyway
    ("mv", "source"),  # a hierarchy path
}


def _walk(cmd: click.Command, words: tuple[str, ...]) -> list[tuple[str, click.Command]]:
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        out = []
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, name
            out += _walk(sub, (*words, name))
        return out
    return [(" ".join(words), cmd)]


COMMANDS = _walk(cli, ())


def test_the_tree_is_walked() -> None:
    names = {n for n, _ in COMMANDS}
    assert {"upload", "user key create", "controller once", "ingest dicom"} <= names
    assert len(names) > 80


@pytest.mark.parametrize("name,cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_has_a_plan(name: str, cmd: click.Command) -> None:
    assert name in PLAN, f"`hpcgear {name}` is not in hpcgear/api/cliplan.py PLAN"
    found = plan_for([*name.split(), "--json", "x"])
    assert found is not None and found[0] == name
    plan = PLAN[name]
    params = {p.name: p for p in cmd.params}
    for pname in plan.paths:
        assert pname in params, f"{name}: the plan names a parameter {pname!r} it does not have"
    if plan.mode is Mode.REFUSED:
        assert plan.hint, f"{name}: a refusal needs a hint"
        return
    if plan.mode is Mode.LOCAL:
        return
    for p in cmd.params:
        file_like = isinstance(p.type, click.Path) or p.name in FILE_LIKE
        if (name, p.name) in NOT_FILES or not file_like:
            continue
        assert p.name in plan.paths, (
            f"`hpcgear {name}` runs on the server but its parameter {p.name!r} may name a "
            "file: declare it in the plan's paths (content staged / streamed back)"
        )
        # a default or an environment variable would name a server path nobody staged
        default = p.get_default(click.Context(cmd), call=True)
        unset = type(default).__name__ == "Sentinel"  # click >= 8.3: no default at all
        assert unset or default in (None, (), False) or p.required, (name, p.name, default)
        assert not getattr(p, "envvar", None), (name, p.name)


def test_plan_names_no_command_that_does_not_exist() -> None:
    assert set(PLAN) == {n for n, _ in COMMANDS}


def test_kinds_of_the_representative_commands() -> None:
    assert PLAN["controller once"].mode is Mode.REFUSED
    assert PLAN["db upgrade"].mode is Mode.REFUSED
    assert PLAN["serve"].mode is Mode.REFUSED
    assert PLAN["login"].mode is Mode.LOCAL
    assert PLAN["export bids"].paths["out"].role is PathRole.OUT_DIR
    assert PLAN["ingest dicom"].paths["directory"].role is PathRole.IN
    assert PLAN["rule apply"].paths["file"].role is PathRole.IN
    assert plan_for(["view", "lab/p", "--columns", "x"]) == ("view show", PLAN["view show"])
    assert plan_for(["user", "key", "create", "--json"]) == ("user key create",
                                                             PLAN["user key create"])
    assert plan_for(["nonsense"]) is None


def test_client_replaces_only_the_file_values() -> None:
    """A file value that equals another argument (or a command word) is told apart by
    click's own parser; the server then sees placeholders only where files go."""
    from hpcgear.cli.argmap import raw_values, resolve
    from hpcgear.cli.client import _substitute

    rest = ["view", "lab/p", "--columns", "subject.label", "--out", "lab/p"]
    cmd, args = resolve(rest)
    values = raw_values(cmd, args)
    new = _substitute(cmd, args, values, {"lab/p": "@hpcgear-out:p"}, {"out"})
    assert new == ["lab/p", "--columns", "subject.label", "--out", "@hpcgear-out:p"]
    rest = ["export", "bids", "lab/p", "--out=bids"]
    cmd, args = resolve(rest)
    assert args == ["lab/p", "--out=bids"]  # the command words are not arguments
    new = _substitute(cmd, args, raw_values(cmd, args), {"bids": "@hpcgear-out:bids"}, {"out"})
    assert new == ["lab/p", "--out=@hpcgear-out:bids"]
    rest = ["provenance", "export", "j1", "--format", "prov-json", "-oj1"]
    cmd, args = resolve(rest)
    new = _substitute(cmd, args, raw_values(cmd, args), {"j1": "@hpcgear-out:j1"}, {"output"})
    assert new == ["j1", "--format", "prov-json", "-o@hpcgear-out:j1"]


def test_server_refuses_file_values_it_did_not_stage() -> None:
    from hpcgear.cli.remote import check_paths
    from hpcgear.errors import InvalidInputError

    staged = {"@hpcgear-stage:" + "A" * 32: "/srv/tmp/stage-1/in/rules.yaml"}
    ok = check_paths(["rule", "apply", "@hpcgear-stage:" + "A" * 32], staged)
    assert ok == ["rule", "apply", "/srv/tmp/stage-1/in/rules.yaml"]
    assert check_paths(["deid", "attach", "lab/p", "ps3.15-basic"], {})[-1] == "ps3.15-basic"
    assert check_paths(["report", "lab/p", "--html", "-"], {})[-1] == "-"
    for argv in (["rule", "apply", "/etc/shadow"], ["deid", "attach", "lab/p", "/etc/passwd"],
                 ["report", "lab/p", "--html=/tmp/x"], ["download", "x", "--tar", "-"],
                 ["gear", "install", "/srv/tmp/stage-1/in/rules.yaml"],
                 ["ingest", "dicom", "@hpcgear-stage:" + "B" * 32]):
        with pytest.raises(InvalidInputError, match=r"names a file|no such staged"):
            check_paths(argv, staged)
