"""The CLI core through the real entry point, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from tests.conftest import CliEnv, CliResult


def db_snapshot(env: CliEnv) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to prove a refused command changed nothing."""
    from hpcgear.config.settings import load_settings
    from hpcgear.db.session import create_db_engine

    engine = create_db_engine(load_settings(env.config).database_url)
    md = MetaData()
    md.reflect(engine)
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name, table in sorted(md.tables.items()):
            rows = conn.execute(select(table)).all()
            out[name] = sorted(tuple(map(repr, r)) for r in rows)
    engine.dispose()
    return out


def assert_one_clear_error(res: CliResult, needle: str) -> None:
    assert res.code != 0, res.out
    lines = res.err.strip().splitlines()
    assert lines[0].startswith("error: "), res.err
    assert needle.lower() in lines[0].lower(), res.err
    assert len(lines) == 2 and lines[1].startswith("hint: "), res.err
    assert "Traceback" not in res.err


@pytest.fixture
def populated(cli_env: CliEnv, tmp_path: Path) -> CliEnv:

    cli_env.ok("group", "create", "imaging", "--label", "Imaging")
    cli_env.ok("project", "create", "imaging/study1")
    f = tmp_path / "scan.nii.gz"
    f.write_bytes(b"\x1f\x8b" + b"nifti-ish" * 100)
    cli_env.ok("upload", "imaging/study1/sub-01/ses-01/T1w", str(f))
    return cli_env


def test_init_upload_ls_download_roundtrip(populated: CliEnv, tmp_path: Path) -> None:
    env = populated
    groups = env.ok("ls", "--json").json()
    assert [g["id"] for g in groups] == ["imaging"]
    assert env.ok("ls", "imaging", "--json").json()[0]["label"] == "study1"
    acq = env.ok("ls", "imaging/study1/sub-01/ses-01/T1w", "--json").json()
    assert acq[0]["name"] == "scan.nii.gz" and acq[0]["version"] == 1
    assert acq[0]["type"] == "nifti" and acq[0]["hash"].startswith("sha256:")
    # a changed file is a new version; identical bytes change nothing
    f = tmp_path / "scan.nii.gz"
    same = env.ok("upload", "imaging/study1/sub-01/ses-01/T1w", str(f), "--json").json()
    assert same[0]["created"] is False and same[0]["version"] == 1
    f.write_bytes(b"version two")
    two = env.ok("upload", "imaging/study1/sub-01/ses-01/T1w", str(f), "--json").json()
    assert two[0]["version"] == 2
    out = tmp_path / "dl"
    env.ok(
        "download",
        "imaging/study1/sub-01/ses-01/T1w/scan.nii.gz",
        "--version",
        "1",
        "--out",
        str(out),
    )
    assert (out / "scan.nii.gz").read_bytes().startswith(b"\x1f\x8bnifti-ish")
    env.ok("download", "imaging/study1/sub-01/ses-01/T1w/scan.nii.gz", "--out", str(out))
    assert (out / "scan.nii.gz").read_bytes() == b"version two"
    res = env.run(
        "download",
        "imaging/study1/sub-01/ses-01/T1w/scan.nii.gz",
        "--version",
        "9",
        "--out",
        str(out),
    )
    assert_one_clear_error(res, "no version 9")


def test_info_and_tags(populated: CliEnv) -> None:
    env = populated
    info = env.ok(
        "info", "set", "imaging/study1", "scanner.model=prisma", "tesla=3", "--json"
    ).json()
    assert info == {"scanner": {"model": "prisma"}, "tesla": 3}
    info = env.ok("info", "set", "imaging/study1", "scanner.site=boulder", "--json").json()
    assert info["scanner"] == {"model": "prisma", "site": "boulder"}
    env.ok("tag", "add", "imaging/study1/sub-01/ses-01/T1w/scan.nii.gz", "hpc", "qc")
    files = env.ok("ls", "imaging/study1/sub-01/ses-01/T1w", "--json").json()
    assert files[0]["tags"] == ["hpc", "qc"]
    env.ok("tag", "rm", "imaging/study1/sub-01/ses-01/T1w/scan.nii.gz", "qc")
    assert_one_clear_error(env.run("tag", "rm", "imaging/study1", "missing"), "not on")
    env.ok("tag", "add", "imaging/study1/sub-01", "pilot")
    subj = env.ok("ls", "imaging/study1", "--json").json()
    assert subj[0]["tags"] == ["pilot"]


# ------------------------------------------------------------- role matrix

USERS = ("ga", "pa", "rw", "ro", "nobody")
MUTATIONS: dict[str, tuple[list[str], set[str]]] = {
    # command -> (argv, users allowed besides the site admin)
    "user add": (["user", "add", "newbie"], set()),
    "group create": (["group", "create", "other"], set()),
    "project create": (["project", "create", "imaging/study2"], {"ga"}),
    "role grant": (["role", "grant", "nobody", "imaging/study1", "read-only"], {"ga", "pa"}),
    "upload": (["upload", "imaging/study1/sub-02", "@FILE@"], {"ga", "pa", "rw"}),
    "info set": (["info", "set", "imaging/study1/sub-01", "k=v"], {"ga", "pa", "rw"}),
    "tag add": (["tag", "add", "imaging/study1/sub-01", "t1"], {"ga", "pa", "rw"}),
    "tag rm": (["tag", "rm", "imaging/study1/sub-01", "keep"], {"ga", "pa", "rw"}),
}


@pytest.fixture
def roles(populated: CliEnv) -> CliEnv:
    env = populated
    for u in USERS:
        env.ok("user", "add", u)
    env.ok("role", "grant", "ga", "imaging", "admin")
    env.ok("role", "grant", "pa", "imaging/study1", "admin")
    env.ok("role", "grant", "rw", "imaging/study1", "read-write")
    env.ok("role", "grant", "ro", "imaging/study1", "read-only")
    env.ok("tag", "add", "imaging/study1/sub-01", "keep")
    return env


@pytest.mark.parametrize("command", sorted(MUTATIONS))
def test_role_matrix(roles: CliEnv, command: str, tmp_path: Path) -> None:
    argv, allowed = MUTATIONS[command]
    f = tmp_path / "new.txt"
    f.write_text("data")
    argv = [str(f) if a == "@FILE@" else a for a in argv]
    for user in USERS:
        if user in allowed:
            continue
        before = db_snapshot(roles)
        res = roles.run("--as", user, *argv)
        assert res.code == 4, f"{user} should be denied {command}: {res.code} {res.err}"
        assert_one_clear_error(res, "needs")
        assert db_snapshot(roles) == before, f"denied {command} by {user} changed the DB"
    for user in sorted(allowed):
        if command == "tag rm":
            roles.ok("tag", "add", "imaging/study1/sub-01", f"rm-{user}")
        res = roles.run("--as", user, *_fresh(argv, user))
        assert res.code == 0, f"{user} should be allowed to {command}: {res.err}"
    if command == "tag rm":
        roles.ok("tag", "add", "imaging/study1/sub-01", "rm-admin")
    assert roles.run(*_fresh(argv, "admin")).code == 0, "the site admin may do anything"


def _fresh(argv: list[str], who: str) -> list[str]:
    """The same action on a new target, so repeating it is not a duplicate."""
    out = []
    for a in argv:
        if a in ("newbie", "other", "imaging/study2"):
            a = f"{a}-{who}" if a != "imaging/study2" else f"imaging/study2-{who}"
        elif a == "t1":
            a = f"t1-{who}"
        elif a == "keep":
            a = f"rm-{who}"
        out.append(a)
    return out


def test_read_only_users_can_read(roles: CliEnv, tmp_path: Path) -> None:
    assert roles.run("--as", "ro", "ls", "imaging/study1").code == 0
    assert (
        roles.run(
            "--as",
            "ro",
            "download",
            "imaging/study1/sub-01/ses-01/T1w/scan.nii.gz",
            "--out",
            str(tmp_path),
        ).code
        == 0
    )
    assert_one_clear_error(roles.run("--as", "nobody", "ls", "imaging/study1"), "needs")
    # a project role shows only that project in the group listing
    assert [g["id"] for g in roles.ok("--as", "ro", "ls", "--json").json()] == ["imaging"]
    assert roles.run("--as", "nobody", "ls", "--json").json() == []


def test_role_list(roles: CliEnv) -> None:
    on_project = roles.ok("role", "list", "imaging/study1", "--json").json()
    assert {(r["user"], r["role"]) for r in on_project} >= {
        ("ga", "admin"), ("pa", "admin"), ("rw", "read-write"), ("ro", "read-only")}
    mine = roles.ok("--as", "rw", "role", "list", "--json").json()
    assert mine == [{"user": "rw", "role": "read-write", "path": "imaging/study1",
                     "level": "project", "granted_by": mine[0]["granted_by"]}]
    assert_one_clear_error(roles.run("--as", "rw", "role", "list", "imaging/study1"), "needs")


def test_as_needs_site_admin(roles: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcgear.auth import identity

    monkeypatch.setattr(identity, "os_login", lambda: "rw")
    res = roles.run("--as", "ga", "ls")
    assert_one_clear_error(res, "site-admin")


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["ls", "imaging/nope"], "does not exist"),
        (["ls", "nogroup"], "does not exist"),
        (["project", "create", "imaging/study1"], "already exists"),
        (["group", "create", "imaging"], "already exists"),
        (["project", "create", "imaging/a/b"], "levels"),
        (["upload", "imaging/study1/bad\nlabel", "@FILE@"], "control"),
        (["upload", "imaging/study1/" + "x" * 10_000, "@FILE@"], "characters long"),
        (["upload", "imaging/study1/sub\x07", "@FILE@"], "control"),
        (["upload", "imaging/study1/sub-09", "/definitely/missing.dcm"], "does not exist"),
        (["upload", "imaging/nope/sub-01", "@FILE@"], "does not exist"),
        (["group", "create", "Bad Group"], "not valid"),
        (["role", "grant", "ghost", "imaging", "admin"], "does not exist"),
        (["info", "set", "imaging/study1", "novalue"], "key=value"),
        (["tag", "add", "imaging/study1", "a,b"], "tag"),
        (["download", "imaging/study1/nofile.txt", "--out", "/tmp"], "no file"),
        (["user", "add", "bad user"], "not valid"),
    ],
)
def test_bad_input_one_clear_error_db_unchanged(
    populated: CliEnv, tmp_path: Path, argv: list[str], needle: str
) -> None:
    f = tmp_path / "good.txt"
    f.write_text("ok")
    argv = [str(f) if a == "@FILE@" else a for a in argv]
    before = db_snapshot(populated)
    res = populated.run(*argv)
    assert_one_clear_error(res, needle)
    assert db_snapshot(populated) == before


def test_upload_with_one_missing_file_stores_nothing(populated: CliEnv, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("ok")
    before = db_snapshot(populated)
    res = populated.run("upload", "imaging/study1/sub-03", str(good), str(tmp_path / "missing"))
    assert_one_clear_error(res, "does not exist")
    assert db_snapshot(populated) == before


def test_upload_directory_recursively(populated: CliEnv, tmp_path: Path) -> None:
    d = tmp_path / "dir"
    (d / "a" / "deep").mkdir(parents=True)
    (d / "top.txt").write_text("top")
    (d / "a" / "one.txt").write_text("one")
    (d / "a" / "deep" / "two.txt").write_text("two")
    (d / "link.txt").symlink_to(tmp_path / "outside.txt")
    (tmp_path / "outside.txt").write_text("not inside the directory")
    out = populated.ok("upload", "imaging/study1/sub-02/ses-01/dir", str(d), "--json").json()
    assert sorted(r["name"] for r in out) == ["one.txt", "top.txt", "two.txt"]
    assert all(r["created"] and r["version"] == 1 for r in out)
    again = populated.ok("upload", "imaging/study1/sub-02/ses-01/dir", str(d), "--json").json()
    assert not any(r["created"] for r in again), "identical bytes change nothing"
    (d / "a" / "one.txt").write_text("one, changed")
    third = populated.ok("upload", "imaging/study1/sub-02/ses-01/dir", str(d), "--json").json()
    assert {r["name"]: r["version"] for r in third} == {"one.txt": 2, "top.txt": 1, "two.txt": 1}
    (d / "a" / "top.txt").write_text("a second top.txt")
    before = db_snapshot(populated)
    res = populated.run("upload", "imaging/study1/sub-02/ses-01/dir", str(d))
    assert_one_clear_error(res, "two files named 'top.txt'")
    assert db_snapshot(populated) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_clear_error(populated.run("upload", "imaging/study1/x", str(empty)), "no files")


def test_db_url_that_does_not_connect(tmp_path: Path) -> None:
    env = CliEnv(home=tmp_path, config=tmp_path / "c.yaml")
    res = env.run("init", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert_one_clear_error(res, "cannot connect")
    assert not env.config.exists(), "a failed init must not write a config"
    res = env.run("init", "--db", "not a url")
    assert_one_clear_error(res, "not a valid")
    (tmp_path / "bad.yaml").write_text("database_url: sqlite:////nonexistent/dir/x.db\n")
    res = CliEnv(home=tmp_path, config=tmp_path / "bad.yaml").run("ls")
    assert_one_clear_error(res, "does not exist")


def test_config_unknown_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("database_url: sqlite:///x.db\nstorage: /tmp\n")
    res = CliEnv(home=tmp_path, config=cfg).run("ls")
    assert_one_clear_error(res, "unknown setting")
    assert "storage_root" in res.err


def test_uninitialised_database(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database_url: sqlite:///{tmp_path / 'empty.db'}\n")
    res = CliEnv(home=tmp_path, config=cfg).run("ls")
    assert_one_clear_error(res, "empty")
    assert "hpcgear init" in res.err


def test_traceback_flag_and_init_idempotent(populated: CliEnv) -> None:
    res = populated.run("init")
    assert res.code == 0 and "already registered" in res.out
    res = populated.run("--traceback", "ls", "imaging/nope")
    assert "Traceback" in res.err and res.code == 3


def test_help_is_lazy() -> None:
    """`hpcgear --help` must not import the database stack (login-node start-up)."""
    code = (
        "import sys; from hpcgear.cli.main import main; "
        "rc = main(['--help'], standalone=False); "
        "heavy = [m for m in ('sqlalchemy', 'pydicom', 'nibabel', 'paramiko', 'jinja2') "
        "if m in sys.modules]; print(rc, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"


def test_heap_frozen_only_when_the_process_exits() -> None:
    """A standalone call freezes the heap just before sys.exit (the shutdown
    collection then skips it); an in-process call (tests, embedding) does not."""
    code = (
        "import gc, sys; from hpcgear.cli.main import main; "
        "rc = main(['--help'], standalone=False); print('in-process', gc.get_freeze_count()); "
        "import atexit; atexit.register(lambda: print('at exit', gc.get_freeze_count() > 0)); "
        "main(['--help'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert "in-process 0" in lines and lines[-1] == "at exit True", out.stdout


#: Never imported by the everyday login-node commands below (python -X importtime).
HEAVY = ("pydicom", "nibabel", "numpy", "paramiko", "jinja2", "fastapi", "alembic", "mako")


@pytest.mark.parametrize(
    ("argv", "also_absent"),
    [
        (["whoami"], ("sqlalchemy.orm", "hpcgear.db.models")),  # Core only
        (["jobs"], ("hpcgear.config.site", "hpcgear.gears.manifest")),
        (["upload", "imaging/study1/sub-01/ses-01/T1w", "{file}"], ()),
    ],
)
def test_login_node_commands_import_little(
    populated: CliEnv, tmp_path: Path, argv: list[str], also_absent: tuple[str, ...]
) -> None:
    """Start-up cost: these commands run, and load none of the heavy modules."""
    f = tmp_path / "one.txt"
    f.write_text("one\n")
    args = ["--config", str(populated.config), *[a.replace("{file}", str(f)) for a in argv]]
    code = (
        "import sys; from hpcgear.cli.main import main; "
        f"rc = main({args!r}, standalone=False); "
        f"print(rc, [m for m in {HEAVY + also_absent!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=os.environ | {"HPCGEAR_LOCAL": "1"})
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr


def test_json_listings_are_valid_json(roles: CliEnv) -> None:
    for argv in (["ls", "--json"], ["user", "list", "--json"], ["db", "status", "--json"]):
        json.loads(roles.ok(*argv).out)
