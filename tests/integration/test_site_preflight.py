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


def test_estimated_start_of_a_pending_job(dev_env: DevEnv, tmp_path: Path) -> None:
    """`job show`'s estimate comes from the real `squeue --start` of a pending job."""
    import datetime as dt
    import subprocess

    import yaml

    from hpcgear.config.settings import load_settings
    from hpcgear.controller.jobinfo import estimated_start
    from hpcgear.db.models import Job

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "database_url": f"sqlite:///{tmp_path / 'x.db'}", "storage_root": str(tmp_path / "s"),
        "scratch_root": str(tmp_path / "scratch"), "sites": [str(dev_env.site)]}))
    settings = load_settings(str(cfg))
    native = subprocess.run(
        ["sbatch", "--parsable", "-p", dev_env.slurm_partition, "--begin=now+10minutes",
         "-t", "1", "-J", "hpcgear-start-estimate", "--wrap", "true"],
        capture_output=True, text=True, check=True).stdout.strip()
    try:
        job = Job(id="est", state="queued", site="dev-slurm", native_id=native)
        when = estimated_start(settings, job)
        assert when is not None
        expected = dt.datetime.now() + dt.timedelta(minutes=10)
        assert abs((when - expected).total_seconds()) < 120, when
        job.state = "running"
        assert estimated_start(settings, job) is None  # only queued jobs are asked about
    finally:
        subprocess.run(["scancel", native], check=False)
