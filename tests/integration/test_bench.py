"""``bench/run.py --quick`` runs every scenario end to end (a smoke test, no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]


def test_bench_quick_runs_every_scenario(dev_env: DevEnv, tmp_path: Path) -> None:
    pytest.importorskip("submitit", reason="the bench comparators: pip install -e '.[bench]'")
    out = tmp_path / "latest.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=1800, env={**os.environ}, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    scenarios = doc["scenarios"]
    errors = {k: v["headline"] for k, v in scenarios.items() if k.endswith(".error")}
    assert errors == {}
    expected = {
        "cli.help", "cli.jobs.sqlite", "cli.job_show.sqlite", "cli.jobs.postgresql",
        "cli.job_show.postgresql", "cli.upload_one", "cli.upload_dir", "ingest.one_core",
        "ingest.parallel", "store.put", "rules.incremental", "submit", "poll.queries",
        "poll.cycle", "latency.upload_to_sbatch", "latency.end_to_complete",
        "poll.queries_small",
    }  # fmt: skip
    assert expected <= set(scenarios), sorted(expected - set(scenarios))
    for name, entry in scenarios.items():
        assert entry["target"] and entry["figures"], name
        assert entry["met"] is None, "a quick run judges no target"
        assert entry["met_at_full_size"] in (True, False, None), name
    assert doc["quick"] is True
    assert "| scenario" in res.stdout, "the table is printed"
    assert scenarios["submit"]["figures"]["jobs"] == 50
