"""`hpcgear site preflight` and `site validate` against the real dev cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpcgear.config.settings import default_settings
from hpcgear.config.site import load_site, load_site_text
from hpcgear.controller.preflight import run_site_preflight
from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


def _dev_text(dev: DevEnv) -> str:
    return dev.site.read_text()


def test_the_dev_site_passes_preflight(dev_env: DevEnv, tmp_path: Path) -> None:
    site = load_site(dev_env.site)
    report = run_site_preflight(site, default_settings(tmp_path / "c.yaml"))
    assert report.ok, report.problems
    data = report.as_dict()
    assert data["cluster"]["version"].startswith("22.05")
    whats = {c["what"] for c in data["checks"]}
    assert {"runtime", "scratch", "image cache"} <= whats
    names = [p["name"] for p in data["partitions"]]
    assert names == list(site.partitions)


def test_preflight_reports_every_mismatch_at_once(dev_env: DevEnv, tmp_path: Path) -> None:
    text = _dev_text(dev_env)
    text = text.replace("    max_time: 2h\n    default: true\n",
                        "    max_time: 2h\n    default: true\n    max_cpus: 32\n"
                        "    qos: nosuchqos\n    account: nosuchacct\n"
                        "    max_gpus: 1\n")
    text = re.sub(r"executable: .*", "executable: /nonexistent/apptainer", text)
    text = re.sub(r"image_cache: .*", "image_cache: /proc/hpcgear-images", text)
    text = text.replace("partitions:\n", "partitions:\n  ghost:\n    max_time: 1h\n", 1)
    site = load_site_text(text, "bad.yaml")
    report = run_site_preflight(site, default_settings(tmp_path / "c.yaml"))
    assert not report.ok
    problems = "\n".join(report.problems)
    assert "max_cpus 32 exceeds the largest node's 2 CPUs" in problems
    assert "QOS nosuchqos does not exist" in problems
    assert "account nosuchacct is not one of" in problems
    assert "max_gpus 1 but the nodes offer 0" in problems
    assert "/nonexistent/apptainer" in problems
    assert "image cache /proc/hpcgear-images is not writable" in problems
    assert "partition ghost: partition ghost does not exist" in problems
    assert "sbatch --test-only" not in problems or "refused" in problems
