"""The CLI as a client: with a key from `hpcgear login`, commands run through a real
`hpcgear serve` process as the key's owner; the client's config holds no database URL."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CliEnv


@pytest.fixture
def server_and_client(cli_env: CliEnv, tmp_path: Path) -> tuple[CliEnv, CliEnv, str]:
    import socket

    cli_env.ok("group", "create", "lab")
    cli_env.ok("project", "create", "lab/p")
    cli_env.ok("project", "create", "lab/q")
    cli_env.ok("user", "add", "alice")
    cli_env.ok("role", "grant", "alice", "lab/p", "read-write")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    key = cli_env.ok("user", "key", "create", "--user", "alice", "--url", url,
                     "--json").json()["key"]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcgear", "--config", str(cli_env.config), "serve",
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail((tmp_path / "serve.log").read_text())
            time.sleep(0.3)
    client = CliEnv(home=tmp_path, config=tmp_path / "client" / "config.yaml")
    client.ok("login", key)
    yield cli_env, client, key
    proc.terminate()
    proc.wait(timeout=20)


def test_commands_go_through_the_api(
    server_and_client: tuple[CliEnv, CliEnv, str], tmp_path: Path
) -> None:
    server, client, key = server_and_client
    text = client.config.read_text()
    assert "database_url" not in text and key in text
    assert stat.S_IMODE(client.config.stat().st_mode) == 0o600
    who = client.ok("whoami", "--json").json()
    assert who["user"] == "alice" and who["via"] == "key"
    assert who["instance"].startswith("http://127.0.0.1:")
    assert [g["id"] for g in client.ok("ls", "--json").json()] == ["lab"]
    f = tmp_path / "scan.txt"
    f.write_text("bytes from a login node\n")
    up = client.ok("upload", "lab/p/s1/ses1/acq1", str(f), "--json").json()
    assert up[0]["version"] == 1 and up[0]["created"] is True
    listed = server.ok("ls", "lab/p/s1/ses1/acq1", "--json").json()
    assert listed[0]["name"] == "scan.txt" and listed[0]["origin"]["id"] == "alice"
    out = tmp_path / "dl"
    client.ok("download", "lab/p/s1/ses1/acq1/scan.txt", "--out", str(out))
    assert (out / "scan.txt").read_text() == "bytes from a login node\n"
    client.ok("tag", "add", "lab/p/s1", "reviewed")
    assert "reviewed" in server.ok("ls", "lab/p", "--json").json()[0]["tags"]
    # the key's owner cannot act as anyone else, nor reach another project
    res = client.run("--as", server.ok("whoami", "--json").json()["user"], "ls")
    assert res.code == 4 and "site-admin" in res.err
    res = client.run("upload", "lab/q/s1", str(f))
    assert res.code == 4 and res.err.startswith("error: ") and "hint: " in res.err
    res = client.run("ls", "lab/nope")
    assert res.code == 3
    # admin-only server commands are not run remotely
    res = client.run("gear", "install", "/etc")
    assert res.code == 4 and "cannot run through the API" in res.err
