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
from typing import Any

import pytest

from tests.conftest import REPO, CliEnv


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
    (tmp_path / "serve.pid").write_text(str(proc.pid))
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
    # server-side admin commands are refused with a key, with a hint
    res = client.run("db", "upgrade")
    assert res.code == 4 and "does not run through the API" in res.err and "hint: " in res.err


def _post(key: str, path: str, body: bytes, ctype: str = "application/json") -> tuple[int, Any]:
    """A raw request with the key, as a hostile client would send it."""
    import json
    import urllib.error

    from hpcgear.auth.keytext import parse_key

    k = parse_key(key)
    req = urllib.request.Request(k.base_url + path, data=body, method="POST", headers={
        "Authorization": f"scitran-user {k.secret}", "Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _tar(members: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """A tar of (name, content, symlink target) members."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def test_every_kind_of_command_through_a_real_server(
    server_and_client: tuple[CliEnv, CliEnv, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a key and no database config: forwarded commands that read the client's files
    (staged), write the client's files (streamed back), client-side upload/download,
    local commands and refused ones; always as the key's owner; and the server never
    reads or writes a path a client names."""
    import json
    import tarfile

    from tests.unit.test_bids import check_bids, make_bids

    server, client, key = server_and_client
    assert "database_url" not in client.config.read_text()
    monkeypatch.setenv("USER", "root")  # the OS/env identity counts for nothing with a key
    monkeypatch.setenv("LOGNAME", "root")
    assert client.ok("whoami", "--json").json()["user"] == "alice"
    # forwarded, reading a directory of the client: `ingest bids DIR` (staged as a tar)
    src = make_bids(tmp_path / "client-ds")
    res = client.ok("ingest", "bids", str(src), "--group", "lab", "--project", "p", "--json")
    paths = {f["path"] for f in res.json()["files"]}
    assert "lab/p/participants.tsv" in paths
    row = next(f for f in server.ok("ls", "lab/p", "--json").json()
               if f.get("name") == "participants.tsv")
    assert row["origin"]["id"] == "alice"  # the key's owner, not root, not the server's user
    # forwarded, writing a directory of the client: `export bids --out DIR` (streamed back)
    dest = tmp_path / "client-export"
    res = client.ok("export", "bids", "lab/p", "--out", str(dest), "--json")
    assert "sub-01/func/sub-01_task-rest_events.tsv" in res.json()["written"]
    check_bids(dest)
    assert (dest / "participants.tsv").read_text().startswith("participant_id")
    res = client.ok("export", "bids", "lab/p", "--out", str(dest))  # into an existing dir
    assert str(dest) in res.err and "api-transfers" not in res.err + res.out
    # forwarded, writing a file of the client: `view ... --out FILE`
    table = tmp_path / "table.csv"
    client.ok("view", "lab/p", "--columns", "subject.label", "--out", str(table))
    assert table.read_text().splitlines()[0] == "subject.label"
    # client-side: upload a directory (staged), download a tree (--out) and a tar, streamed
    up = tmp_path / "updir"
    (up / "inner").mkdir(parents=True)
    (up / "a.txt").write_text("A\n")
    (up / "inner" / "b.txt").write_text("B\n")
    client.ok("upload", "lab/p/s9/ses9/acq9", str(up))
    got = tmp_path / "got"
    res = client.ok("download", "lab/p/s9", "-r", "--out", str(got), "--json").json()
    files = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
    assert files and all(f.startswith("lab/p/s9/ses9/acq9/") for f in files), files
    assert res["written"] == len(files) == 2
    assert (got / "lab/p/s9/ses9/acq9").exists()
    again = client.ok("download", "lab/p/s9", "-r", "--out", str(got), "--json").json()
    assert again["written"] == 0 and again["skipped"] == len(files)  # resumable
    tgz = tmp_path / "s9.tgz"
    client.ok("download", "lab/p/s9", "-r", "--tar", str(tgz))
    with tarfile.open(tgz) as t:
        assert sorted(t.getnames()) == files
    # local, no database: checking a manifest on the client
    man = REPO / "containers" / "test-gear" / "manifest.json"
    assert "valid" in client.ok("gear", "validate", str(man)).out
    # refused: server-side admin commands, with a hint
    for argv in (["controller", "once"], ["db", "upgrade"], ["serve"], ["site", "add", str(man)]):
        res = client.run(*argv)
        assert res.code == 4 and res.err.startswith("error: ") and "\nhint: " in res.err, argv
    # --as: only for site admins, whatever the client's environment says
    res = client.run("--as", "root", "tag", "add", "lab/p/s9", "x")
    assert res.code == 4 and "site-admin" in res.err
    # ---- hostile clients: the server reads and writes no path a client names
    db_file = str(server.config.parent)  # the server's own config dir (and its DB, on SQLite)
    victim = tmp_path / "server-side-victim"
    for argv in (
        ["ingest", "bids", "/etc", "--group", "lab", "--project", "p"],
        ["rule", "apply", "/etc/shadow"],
        ["deid", "attach", "lab/p", "/etc/passwd"],
        ["gear", "install", db_file],
        ["gear", "install", "@hpcgear-stage:x", "--image", "/etc/shadow"],
        ["export", "bids", "lab/p", "--out", str(victim)],
        ["export", "bids", "lab/p", f"--out={victim}"],
        ["view", "lab/p", "--columns", "subject.label", "--out", str(victim)],
        ["report", "lab/p", "--html", str(victim)],
        ["provenance", "export", "x", "--format", "prov-json", "-o", str(victim)],
        ["download", "lab/p/s9", "-r", "--out", str(victim)],
        ["download", "lab/p/s9", "-r", "--tar", "-"],
        ["upload", "lab/p/s9", "/etc/passwd"],
        ["--config", str(server.config), "ls"],
        ["controller", "once"],
    ):
        code, body = _post(key, "/api/hpcgear/cli", json.dumps({"argv": argv}).encode())
        assert code in (403, 404, 422), (argv, code, body)
        assert set(body) == {"status", "message", "hint"} and body["hint"], body
        assert not victim.exists(), argv
    # another user's staged upload is not reachable; a tar escaping its dir is refused
    code, body = _post(key, "/api/hpcgear/stage", _tar([("f.txt", b"x", None)]),
                       "application/x-tar")
    assert code == 200
    token = body["stage"]
    from hpcgear.auth.keytext import parse_key

    server.ok("user", "add", "bob")
    bob = server.ok("user", "key", "create", "--user", "bob", "--url",
                    parse_key(key).base_url, "--json").json()["key"]
    code, body = _post(bob, "/api/hpcgear/cli", json.dumps(
        {"argv": ["rule", "apply", "@hpcgear-stage:" + token, "--dry-run"]}).encode())
    assert code == 404, body  # alice's staged file is alice's
    for bad in ([("../escape.txt", b"x", None)], [("/abs.txt", b"x", None)],
                [("d", None, "/etc/shadow")], [("a", b"1", None), ("b", b"2", None)]):
        code, body = _post(key, "/api/hpcgear/stage", _tar(bad), "application/x-tar")
        assert code == 422 and body["hint"], (bad, body)
    assert not (tmp_path / "escape.txt").exists()
    code, body = _post(key, "/api/hpcgear/cli", json.dumps(
        {"argv": ["rule", "apply", "@hpcgear-stage:" + "A" * 32]}).encode())
    assert code == 404, body
    # the staged file is used once, by its owner only
    code, body = _post(key, "/api/hpcgear/cli", json.dumps(
        {"argv": ["rule", "apply", "@hpcgear-stage:" + token, "--dry-run"]}).encode())
    assert code == 200 and body["code"] != 0 and "api-transfers" not in body["stderr"], body
    code, body = _post(key, "/api/hpcgear/cli", json.dumps(
        {"argv": ["rule", "apply", "@hpcgear-stage:" + token]}).encode())
    assert code == 404, body


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_uploads_stream_through_a_real_server_in_bounded_memory(
    server_and_client: tuple[CliEnv, CliEnv, str], tmp_path: Path
) -> None:
    """160 MiB through each upload route of a real `hpcgear serve`: the server's peak RSS
    grows by far less than the file (bodies are spooled to disk and stored by chunks)."""
    from hpcgear.cli.client import ApiClient

    server, client, key = server_and_client
    pid = int((tmp_path / "serve.pid").read_text())
    size = 160 << 20
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        for i in range(size >> 20):
            fh.write(bytes([i % 251]) * (1 << 20))
    (tmp_path / "bigdir").mkdir()
    os.link(big, tmp_path / "bigdir" / "big2.bin")
    api = ApiClient(key)
    with api._request("GET", "/api/users/self"):
        pass
    base = _peak_rss(pid)
    client.ok("upload", "lab/p/s1/ses1/acq1", str(big))  # /api/hpcgear/upload (multipart)
    client.ok("upload", "lab/p/s1/ses1/acq2", str(tmp_path / "bigdir"))  # /stage (a tar)
    acq = server.ok("ls", "lab/p/s1/ses1", "--json").json()
    acq_id = next(c["id"] for c in acq if c.get("label") == "acq1")
    api.upload("", [big], url=f"/api/acquisitions/{acq_id}/files")  # the Flywheel route
    grown = _peak_rss(pid) - base
    assert grown < size // 2, f"the server's peak RSS grew {grown >> 20} MiB"
    rows = server.ok("ls", "lab/p/s1/ses1/acq2", "--json").json()
    assert any(r.get("name") == "big2.bin" and r.get("size") == size for r in rows), rows


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
    client.ok("download", "lab/p", "-r", "--tar", str(tmp_path / "x.tar"))
    import tarfile

    with tarfile.open(tmp_path / "x.tar") as tf:
        assert "lab/p/s1/b.txt" in tf.getnames()
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


def test_job_logs_follow_reads_from_the_client_and_holds_no_server_thread(
    server_and_client: tuple[CliEnv, CliEnv, str], tmp_path: Path
) -> None:
    """`job logs -f` with a key polls GET /api/jobs/{id}/logs (one short request per
    read) until the job ends; the server refuses to run the follow itself."""
    import threading

    from hpcgear.cli.client import ApiClient
    from hpcgear.errors import InvalidInputError

    server, client, key = server_and_client
    sif = tmp_path / "fake.sif"
    sif.write_bytes(b"fake sif")
    server.ok("gear", "install", str(REPO / "containers" / "test-gear"), "--image", str(sif))
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"scan")
    client.ok("upload", "lab/p/s1/ses1", str(scan))
    jid = client.ok("run", "test-gear", "--dest", "lab/p/s1/ses1", "--input",
                    "input_file=lab/p/s1/ses1/scan.nii.gz", "--json").json()["id"]
    api = ApiClient(key)
    doc = api.get_json(f"/api/jobs/{jid}/logs")
    assert doc["state"] == "pending" and doc["logs"][0]["fd"] == 1
    assert doc["logs"][0]["msg"].startswith(f"(job {jid} has not started")
    # the server does not follow (it would answer only when the job ends)
    for argv in (["job", "logs", jid, "-f"], ["job", "logs", "--follow", jid]):
        with pytest.raises(InvalidInputError, match="not run on the server"):
            api.post_json("/api/hpcgear/cli", {"argv": argv})
    assert api.post_json("/api/hpcgear/cli", {"argv": ["job", "logs", jid]})["code"] == 0
    # someone cancels the job while the client follows it
    cancel = [sys.executable, "-m", "hpcgear", "--config", str(server.config),
              "job", "cancel", jid]
    timer = threading.Timer(1.5, lambda: subprocess.run(cancel, check=True,
                                                        capture_output=True))
    timer.start()
    try:
        t0 = time.monotonic()
        res = client.ok("job", "logs", jid, "-f", "--interval", "0.2")
    finally:
        timer.join()
    assert time.monotonic() - t0 >= 1.0  # it waited for the job to end
    assert f"job {jid} is cancelled" in res.err
    assert "has not started" not in res.out  # the placeholder is not log text
    bad = client.run("job", "logs", jid, "-f", "--interval", "0")
    assert bad.code != 0 and "interval" in (bad.err + bad.out).lower()
