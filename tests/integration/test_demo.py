"""The README's first command, run for real: the full demo is green inside CI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end(dev_env: DevEnv, tmp_path: Path) -> None:
    env = {**os.environ, "HPCGEAR_DEMO_DIR": str(tmp_path / "demo")}
    env.pop("HPCGEAR_CONFIG", None)
    res = subprocess.run(["bash", str(REPO / "dev" / "demo.sh")], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=1500)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert ".nii.gz" in res.stdout, "NIfTI outputs are listed in the hierarchy"
    assert "dev-slurm" in res.stdout, "the job table shows SLURM jobs"
    assert "record:" in res.stdout and "(verified)" in res.stdout, "a provenance record"
    summary = next(line for line in res.stdout.splitlines() if "jobs complete" in line)
    done, total = summary.split(" of ")[0], summary.split(" of ")[1].split()[0]
    assert done == total and int(total) >= 8, summary
