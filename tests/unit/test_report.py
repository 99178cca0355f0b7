"""`hpcgear report PROJECT --html OUT`: a self-contained page with every chart."""

from __future__ import annotations

import re
from pathlib import Path

from hpcgear.jobs.report_html import CHART_IDS
from tests.conftest import CliEnv
from tests.unit.report_support import populate
from tests.unit.test_jobs_service import gear_env  # noqa: F401  (fixture)


def test_report_is_self_contained_with_every_chart(gear_env: CliEnv, tmp_path: Path) -> None:  # noqa: F811
    env = gear_env
    populate(env)
    out = tmp_path / "report.html"
    res = env.ok("report", "lab/p1", "--html", str(out))
    assert "3 jobs" in res.out and "provenance of lab/p1/s1/ses1" in res.out
    page = out.read_text()
    for cid in CHART_IDS:
        assert f'id="{cid}"' in page
    # nothing is fetched: no scripts, no external references of any kind
    assert "<script" not in page.lower()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert all(r.startswith("#") for r in refs), refs
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"] * page.count(
        "<svg")
    # user text is escaped, and every chart drew marks
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;.txt" in page
    assert page.count("no data for") == 0
    sections = re.findall(r'<section class="\w+" id="([\w-]+)">(.*?)</section>', page, re.S)
    for cid, body in sections:
        assert re.search(r"<(rect|circle)", body), f"chart {cid} has no marks"
    denied = env.run("--as", "nobody", "report", "lab/p1", "--html", str(out))
    assert denied.code == 4
