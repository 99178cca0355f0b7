"""Concurrent writers through the real CLI, as separate processes (issue 11: lost updates).

Each case starts N ``hpcgear`` processes at once against one instance (SQLite and
PostgreSQL) and checks that every change survived, every process exited 0 and no
"database is locked" or internal error reached the user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CliEnv
from tests.unit.test_cli_client import server_and_client  # noqa: F401  (fixture)

N = 10
HPCGEAR = str(Path(sys.executable).with_name("hpcgear"))  # the installed entry point


def _spawn(env: CliEnv, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [HPCGEAR, "--config", str(env.config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _run_all(procs: list[subprocess.Popen[str]]) -> None:
    failures = []
    for p in procs:
        _out, err = p.communicate(timeout=240)
        if p.returncode != 0 or "database is locked" in err or "internal error" in err:
            failures.append((p.args, p.returncode, err))
    assert not failures, failures


@pytest.fixture
def one_file(cli_env: CliEnv, tmp_path: Path) -> tuple[CliEnv, str]:
    cli_env.ok("group", "create", "g")
    cli_env.ok("project", "create", "g/p")
    src = tmp_path / "scan.txt"
    src.write_text("x")
    cli_env.ok("upload", "g/p/s1/ses1", str(src))
    return cli_env, "g/p/s1/ses1/scan.txt"


def test_concurrent_tag_add_keeps_every_tag(one_file: tuple[CliEnv, str]) -> None:
    env, path = one_file
    _run_all([_spawn(env, "tag", "add", path, f"t{i}") for i in range(N)])
    entry = next(e for e in env.ok("ls", "g/p/s1/ses1", "--json").json() if e["kind"] == "file")
    assert sorted(entry["tags"]) == sorted(f"t{i}" for i in range(N))


def test_concurrent_tag_rm_removes_every_tag(one_file: tuple[CliEnv, str]) -> None:
    env, path = one_file
    env.ok("tag", "add", path, *(f"t{i}" for i in range(N)), "keep")
    _run_all([_spawn(env, "tag", "rm", path, f"t{i}") for i in range(N)])
    entry = next(e for e in env.ok("ls", "g/p/s1/ses1", "--json").json() if e["kind"] == "file")
    assert entry["tags"] == ["keep"]


def test_concurrent_info_set_keeps_every_key(one_file: tuple[CliEnv, str]) -> None:
    env, path = one_file
    procs = [_spawn(env, "info", "set", path, f"k{i}={i}") for i in range(N)]
    procs += [_spawn(env, "info", "set", "g/p/s1", f"c.k{i}={i}") for i in range(N // 2)]
    _run_all(procs)
    entry = next(e for e in env.ok("ls", "g/p/s1/ses1", "--json").json() if e["kind"] == "file")
    assert entry["info"] == {f"k{i}": i for i in range(N)}
    subject = env.ok("ls", "g/p", "--json").json()[0]
    assert subject["info"] == {"c": {f"k{i}": i for i in range(N // 2)}}


def test_concurrent_uploads_to_a_new_session_all_succeed(cli_env: CliEnv, tmp_path: Path) -> None:
    cli_env.ok("group", "create", "g")
    cli_env.ok("project", "create", "g/p")
    files = []
    for i in range(8):
        f = tmp_path / f"f{i}.txt"
        f.write_text(f"content {i}")
        files.append(f)
    _run_all([_spawn(cli_env, "upload", "g/p/newsub/newses/acq", str(f)) for f in files])
    names = sorted(e["name"] for e in cli_env.ok("ls", "g/p/newsub/newses/acq", "--json").json())
    assert names == [f"f{i}.txt" for i in range(8)]
    assert [e["label"] for e in cli_env.ok("ls", "g/p", "--json").json()] == ["newsub"]


def test_concurrent_uploads_of_one_name_make_distinct_versions(
    cli_env: CliEnv, tmp_path: Path
) -> None:
    cli_env.ok("group", "create", "g")
    cli_env.ok("project", "create", "g/p")
    procs = []
    for i in range(6):
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / "same.txt").write_text(f"version content {i}")
        procs.append(_spawn(cli_env, "upload", "g/p/s/ses", str(d / "same.txt")))
    _run_all(procs)
    entry = cli_env.ok("ls", "g/p/s/ses", "--json").json()[0]
    assert entry["version"] == 6


def test_concurrent_api_tag_and_info_writes_keep_every_change(
    server_and_client: tuple[CliEnv, CliEnv, str],  # noqa: F811
) -> None:
    """The Flywheel REST writes through a real `hpcgear serve`: concurrent tag and info
    changes on one project all survive (the API's read-modify-write locks the row)."""
    import json
    import threading
    import urllib.request

    server, client, key = server_and_client
    url = client.ok("whoami", "--json").json()["instance"]
    pid = next(e["id"] for e in server.ok("ls", "lab", "--json").json() if e["label"] == "p")
    results: list[int] = []

    def post(path: str, body: object) -> None:
        req = urllib.request.Request(
            f"{url}{path}", method="POST", data=json.dumps(body).encode(),
            headers={"Authorization": f"scitran-user {key}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            results.append(r.status)

    threads = [threading.Thread(target=post, args=(f"/api/projects/{pid}/tags",
                                                   {"value": f"t{i}"})) for i in range(N)]
    threads += [threading.Thread(target=post, args=(f"/api/projects/{pid}/info",
                                                    {"set": {f"k{i}": i}})) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert results == [200] * (2 * N)
    project = next(e for e in server.ok("ls", "lab", "--json").json() if e["label"] == "p")
    assert sorted(project["tags"]) == sorted(f"t{i}" for i in range(N))
    assert project["info"] == {f"k{i}": i for i in range(N)}
