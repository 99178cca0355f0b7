"""Job creation, dry runs, batch, cancel and retry through the CLI (SQLite + PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliEnv
from tests.unit.test_cli_core import assert_one_clear_error, db_snapshot

REPO = Path(__file__).resolve().parents[2]
TEST_GEAR = REPO / "containers" / "test-gear"


@pytest.fixture
def gear_env(cli_env: CliEnv, tmp_path: Path) -> CliEnv:
    env = cli_env
    sif = tmp_path / "fake.sif"
    sif.write_bytes(b"not really a SIF, but content-addressed all the same")
    env.ok("gear", "install", str(TEST_GEAR), "--image", str(sif))
    env.ok("group", "create", "lab")
    env.ok("project", "create", "lab/p1")
    for sub in ("s1", "s2", "s3"):
        f = tmp_path / f"{sub}.nii.gz"
        f.write_bytes(sub.encode() * 10)
        if sub != "s3":  # s3 lacks the input
            env.ok("upload", f"lab/p1/{sub}/ses1", str(f))
        else:
            other = tmp_path / "other.txt"
            other.write_text("not an input")
            env.ok("upload", f"lab/p1/{sub}/ses1", str(other))
    return env


def test_run_creates_pinned_job(gear_env: CliEnv) -> None:
    env = gear_env
    out = env.ok(
        "run",
        "test-gear",
        "--dest",
        "lab/p1/s1/ses1",
        "--input",
        "input_file=lab/p1/s1/ses1/s1.nii.gz",
        "--config",
        "num_files=3",
        "--config",
        "sleep_seconds=0.5",
        "--json",
    ).json()
    job = env.ok("job", "show", out["id"], "--json").json()
    assert job["state"] == "pending" and job["gear"] == "test-gear@1.0.0"
    assert job["config"]["num_files"] == 3 and job["config"]["sleep_seconds"] == 0.5
    assert job["inputs"][0]["version"] == 1 and job["inputs"][0]["sha256"].startswith("sha256:")
    assert job["site"] == "local"
    assert [e["kind"] for e in job["events"]] == ["created"]
    listed = env.ok("jobs", "--json").json()
    assert [j["id"] for j in listed] == [out["id"]]


def test_dry_run_prints_script_and_changes_nothing(gear_env: CliEnv) -> None:
    env = gear_env
    before = db_snapshot(env)
    res = env.ok(
        "run",
        "test-gear",
        "--dest",
        "lab/p1/s1/ses1",
        "--input",
        "input_file=lab/p1/s1/ses1/s1.nii.gz",
        "--tag",
        "cpu=2",
        "--dry-run",
    )
    assert "#SBATCH --cpus-per-task=2" in res.out
    assert "--containall" in res.out and "cpus" in res.out
    assert db_snapshot(env) == before


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--config", "num_files=5000"], "num_files"),
        (["--config", "nope=1"], "nope"),
        (["--config", "file_format=xml"], "file_format"),
        (["--input", "wrong=lab/p1/s1/ses1/s1.nii.gz"], "no input"),
        (["--input", "input_file=lab/p1/s1/ses1/missing"], "no file"),
        (["--tag", "bad tag;rm"], "tag"),
        (["--tag", "time=forever"], "time"),
    ],
)
def test_run_bad_input(gear_env: CliEnv, argv: list[str], needle: str) -> None:
    before = db_snapshot(gear_env)
    res = gear_env.run("run", "test-gear", "--dest", "lab/p1/s1/ses1", *argv)
    assert_one_clear_error(res, needle)
    assert db_snapshot(gear_env) == before


def test_run_needs_read_write(gear_env: CliEnv) -> None:
    gear_env.ok("user", "add", "ro")
    gear_env.ok("role", "grant", "ro", "lab/p1", "read-only")
    res = gear_env.run("--as", "ro", "run", "test-gear", "--dest", "lab/p1/s1/ses1")
    assert res.code == 4 and "read-write" in res.err


def test_batch_skips_containers_without_inputs(gear_env: CliEnv) -> None:
    env = gear_env
    dry = env.ok(
        "batch",
        "test-gear",
        "--over",
        "lab/p1/*/*",
        "--input",
        r"input_file=^s[12]\.nii\.gz$",
        "--dry-run",
        "--json",
    ).json()
    assert len(dry["jobs"]) == 2 and len(dry["skipped"]) == 1
    assert "s3" in dry["skipped"][0]["destination"]
    assert env.ok("jobs", "--json").json() == []
    real = env.ok(
        "batch",
        "test-gear",
        "--over",
        "lab/p1/*/*",
        "--input",
        r"input_file=^s[12]\.nii\.gz$",
        "--json",
    ).json()
    assert all(j["id"] for j in real["jobs"])
    assert len(env.ok("jobs", "--json").json()) == 2


def test_cancel_and_retry_make_linked_attempts(gear_env: CliEnv) -> None:
    env = gear_env
    jid = env.ok("run", "test-gear", "--dest", "lab/p1/s1/ses1", "--json").json()["id"]
    assert_one_clear_error(env.run("job", "retry", jid), "pending")
    env.ok("job", "cancel", jid)
    assert_one_clear_error(env.run("job", "cancel", jid), "already cancelled")
    out = env.ok("job", "retry", jid).out
    new_id = out.split()[1].rstrip(":")
    new = env.ok("job", "show", new_id, "--json").json()
    assert new["attempt"] == 2 and new["previous_id"] == jid and new["state"] == "pending"
    old = env.ok("job", "show", jid, "--json").json()
    assert old["state"] == "cancelled" and old["failure_kind"] == "cancelled"
    assert_one_clear_error(env.run("job", "retry", jid), "already retried")


def test_gear_install_versions(gear_env: CliEnv, tmp_path: Path) -> None:
    env = gear_env
    # identical manifest again: a no-op
    assert "already installed" in env.ok("gear", "install", str(TEST_GEAR)).out
    # same name@version with a different manifest: refused
    m = json.loads((TEST_GEAR / "manifest.json").read_text())
    m["description"] = "changed"
    (tmp_path / "m.json").write_text(json.dumps(m))
    assert_one_clear_error(
        env.run("gear", "install", str(tmp_path / "m.json")), "different manifest"
    )
    m["version"] = "1.0.1"
    (tmp_path / "m.json").write_text(json.dumps(m))
    env.ok("gear", "install", str(tmp_path / "m.json"))
    assert env.ok("gear", "show", "test-gear", "--json").json()["version"] == "1.0.1"
    env.ok("gear", "disable", "test-gear@1.0.1")
    assert env.ok("gear", "show", "test-gear@1.0.0", "--json").json()["version"] == "1.0.0"
    res = env.run("run", "test-gear@1.0.1", "--dest", "lab/p1/s1/ses1")
    assert_one_clear_error(res, "disabled")
    versions = [
        g["version"] for g in env.ok("gear", "list", "--json").json() if g["name"] == "test-gear"
    ]
    assert versions == ["1.0.0", "1.0.1"]
    env.ok("user", "add", "bob")
    assert env.run("--as", "bob", "gear", "install", str(TEST_GEAR)).code == 4


def test_jobs_listing_shows_only_visible_jobs_newest_first(gear_env: CliEnv) -> None:
    """Visibility is filtered in SQL, so --limit counts the jobs a user may see."""
    env = gear_env
    env.ok("group", "create", "other")
    env.ok("project", "create", "other/q")
    env.ok("upload", "other/q/s/ses", str(Path(__file__)))
    mine = [env.ok("run", "test-gear", "--dest", f"lab/p1/{s}/ses1", "--json").json()["id"]
            for s in ("s1", "s2")]  # fmt: skip
    hidden = env.ok("run", "test-gear", "--dest", "other/q/s/ses", "--json").json()["id"]
    listed = [j["id"] for j in env.ok("jobs", "--json").json()]
    assert listed == [hidden, *reversed(mine)], "site admin sees all, newest first"
    env.ok("user", "add", "reader")
    env.ok("role", "grant", "reader", "lab", "read-only")
    seen = env.ok("--as", "reader", "jobs", "--json").json()
    assert [j["id"] for j in seen] == list(reversed(mine))
    assert seen[0]["destination"] == "lab/p1/s2/ses1" and seen[0]["gear"] == "test-gear@1.0.0"
    one = env.ok("--as", "reader", "jobs", "--limit", "1", "--json").json()
    assert [j["id"] for j in one] == [mine[1]], "the limit counts visible jobs"
    env.ok("role", "grant", "reader", "other/q", "read-only")
    assert len(env.ok("--as", "reader", "jobs", "--json").json()) == 3


def _complete(env: CliEnv, job_id: str) -> None:
    """What the controller does when a job finishes (its steps are tested elsewhere)."""
    from sqlalchemy import update

    from hpcgear.config.settings import load_settings
    from hpcgear.db.models import Job
    from hpcgear.db.session import create_db_engine

    engine = create_db_engine(load_settings(env.config).database_url)
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(state="complete"))
    engine.dispose()


def test_batch_per_file_type_filter_and_skip_completed(gear_env: CliEnv, tmp_path: Path) -> None:
    env = gear_env
    extra = tmp_path / "s1b.nii.gz"
    extra.write_bytes(b"second image")
    env.ok("upload", "lab/p1/s1/ses1", str(extra))
    argv = ["batch", "test-gear", "--over", "lab/p1/*/*", "--input", "input_file=.*",
            "--type", "nifti", "--per-file"]
    dry = env.ok(*argv, "--dry-run", "--json").json()
    got = sorted((j["destination"], j["inputs"]["input_file"]) for j in dry["jobs"])
    assert got == [("lab/p1/s1/ses1", "s1.nii.gz"), ("lab/p1/s1/ses1", "s1b.nii.gz"),
                   ("lab/p1/s2/ses1", "s2.nii.gz")]
    # s3 has only a text file: the type filter leaves nothing, and it is named
    assert [s["destination"] for s in dry["skipped"]] == ["lab/p1/s3/ses1"]
    assert "of type nifti" in dry["skipped"][0]["reason"]
    real = env.ok(*argv, "--json").json()
    first = next(j for j in real["jobs"] if j["inputs"]["input_file"] == "s1.nii.gz")
    _complete(env, first["id"])
    again = env.ok(*argv, "--skip-completed", "--json").json()
    assert len(again["jobs"]) == 2
    [done] = [s for s in again["skipped"] if "already completed" in s["reason"]]
    assert done["destination"] == "lab/p1/s1/ses1/s1.nii.gz"
    assert first["id"] in done["reason"]
    # another config is not the same run: nothing is skipped for completion
    other = env.ok(*argv, "--skip-completed", "--config", "num_files=3", "--dry-run",
                   "--json").json()
    assert len(other["jobs"]) == 3
    # per container (no --per-file): the container with a completed job is skipped
    single = ["batch", "test-gear", "--over", "lab/p1/s2/*", "--input",
              r"input_file=^s2\.nii\.gz$"]
    jid = env.ok(*single, "--json").json()["jobs"][0]["id"]
    _complete(env, jid)
    res = env.ok(*single, "--skip-completed")
    assert "created 0 job(s), skipped 1 container(s)" in res.out
    assert f"skipped lab/p1/s2/ses1: already completed by job {jid}" in res.out
    res = env.run("batch", "test-gear", "--over", "lab/p1/*/*", "--per-file")
    assert_one_clear_error(res, "--per-file needs exactly one --input")
