"""The rule and rules commands through the real CLI (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CliEnv
from tests.unit.rules_support import GEARS, RULES_DATA
from tests.unit.test_cli_core import assert_one_clear_error, db_snapshot


@pytest.fixture
def env(cli_env: CliEnv, tmp_path: Path) -> CliEnv:
    e = cli_env
    sif = tmp_path / "fake.sif"
    sif.write_bytes(b"fake sif")
    for name in ("test-gear", "test-analysis", "dcm2niix", "dicom-header"):
        e.ok("gear", "install", str(GEARS[name]), "--image", str(sif))
    e.ok("group", "create", "lab")
    e.ok("project", "create", "lab/p1")
    e.ok("user", "add", "rory")
    e.ok("role", "grant", "rory", "lab/p1", "read-only")
    return e


def upload(env: CliEnv, tmp_path: Path, dest: str, name: str, data: str) -> None:
    f = tmp_path / "up" / name
    f.parent.mkdir(exist_ok=True)
    f.write_text(data)
    env.ok("upload", dest, str(f))


def test_add_list_show_disable_enable_rm(env: CliEnv, tmp_path: Path) -> None:
    out = env.ok(
        "rule", "add", "lab/p1", "--name", "conv", "--gear", "dcm2niix",
        "--when", "file.type=dicom", "--when", "file.name~\\.dicom\\.zip$",
        "--config", "compression_level=9", "--tag", "hpc", "--priority", "high", "--json",
    ).json()  # fmt: skip
    assert out["version"] == "1.0.0_1.0.20220720" and out["input"] == "dicom"
    assert out["config"] == {"compression_level": 9}  # typed from the manifest
    assert out["when"] == "all(file.type equals 'dicom', file.name regex '\\\\.dicom\\\\.zip$')"
    listed = env.ok("rule", "list", "--json").json()
    assert [(r["project"], r["name"], r["enabled"]) for r in listed] == [("lab/p1", "conv", True)]
    assert "conv" in env.ok("rule", "list", "lab/p1").out
    shown = env.ok("rule", "show", "lab/p1/conv").out
    assert "gear: dcm2niix@1.0.0_1.0.20220720" in shown and "file.type: dicom" in shown
    # What `rule show` prints applies back unchanged.
    dump = tmp_path / "dump.yaml"
    dump.write_text(shown)
    assert env.ok("rule", "apply", str(dump)).out.strip() == "lab/p1/conv: unchanged"
    env.ok("rule", "disable", "lab/p1/conv")
    assert env.ok("rule", "show", "lab/p1/conv", "--json").json()["enabled"] is False
    env.ok("rule", "enable", "lab/p1/conv")
    res = env.run("rule", "add", "lab/p1", "--name", "conv", "--gear", "dcm2niix",
                  "--when", "file.type=dicom")  # fmt: skip
    assert_one_clear_error(res, "already has a rule 'conv'")
    env.ok("rule", "rm", "lab/p1/conv")
    assert env.ok("rule", "list", "--json").json() == []
    assert_one_clear_error(env.run("rule", "show", "lab/p1/conv"), "has no rule 'conv'")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--when", "file.tyep=dicom"], "unknown field 'file.tyep'"),
        (["--when", "file.type"], "is not FIELD=VALUE"),
        (["--config", "compression_level=eleven"], "compression_level"),
        (["--config", "nope=1"], "unknown config key 'nope'"),
        (["--input", "t1"], "has no input 't1'"),
        (["--tag", "bad tag"], "tag"),
        (["--retries", "2"], "session rules"),
        ([], "has no `when` conditions"),
        (["--gear", "dcm2niix@0.1"], "not installed"),
    ],
)
def test_add_refuses_bad_rules_with_one_clear_error(
    env: CliEnv, args: list[str], needle: str
) -> None:
    before = db_snapshot(env)
    gear = [] if "--gear" in args else ["--gear", "dcm2niix"]
    when = [] if "--when" in args or "when" in needle else ["--when", "file.type=dicom"]
    res = env.run("rule", "add", "lab/p1", "--name", "r", *gear, *when, *args)
    assert_one_clear_error(res, needle)
    assert db_snapshot(env) == before


def test_roles(env: CliEnv, tmp_path: Path) -> None:
    env.ok("rule", "apply", str(RULES_DATA / "imaging-pipeline.yaml"))
    upload(env, tmp_path, "lab/p1/s1/ses1/T1", "a.dicom.zip", "a")
    ro = ("--as", "rory")
    assert len(env.ok(*ro, "rule", "list", "--json").json()) == 3
    env.ok(*ro, "rule", "show", "lab/p1/classify-dicom")
    env.ok(*ro, "rule", "test", "lab/p1/classify-dicom", "lab/p1/s1/ses1/T1/a.dicom.zip")
    before = db_snapshot(env)
    for argv in (
        ["rule", "disable", "lab/p1/classify-dicom"],
        ["rule", "rm", "lab/p1/classify-dicom"],
        ["rule", "apply", str(RULES_DATA / "imaging-pipeline.yaml")],
        ["rule", "add", "lab/p1", "--name", "x", "--gear", "dcm2niix", "--when", "file.type=x"],
        ["rules", "evaluate"],
    ):
        res = env.run(*ro, *argv)
        assert res.code == 4, (argv, res.err)
        assert_one_clear_error(res, "needs the")
    assert db_snapshot(env) == before


def test_apply_is_idempotent_and_updates(env: CliEnv, tmp_path: Path) -> None:
    path = RULES_DATA / "imaging-pipeline.yaml"
    first = env.ok("rule", "apply", str(path), "--json").json()
    assert [r["action"] for r in first["rules"]] == ["created"] * 3
    before = db_snapshot(env)
    again = env.ok("rule", "apply", str(path)).out.splitlines()
    assert again == [
        "lab/p1/classify-dicom: unchanged",
        "lab/p1/convert-structural: unchanged",
        "lab/p1/qc-on-cluster: unchanged",
    ]
    assert db_snapshot(env) == before
    changed = tmp_path / "changed.yaml"
    changed.write_text(path.read_text().replace("retries: 2", "retries: 3"))
    dry = env.ok("rule", "apply", str(changed), "--dry-run").out
    assert "lab/p1/qc-on-cluster: would be updated" in dry and db_snapshot(env) == before
    out = env.ok("rule", "apply", str(changed)).out
    assert "lab/p1/qc-on-cluster: updated" in out and "classify-dicom: unchanged" in out
    assert env.ok("rule", "show", "lab/p1/qc-on-cluster", "--json").json()["retries"] == 3
    # `rule show` prints YAML that applies back unchanged, for every kind of rule.
    for name in ("classify-dicom", "convert-structural", "qc-on-cluster"):
        dump = tmp_path / f"{name}.yaml"
        dump.write_text(env.ok("rule", "show", f"lab/p1/{name}").out)
        assert env.ok("rule", "apply", str(dump)).out.strip() == f"lab/p1/{name}: unchanged"


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("unknown-key.yaml", "unknown-key.yaml:7: rules[0].priorty: unknown key 'priorty'"),
        (
            "bad-condition.yaml",
            "bad-condition.yaml:8: rules[0].when.any[1].file.clasification.Intent: unknown field",
        ),
    ],
)
def test_apply_errors_name_file_line_and_valid_keys(env: CliEnv, name: str, needle: str) -> None:
    before = db_snapshot(env)
    res = env.run("rule", "apply", str(RULES_DATA / name))
    assert_one_clear_error(res, needle)
    if name == "unknown-key.yaml":
        assert "valid keys here: after, auto_update, config" in res.err
        assert "priority" in res.err
    assert db_snapshot(env) == before


def test_apply_is_all_or_nothing(env: CliEnv, tmp_path: Path) -> None:
    text = (RULES_DATA / "imaging-pipeline.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("gears: [dcm2niix, dicom-header]", "gears: [dcm2niix, nope]"))
    before = db_snapshot(env)
    assert_one_clear_error(env.run("rule", "apply", str(bad)), "'nope' is not installed")
    assert db_snapshot(env) == before


def test_test_and_evaluate(env: CliEnv, tmp_path: Path) -> None:
    env.ok("rule", "apply", str(RULES_DATA / "imaging-pipeline.yaml"))
    upload(env, tmp_path, "lab/p1/s1/ses1/T1", "a.dicom.zip", "a")
    out = env.ok("rule", "test", "lab/p1/convert-structural", "lab/p1/s1/ses1/T1/a.dicom.zip").out
    assert "[FAIL] file.classification.Intent contains 'Structural'" in out
    assert out.strip().endswith("would NOT fire on lab/p1/s1/ses1/T1/a.dicom.zip")
    out = env.ok("rule", "test", "lab/p1/classify-dicom", "lab/p1/s1/ses1/T1/a.dicom.zip").out
    assert "WOULD fire" in out
    js = env.ok("rule", "test", "lab/p1/qc-on-cluster", "lab/p1/s1/ses1", "--json").json()
    assert js["would_fire"] is False
    assert js["explanation"]["children"][1]["condition"] == "all prerequisites completed"
    res = env.run("rule", "test", "lab/p1/qc-on-cluster", "lab/p1/s1/ses1/T1/a.dicom.zip")
    assert_one_clear_error(res, "rule qc-on-cluster is a session rule; path")
    dry = env.ok("rules", "evaluate", "--dry-run", "--json").json()
    assert dry["jobs_created"] == 1 and dry["jobs"][0]["id"] is None
    out = env.ok("rules", "evaluate").out
    assert out.startswith("read 1 change(s)") and "created 1 job(s)" in out
    assert "rule classify-dicom: dicom-header@1.0.0 on lab/p1/s1/ses1/T1" in out
    again = env.ok("rules", "evaluate", "--json").json()
    assert again["changes_read"] == 0 and again["jobs_created"] == 0
    jobs = env.ok("jobs", "--json").json()
    assert len(jobs) == 1 and jobs[0]["origin"]["type"] == "rule"
    status = env.ok("rules", "status", "--json").json()
    assert status["enabled_rules"] == 3
    assert status["feeds"]["change_log"]["waiting"] == 0
    back = env.ok("rules", "evaluate", "--since", "1h", "--json").json()
    assert back["backfill_since"] and back["changes_read"] == 1 and back["jobs_created"] == 0
    assert_one_clear_error(env.run("rules", "evaluate", "--since", "soon"), "--since")
