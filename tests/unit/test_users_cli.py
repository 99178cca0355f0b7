"""`hpcgear user promote|demote|disable|enable` and what a disabled user can do (nothing)."""

from __future__ import annotations

import getpass

from tests.conftest import CliEnv


def test_promote_demote_disable_enable(cli_env: CliEnv) -> None:
    env = cli_env
    me = getpass.getuser()
    env.ok("user", "add", "alice")
    env.ok("user", "add", "bob")
    env.ok("group", "create", "imaging")
    # alice is no admin: she cannot create a group or promote anyone
    denied = env.run("--as", "alice", "group", "create", "other")
    assert denied.code == 4, denied.err
    assert env.run("--as", "alice", "user", "promote", "bob").code == 4
    assert "alice is now a site admin" in env.ok("user", "promote", "alice").out
    env.ok("--as", "alice", "group", "create", "other")
    env.ok("user", "demote", "alice")
    assert env.run("--as", "alice", "group", "create", "third").code == 4
    # a disabled user is refused everywhere, reads included; their rows stay
    env.ok("role", "grant", "bob", "imaging", "read-only")
    env.ok("--as", "bob", "ls")
    env.ok("user", "disable", "bob")
    res = env.run("--as", "bob", "ls")
    assert res.code == 4 and "user 'bob' is disabled" in res.err, res.err
    assert "hpcgear user enable bob" in res.err
    users = {u["login"]: u for u in env.ok("user", "list", "--json").json()}
    assert users["bob"]["disabled"] is True and users["alice"]["disabled"] is False
    assert env.ok("role", "list", "imaging", "--json").json()  # bob's role kept
    env.ok("user", "enable", "bob")
    env.ok("--as", "bob", "ls")
    # the last enabled site admin cannot demote or disable themselves
    res = env.run("user", "demote", me)
    assert res.code == 5 and "last enabled site admin" in res.err, res.err
    assert env.run("user", "disable", me).code == 5
    assert env.run("user", "promote", "nobody").code == 3
