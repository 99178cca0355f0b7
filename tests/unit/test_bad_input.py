"""Bad input that used to reach the wrong place (issue 11), through the real CLI.

Each case is refused with one ``error:``/``hint:`` pair, exit status INVALID (5),
and nothing stored changes; on SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcgear.cli.context import safe_text
from hpcgear.errors import InvalidInputError
from hpcgear.hierarchy.paths import HierarchyPath, check_group_id, check_login, check_tag
from hpcgear.ingest.routing import RoutingRules, route_study
from hpcgear.jobs.service import check_job_tags
from hpcgear.text import check_storable
from tests.conftest import CliEnv
from tests.unit.test_cli_core import assert_one_clear_error, db_snapshot

REPO = Path(__file__).resolve().parents[2]
TEST_GEAR = REPO / "containers" / "test-gear"
INVALID = 5


@pytest.fixture
def env(cli_env: CliEnv, tmp_path: Path) -> CliEnv:
    sif = tmp_path / "fake.sif"
    sif.write_bytes(b"fake sif")
    cli_env.ok("gear", "install", str(TEST_GEAR), "--image", str(sif))
    cli_env.ok("group", "create", "g")
    cli_env.ok("project", "create", "g/p")
    f = tmp_path / "scan.nii.gz"
    f.write_bytes(b"scan")
    cli_env.ok("upload", "g/p/s1/ses1", str(f))
    return cli_env


def refused(env: CliEnv, needle: str, *argv: str) -> None:
    before = db_snapshot(env)
    res = env.run(*argv)
    assert_one_clear_error(res, needle)
    assert res.code == INVALID, res.err
    assert db_snapshot(env) == before


# ------------------------------------------------------------------ NUL bytes


@pytest.mark.parametrize("pair", ["k=a\x00b", 'k="a\\u0000b"', 'k={"x": ["\\u0000"]}'])
def test_nul_in_info_is_refused_before_storing(env: CliEnv, pair: str) -> None:
    refused(env, "NUL", "info", "set", "g/p/s1/ses1/scan.nii.gz", pair)
    refused(env, "NUL", "info", "set", "g/p/s1", pair)


@pytest.mark.parametrize("dry", [True, False])
def test_nul_in_gear_config_is_refused_by_dry_run_and_run_alike(env: CliEnv, dry: bool) -> None:
    argv = ["run", "test-gear", "--dest", "g/p/s1/ses1", "--input",
            "input_file=g/p/s1/ses1/scan.nii.gz", "--config", "fail_message=a\x00b"]  # fmt: skip
    refused(env, "NUL", *argv, *(["--dry-run"] if dry else []))


@pytest.mark.parametrize("dry", [True, False])
def test_nul_in_rule_config_is_refused(env: CliEnv, tmp_path: Path, dry: bool) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "project: g/p\nrules:\n  - name: r\n    gear: test-gear\n"
        '    when: {file.type: nifti}\n    config: {fail_message: "a\\0b"}\n'
    )
    refused(env, "NUL", "rule", "apply", str(rules), *(["--dry-run"] if dry else []))


def test_check_storable_refuses_what_no_database_keeps() -> None:
    for bad in ("\x00", {"k\x00": 1}, [1, {"a": "\udc80"}], float("nan"), {"x": float("inf")}):
        with pytest.raises(InvalidInputError):
            check_storable(bad, "value")
    check_storable({"ok": ["tab\there", "\x1b[31m", 1.5, None, True]}, "value")


# ------------------------------------------------------------ paths and names


@pytest.mark.parametrize("path", ["g/p/s1 ", " g/p/s1", "g/p/s1/ses1\n", "g/p/ s1", "g/p/\t"])
def test_whitespace_around_a_path_level_is_an_error_not_the_parent(env: CliEnv, path: str) -> None:
    refused(env, "whitespace", "tag", "add", path, "x")
    refused(env, "whitespace", "info", "set", path, "a=1")


def test_whitespace_around_a_file_name_in_a_path(env: CliEnv) -> None:
    refused(env, "whitespace", "tag", "add", "g/p/s1/ses1/scan.nii.gz ", "x")


@pytest.mark.parametrize("name", [" ", "trailing space ", " leading", "\u202egnp.exe"])
def test_unreachable_file_names_are_refused_at_upload(
    env: CliEnv, tmp_path: Path, name: str
) -> None:
    d = tmp_path / "src"
    d.mkdir()
    (d / name).write_text("x")
    before = db_snapshot(env)
    res = env.run("upload", "g/p/s1/ses1", str(d / name))
    assert res.code == INVALID and res.err.startswith("error: file name"), res.err
    assert "Traceback" not in res.err and "\u202e" not in res.err
    assert db_snapshot(env) == before


def test_patterns_use_full_matches() -> None:
    for check, value in (
        (check_group_id, "lab\n"),
        (check_login, "alice\n"),
        (check_tag, "hpc\n"),
        (lambda v: check_job_tags([v]), "hpc\n"),
        (lambda v: HierarchyPath.parse(v), "g/p\n"),
    ):
        with pytest.raises(InvalidInputError):
            check(value)


# ---------------------------------------------- control and bidi characters


@pytest.mark.parametrize("tag", ["a\u202eb", "zero\u200bwidth", "esc\x1b[31m", "nl\nx"])
def test_control_and_bidi_in_tags_are_refused(env: CliEnv, tag: str) -> None:
    refused(env, "tag", "tag", "add", "g/p/s1", tag)


@pytest.mark.parametrize("key", ["a\u202eb", "esc\x1b[2J", "tab\tkey"])
def test_control_and_bidi_in_info_keys_are_refused(env: CliEnv, key: str) -> None:
    refused(env, "info key", "info", "set", "g/p/s1", f"{key}=1")


def test_safe_display_escapes_terminal_controls() -> None:
    shown = safe_text("a\x1b[31mred\u202eevil\u200b\x07\nz é ü 日本")
    assert shown == "a\\x1b[31mred\\u202eevil\\u200b\\x07\\nz é ü 日本"
    assert all(ch.isprintable() for ch in shown)


def test_tag_output_is_escaped_and_ls_table_too(env: CliEnv) -> None:
    # Tags are refused with controls, but what is stored already (older versions,
    # other writers) is still shown inert: write one directly and list.
    from sqlalchemy import update

    from hpcgear.config.settings import load_settings
    from hpcgear.db.models import Container
    from hpcgear.db.session import Database

    db = Database.open(load_settings(env.config).database_url)
    with db.session() as s:
        s.execute(update(Container).where(Container.label == "s1").values(tags=["\x1b]0;pwn\x07"]))
    db.dispose()
    out = env.ok("ls", "g/p").out
    assert "\x1b" not in out and "\\x1b]0;pwn\\x07" in out
    out = env.ok("tag", "add", "g/p/s1", "ok").out
    assert "\x1b" not in out and "\\x1b" in out


# --------------------------------------------------------------- YAML files


@pytest.mark.parametrize("byte", ["\x00", "\x1b", "\x7f"])
def test_nul_or_esc_in_a_yaml_file_names_the_file(env: CliEnv, tmp_path: Path, byte: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(f"name: s\nscheduler: slurm{byte}\n")
    res = env.run("site", "validate", str(site))
    # `site validate` lists every problem (file:line first), then one error/hint pair.
    assert res.code == INVALID and "internal error" not in res.err
    assert "Traceback" not in res.err
    assert res.err.startswith(f"{site}:2: ") and "control character" in res.err
    assert [ln for ln in res.err.splitlines() if ln.startswith("error: ")]
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"project: g/p\nrules:\n  - name: r{byte}\n")
    res = env.run("rule", "apply", str(rules))
    assert_one_clear_error(res, f"{rules}:3")
    cfg = env.config.read_text()
    env.config.write_text(cfg + f"# {byte}\n")
    res = env.run("ls")
    assert_one_clear_error(res, str(env.config))
    env.config.write_text(cfg)


# ------------------------------------------------------------------ routing


@pytest.mark.parametrize(
    "accession", ["demo/../ses-01", "demo/sub-01/..", "fw://g/demo/../x", "demo/./ses"]
)
def test_dot_route_parts_go_to_unsorted_with_a_reason(accession: str) -> None:
    route = route_study({"AccessionNumber": accession}, "g", RoutingRules())
    assert route.project is None
    assert any("not a valid label" in p for p in route.problems), route.problems


# ---------------------------------------------------------- hpc with no site


def test_hpc_tag_without_a_site_that_routes_it_is_refused(env: CliEnv) -> None:
    argv = ["run", "test-gear", "--dest", "g/p/s1/ses1", "--input",
            "input_file=g/p/s1/ses1/scan.nii.gz", "--tag", "hpc"]  # fmt: skip
    refused(env, "no configured site routes 'hpc'", *argv)
    refused(env, "no configured site routes 'hpc'", *argv, "--dry-run")
    env.ok(*argv[:-2])  # without the tag it runs locally, as asked
