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


def test_recursive_download_through_the_api_resumes_and_verifies(
    server_and_client: tuple[CliEnv, CliEnv, str], tmp_path: Path
) -> None:
    """`download PATH -r --out DIR` from a login node: the server plans, the bytes come
    through the download endpoint hash-checked, a rerun only fetches what is missing or
    damaged; the server never writes a file for the client."""
    import json
    import urllib.error

    server, client, key = server_and_client
    src = tmp_path / "src"
    src.mkdir()
    for name, text in {"a.nii.gz": "nifti a", "a.json": "{}", "b.txt": "b"}.items():
        (src / name).write_text(text)
    server.ok("upload", "lab/p/s1/ses1/acq1", str(src / "a.nii.gz"), str(src / "a.json"))
    server.ok("upload", "lab/p/s1", str(src / "b.txt"))
    out = tmp_path / "tree"
    plan = client.ok("download", "lab/p", "-r", "--dry-run", "--json").json()
    assert {f["path"] for f in plan["files"]} == {
        "lab/p/s1/ses1/acq1/a.nii.gz", "lab/p/s1/ses1/acq1/a.json", "lab/p/s1/b.txt"}
    first = client.ok("download", "lab/p", "-r", "--out", str(out), "--json").json()
    assert (first["written"], first["skipped"]) == (3, 0)
    assert (out / "lab/p/s1/ses1/acq1/a.nii.gz").read_text() == "nifti a"
    assert (out / "lab/p/s1/b.txt").read_text() == "b"
    (out / "lab/p/s1/b.txt").write_text("damaged")
    again = client.ok("download", "lab/p", "--recursive", "--out", str(out), "--json").json()
    assert (again["written"], again["skipped"]) == (1, 2)
    assert (out / "lab/p/s1/b.txt").read_text() == "b"
    nifti = client.ok("download", "lab/p", "-r", "--type", "nifti", "--dry-run", "--json").json()
    assert [f["path"] for f in nifti["files"]] == ["lab/p/s1/ses1/acq1/a.nii.gz"]
    res = client.run("download", "lab/p", "-r", "--tar", str(tmp_path / "x.tar"))
    assert res.code == 5 and "--tar" in res.err
    res = client.run("download", "lab/q", "-r", "--out", str(tmp_path / "q"))
    assert res.code == 4, res.err  # alice has no role on lab/q
    assert not (tmp_path / "q").exists()
    # the CLI endpoint runs a download only as a plan: never a file on the server
    url = client.ok("whoami", "--json").json()["instance"]
    for argv in (["download", "lab/p", "-r", "--tar", "/tmp/x.tar"],
                 ["download", "lab/p", "-r", "--out", "/tmp/x"]):
        req = urllib.request.Request(
            f"{url}/api/hpcgear/cli", data=json.dumps({"argv": argv}).encode(),
            method="POST", headers={"Authorization": f"scitran-user {key.split(':')[-1]}",
                                    "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30).close()
            pytest.fail(f"{argv} ran on the server")
        except urllib.error.HTTPError as exc:
            assert exc.code in (403, 422), exc.code
    assert not Path("/tmp/x.tar").exists() and not Path("/tmp/x").exists()


def test_export_bids_through_the_api_matches_a_local_export(
    server_and_client: tuple[CliEnv, CliEnv, str], tmp_path: Path
) -> None:
    """`export bids` from a login node writes the same tree, byte for byte, as the same
    export on the server; the server writes nothing; a rerun keeps what is right."""
    from tests.unit.test_bids import check_bids, make_bids

    server, client, _key = server_and_client
    src = make_bids(tmp_path / "ds")
    server.ok("ingest", "bids", str(src), "--group", "lab", "--project", "p")
    local = tmp_path / "local"
    server.ok("export", "bids", "lab/p/sub-01", "--out", str(local))
    remote = tmp_path / "remote"
    res = client.ok("export", "bids", "lab/p/sub-01", "--out", str(remote), "--json").json()
    assert res["out"] == str(remote) and res["dry_run"] is False

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                if p.is_file()}

    assert tree(remote) == tree(local) and len(tree(remote)) == len(res["written"])
    check_bids(remote)
    (remote / "sub-01/anat/sub-01_T1w.nii").write_bytes(b"damaged")
    client.ok("export", "bids", "lab/p/sub-01", "--out", str(remote))
    assert tree(remote) == tree(local)
    dry = client.ok("export", "bids", "lab/p", "--dry-run", "--json").json()
    assert "sub-02/anat/sub-02_T1w.nii" in dry["written"] and dry["out"] is None
    res = client.run("export", "bids", "lab/q", "--out", str(tmp_path / "q"))
    assert res.code == 4 and not (tmp_path / "q").exists()
    res = client.run("export", "bids", "lab/p")
    assert res.code == 5 and "--out" in res.err
