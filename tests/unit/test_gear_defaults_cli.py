"""A gear written for one cluster stays usable on another (`run --dry-run` through the CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.conftest import CliEnv

REPO = Path(__file__).resolve().parents[2]


def _setup(env: CliEnv, tmp_path: Path) -> None:
    gear = tmp_path / "blanca-gear"
    shutil.copytree(REPO / "containers" / "test-gear", gear)
    m = json.loads((gear / "manifest.json").read_text())
    m["name"] = "blanca-gear"
    m["config"]["slurm-partition"] = {"type": "string", "default": "blanca-ics"}
    m["config"]["slurm-qos"] = {"type": "string", "default": "blanca-ics"}
    (gear / "manifest.json").write_text(json.dumps(m))
    sif = tmp_path / "fake.sif"
    sif.write_bytes(b"an image")
    env.ok("gear", "install", str(gear), "--image", str(sif))
    cfg = yaml.safe_load(env.config.read_text())
    cfg["sites"] = [str(REPO / "site_configs" / "curc-alpine.yaml")]
    env.config.write_text(yaml.safe_dump(cfg))
    env.ok("group", "create", "lab")
    env.ok("project", "create", "lab/p1")
    f = tmp_path / "s1.nii.gz"
    f.write_bytes(b"x" * 10)
    env.ok("upload", "lab/p1/s1/ses1", str(f))


def _dry(env: CliEnv, *extra: str) -> tuple[dict[str, object], str]:
    res = env.ok("run", "blanca-gear", "--dest", "lab/p1/s1/ses1", "--input",
                 "input_file=lab/p1/s1/ses1/s1.nii.gz", "--tag", "alpine", *extra,
                 "--dry-run", "--json")
    return res.json(), res.err


def test_gear_defaults_give_way_and_can_be_cleared(cli_env: CliEnv, tmp_path: Path) -> None:
    _setup(cli_env, tmp_path)
    data, err = _dry(cli_env)
    assert data["site"] == "curc-alpine"
    text = "\n".join(data["resources"])
    assert "amilan" in text and "blanca-ics" not in text
    assert "warning: the gear's default partition 'blanca-ics' does not exist" in err
    assert "warning: the gear's default qos 'blanca-ics'" in err
    # an empty value clears the gear default: no warning, the site's own choice
    data, err = _dry(cli_env, "--config", "slurm-partition=", "--config", "slurm-qos=")
    assert "amilan" in "\n".join(data["resources"]) and "warning" not in err
    # a user's explicit partition must exist
    res = cli_env.run("run", "blanca-gear", "--dest", "lab/p1/s1/ses1", "--input",
                      "input_file=lab/p1/s1/ses1/s1.nii.gz", "--tag", "alpine",
                      "--config", "slurm-partition=blanca-ics", "--dry-run")
    assert res.code == 5 and "has no partition 'blanca-ics'" in res.err
