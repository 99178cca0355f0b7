"""`hpcgear site validate|show` through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import CliEnv

REPO = Path(__file__).resolve().parents[2]


def _with_sites(env: CliEnv, *paths: Path) -> None:
    cfg = yaml.safe_load(env.config.read_text())
    cfg["sites"] = [str(p) for p in paths]
    env.config.write_text(yaml.safe_dump(cfg))


def test_site_show_json_lists_every_site(cli_env: CliEnv) -> None:
    _with_sites(cli_env, REPO / "site_configs/curc-blanca.yaml",
                REPO / "site_configs/curc-alpine.yaml")
    res = cli_env.ok("site", "show", "--json")
    data = {s["name"]: s for s in res.json()}
    assert set(data) == {"local", "curc-blanca", "curc-alpine"}
    assert data["curc-blanca"]["partitions"]["blanca-ics"]["qos"] == "blanca-ics"
    assert data["curc-blanca"]["service_user"] == "hpcgear-svc"
    text = cli_env.ok("site", "show")
    assert "tag 'hpc' routes to sites curc-blanca, curc-alpine" in text.err


def test_site_validate_lists_every_problem(cli_env: CliEnv, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nscratch_root: /s/{user}\nbogus: 1\n"
        "runtime: {image_cache: /i, boot_retries: 99}\n"
        "partitions:\n  quick: {max_time: 30m, default: true}\n"
        "defaults: {time: 2h}\n"
    )
    res = cli_env.run("site", "validate", str(bad),
                      str(REPO / "site_configs/curc-alpine.yaml"))
    assert res.code == 5, res.err
    assert "bad.yaml:3: bogus: unknown key" in res.err
    assert "bad.yaml:4: runtime.boot_retries" in res.err
    assert "curc-alpine is valid" in res.out
    assert "error: 1 of 2 site config(s) have problems" in res.err
    good = cli_env.ok("site", "validate", str(REPO / "site_configs/curc-blanca.yaml"),
                      str(REPO / "site_configs/curc-alpine.yaml"))
    assert "tag 'hpc' routes to sites" in good.err
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(
        "name: d\nscratch_root: /s\nruntime: {image_cache: /i}\n"
        "partitions:\n  quick: {max_time: 30m, default: true}\ndefaults: {time: 2h}\n")
    res = cli_env.run("site", "validate", str(defaults))
    assert "defaults.time 02:00:00 exceeds partition quick's max_time" in res.err


def test_site_add_attaches_once_and_refuses_a_name_clash(cli_env: CliEnv, tmp_path: Path) -> None:
    blanca = REPO / "site_configs/curc-blanca.yaml"
    assert "curc-blanca attached" in cli_env.ok("site", "add", str(blanca)).out
    cli_env.ok("site", "add", str(blanca))  # again: no duplicate entry
    cfg = yaml.safe_load(cli_env.config.read_text())
    assert cfg["sites"] == [str(blanca.resolve())]
    clash = tmp_path / "other.yaml"
    clash.write_text(blanca.read_text())
    res = cli_env.run("site", "add", str(clash))
    assert res.code == 6 and "already configured" in res.err
    alpine = REPO / "site_configs/curc-alpine.yaml"
    res = cli_env.ok("site", "add", str(alpine), "--default")
    assert "tag 'hpc' routes to sites curc-blanca, curc-alpine" in res.err
    assert yaml.safe_load(cli_env.config.read_text())["default_site"] == "curc-alpine"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbogus: 1\n")
    assert cli_env.run("site", "add", str(bad)).code == 5
