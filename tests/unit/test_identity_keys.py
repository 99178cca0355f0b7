"""Identity (the OS account, never $USER), site-admin-only commands, and API keys."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hpcgear.auth import keys, keytext
from hpcgear.db.session import Database
from hpcgear.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from hpcgear.hierarchy import service as svc
from tests.conftest import CliEnv

REPO = Path(__file__).resolve().parents[2]


def test_whoami_ignores_user_and_logname(cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    data = cli_env.ok("whoami", "--json").json()
    real = pwd.getpwuid(os.getuid()).pw_name
    assert data["user"] == real and data["os_account"] == real and data["via"] == "local"
    assert data["site_admin"] is True


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another OS account needs root")
def test_whoami_as_another_os_account_with_user_root(tmp_path: Path) -> None:
    """A real process under uid 65534 with USER=root LOGNAME=root is not root."""
    nobody = pwd.getpwuid(65534).pw_name
    home = Path(tempfile.mkdtemp(prefix="hpcgear-whoami-"))
    try:
        os.chmod(home, 0o777)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "cfg"),
            "XDG_DATA_HOME": str(home / "data"),
            "USER": "root",
            "LOGNAME": "root",
        }
        init = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "hpcgear", "init"],
            env=env, capture_output=True, text=True, timeout=120, cwd=home,
        )
        assert init.returncode == 0, init.stderr
        assert f"site admin: {nobody}" in init.stdout
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "hpcgear", "whoami", "--json"],
            env=env, capture_output=True, text=True, timeout=120, cwd=home,
        )
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data["user"] == nobody != "root"
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def other_user(cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> CliEnv:
    from hpcgear.auth import identity

    cli_env.ok("user", "add", "rw")
    cli_env.ok("user", "add", "ga")
    monkeypatch.setattr(identity, "os_login", lambda: "rw")
    return cli_env


@pytest.mark.parametrize(
    "argv",
    [["controller", "once"], ["controller", "run", "--until-idle"], ["db", "upgrade"],
     ["serve", "--port", "1"]],
)
def test_admin_only_commands_refuse_others(other_user: CliEnv, argv: list[str]) -> None:
    res = other_user.run(*argv)
    assert res.code == 4, res.err
    assert "site-admin" in res.err and "Traceback" not in res.err


def test_as_is_for_site_admins_only(other_user: CliEnv) -> None:
    res = other_user.run("--as", "ga", "whoami")
    assert res.code == 4 and "site-admin" in res.err


def test_key_cli_create_list_revoke(other_user: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env = other_user
    made = env.ok("user", "key", "create", "--url", "http://localhost:8080", "--json").json()
    assert made["owner"] == "rw" and made["kind"] == "user"
    assert made["key"].startswith("localhost:8080:__force_insecure:")
    listed = env.ok("user", "key", "list", "--json").json()
    assert [k["id"] for k in listed] == [made["id"]]
    assert "secret" not in json.dumps(listed) and made["key"].split(":")[-1] not in json.dumps(
        listed
    )
    # another user's keys are refused to a non-admin
    res = env.run("user", "key", "create", "--user", "ga", "--url", "http://h:1")
    assert res.code == 4
    res = env.run("user", "key", "list", "--all")
    assert res.code == 4
    # no URL known: a clear error
    res = env.run("user", "key", "create")
    assert res.code != 0 and "hint:" in res.err and "--url" in res.err
    env.ok("user", "key", "revoke", made["id"])
    assert env.ok("user", "key", "list", "--json").json()[0]["revoked"]
    # the site admin (the real OS account) sees and manages everyone's keys
    from hpcgear.auth import identity

    monkeypatch.setattr(identity, "os_login", lambda: pwd.getpwuid(os.getuid()).pw_name)
    env.ok("user", "key", "create", "--user", "ga", "--url", "https://fw.example")
    everyone = env.ok("user", "key", "list", "--all", "--json").json()
    assert sorted(k["owner"] for k in everyone) == ["ga", "rw"]
    ga_key = next(k for k in everyone if k["owner"] == "ga")
    env.ok("user", "key", "revoke", ga_key["id"])


def test_login_writes_key_mode_600(cli_env: CliEnv) -> None:
    key = "example.org:443:" + "a" * 48
    cli_env.ok("login", key, "--no-check")
    text = cli_env.config.read_text()
    assert key in text
    assert stat.S_IMODE(cli_env.config.stat().st_mode) == 0o600
    cli_env.ok("logout")
    assert key not in cli_env.config.read_text()


def test_key_text_is_what_the_flywheel_sdk_parses() -> None:
    text = keytext.format_key("http://api.example:8080", "s3cret")
    assert text == "api.example:8080:__force_insecure:s3cret"
    parsed = keytext.parse_key(text)
    assert parsed.base_url == "http://api.example:8080" and parsed.secret == "s3cret"
    assert keytext.parse_key("fw.example:s3cret").base_url == "https://fw.example:443"
    assert keytext.format_key("https://fw.example", "x") == "fw.example:443:x"
    assert len(keys.new_secret()) != 57  # 57 characters means an OAuth token to the SDK
    try:
        from flywheel.flywheel import config_from_api_key
    except ImportError:  # pragma: no cover - the test extra installs flywheel-sdk
        pytest.skip("flywheel-sdk is not installed (pip install -e '.[test]')")
    cfg = config_from_api_key(text)
    assert cfg.host == "http://api.example:8080/api"
    assert cfg.api_key_prefix == {"Authorization": "scitran-user"}


def _users(db: Database) -> None:
    with db.session() as s:
        svc.add_user(s, None, "admin", site_admin=True)
        svc.add_user(s, "admin", "alice")
        svc.add_user(s, "admin", "bob")


def test_keys_hashed_authenticate_revoke_expire(db: Database) -> None:
    _users(db)
    with db.session() as s:
        row, secret = keys.create_key(s, "alice", label="laptop")
        kid = row.id
        assert row.secret_sha256 == keys.hash_secret(secret) != secret
        _, soon = keys.create_key(
            s, "admin", "bob", expires=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        )
    with db.session() as s:
        who = keys.authenticate(s, secret)
        assert (who.login, who.kind, who.key_id) == ("alice", "user", kid)
        with pytest.raises(AuthenticationError):
            keys.authenticate(s, "not-a-key")
        with pytest.raises(PermissionDeniedError):
            keys.revoke_key(s, "bob", kid)
        with pytest.raises(NotFoundError):
            keys.revoke_key(s, "bob", "nope")
    with db.session() as s:
        keys.revoke_key(s, "alice", kid)
    with db.session() as s, pytest.raises(AuthenticationError, match="revoked"):
        keys.authenticate(s, secret)
    with db.session() as s:
        row = s.get(keys.ApiKey, keys.list_keys(s, "bob")[0].id)
        assert row is not None
        row.expires = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with db.session() as s, pytest.raises(AuthenticationError, match="expired"):
        keys.authenticate(s, soon)


def test_hpcgear_help_does_not_import_fastapi() -> None:
    code = (
        "import sys; from hpcgear.cli.main import main; main(['--help'], standalone=False);"
        "bad=[m for m in ('fastapi','uvicorn','starlette','sqlalchemy') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
