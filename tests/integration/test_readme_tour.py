"""The README tour, run literally: its commands, in order, against the dev cluster.

The second ``bash`` block under "## A tour" is extracted from README.md and run
as one bash script (``set -euo pipefail``, each command echoed) in a fresh
directory that looks like a source checkout (``containers/`` and ``dev/``), with a
fresh config and data home, hpcgear's ``.venv/bin`` first on PATH and the dev
cluster's env.sh values in the environment. Any failing command fails the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

REPO = Path(__file__).resolve().parents[2]


def tour_commands(readme: str) -> str:
    """The tour's bash block (the one after the set-up block)."""
    section = readme.split("## A tour", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the tour has a set-up block and the tour block"
    return blocks[1]


def test_tour_block_is_found() -> None:
    text = tour_commands((REPO / "README.md").read_text())
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("hpcgear init")
    assert any(ln.startswith("hpcgear user add alice") for ln in lines)
    users = [i for i, ln in enumerate(lines) if ln.startswith("hpcgear user add")]
    grants = [i for i, ln in enumerate(lines) if ln.startswith("hpcgear role grant")]
    assert users and grants and users[0] < grants[0], "user add must come before role grant"
    assert any("site add" in ln for ln in lines), "the tour attaches a cluster site"


def test_readme_tour_runs_as_written(dev_env: DevEnv, tmp_path: Path) -> None:
    script = tour_commands((REPO / "README.md").read_text())
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("containers", "dev"):
        (work / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCGEAR_CONFIG",
                                                                      "HPCGEAR_DATABASE",
                                                                      "HPCGEAR_STORAGE"))}
    env.update({
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
        "XDG_DATA_HOME": str(tmp_path / "home" / ".local" / "share"),
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    })
    (tmp_path / "home").mkdir()
    res = subprocess.run(["bash", "-c", "set -euo pipefail -x\n" + script], cwd=work, env=env,
                         capture_output=True, text=True, timeout=1500)
    tail = (res.stdout[-4000:] + "\n---- stderr ----\n" + res.stderr[-6000:])
    assert res.returncode == 0, f"the tour failed:\n{tail}"
    # what the tour promises exists
    report = work / "study1-report.html"
    assert report.is_file() and 'id="jobs-over-time"' in report.read_text()
    jobs = json.loads(subprocess.run(["hpcgear", "jobs", "--json"], cwd=work, env=env,
                                     capture_output=True, text=True, check=True).stdout)
    assert jobs and all(j["state"] == "complete" for j in jobs), [
        (j["id"], j["state"], j["failure_message"]) for j in jobs]
    assert any(j["site"] == "dev-slurm" for j in jobs)
    assert "ro-crate" in res.stdout or "@context" in res.stdout
