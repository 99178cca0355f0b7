"""`hpcgear usage`: sums of the usage columns, grouping, formats, permissions."""

from __future__ import annotations

import csv
import io

from tests.conftest import CliEnv
from tests.unit.test_jobs_login_node import _end, _run
from tests.unit.test_jobs_service import gear_env  # noqa: F401  (fixture)


def test_usage_by_project_user_gear_month(gear_env: CliEnv) -> None:  # noqa: F811
    env = gear_env
    a, b, c = _run(env, "s1"), _run(env, "s2"), _run(env, "s1", "--config", "num_files=2")
    _end(env, a, failed=False)
    _end(env, b, failed=True)
    env.ok("job", "cancel", c)
    data = env.ok("usage", "--format", "json").json()
    assert data["by"] == "project"
    (row,) = data["rows"]
    assert row["key"] == "lab/p1"
    assert (row["jobs"], row["complete"], row["failed"], row["cancelled"]) == (3, 1, 1, 1)
    assert row["success_rate"] == 0.5
    assert row["core_hours"] == round(2 * 2 * 600 / 3600, 3)  # 2 ended jobs x 2 CPUs x 10 min
    assert row["wall_hours"] == round(1200 / 3600, 3)
    assert row["mean_wait_seconds"] == 300.0
    assert row["storage_bytes"] > 0
    assert data["total"]["jobs"] == 3
    by_gear = env.ok("usage", "--by", "gear", "--format", "json").json()
    assert [r["key"] for r in by_gear["rows"]] == ["test-gear"]
    by_month = env.ok("usage", "--by", "month", "--format", "json").json()
    assert len(by_month["rows"]) == 1 and by_month["rows"][0]["key"][:2] == "20"
    by_user = env.ok("usage", "--by", "user", "--project", "lab/p1", "--format", "json").json()
    assert by_user["rows"][0]["jobs"] == 3
    assert by_user["storage"][0]["project"] == "lab/p1"
    text = env.ok("usage", "--by", "gear").out.splitlines()
    assert text[0].split()[:3] == ["GEAR", "JOBS", "COMPLETE"] and text[-1].startswith("TOTAL")
    assert all(len(line) <= 100 for line in text)
    rows = list(csv.DictReader(io.StringIO(env.ok("usage", "--format", "csv").out)))
    assert rows[0]["project"] == "lab/p1" and rows[-1]["project"] == "TOTAL"
    future = env.ok("usage", "--since", "2999-01-01", "--format", "json").json()
    assert future["rows"] == [] and future["total"]["jobs"] == 0
    recent = env.ok("usage", "--since", "1d", "--format", "json").json()
    assert recent["total"]["jobs"] == 3


def test_usage_permissions(gear_env: CliEnv) -> None:  # noqa: F811
    env = gear_env
    _run(env, "s1")
    env.ok("user", "add", "carol")
    mine = env.ok("--as", "carol", "usage", "--format", "json").json()
    assert mine["scope"] == {"user": "carol"} and mine["total"]["jobs"] == 0
    assert env.run("--as", "carol", "usage", "--project", "lab/p1").code == 4
    assert env.run("--as", "carol", "usage", "--user", "root").code == 4
    env.ok("role", "grant", "carol", "lab", "read-only")
    assert env.ok("--as", "carol", "usage", "--group", "lab", "--format",
                  "json").json()["total"]["jobs"] == 1
    bad = env.run("usage", "--since", "yesterday")
    assert bad.code == 5 and "--since" in bad.err
