"""The HTML report rendered by headless Chromium: every chart region drew something.

Chromium comes from Debian (``bash dev/chromium.sh``, run by ``dev/test.sh``).
The page has a fixed layout (``HEADER_PX``, ``SECTION_PX``), so each chart's
region on the screenshot is known; a region counts as drawn when it holds the
chart's own mark colours, not just its title text.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hpcgear.jobs.report_html import BAR, CHART_IDS, HEADER_PX, SECTION_PX, STATE_COLORS
from tests.conftest import CliEnv
from tests.unit.report_support import populate
from tests.unit.test_jobs_service import gear_env  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration]


def _rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _near(a: tuple[int, ...], b: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a[:3], b, strict=True))


def test_report_charts_draw_in_chromium(gear_env: CliEnv, tmp_path: Path) -> None:  # noqa: F811
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed: run `bash dev/chromium.sh`")
    populate(gear_env)
    out = tmp_path / "report.html"
    gear_env.ok("report", "lab/p1", "--html", str(out))
    shot = tmp_path / "shot.png"
    height = HEADER_PX + SECTION_PX * len(CHART_IDS) + 40
    res = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-device-scale-factor=1", f"--window-size=960,{height}",
         f"--screenshot={shot}", out.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert shot.is_file(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size[1] >= height - 5

    expected = {
        "jobs-over-time": [STATE_COLORS["complete"], STATE_COLORS["failed"]],
        "core-hours-by-gear": [BAR],
        "core-hours-by-user": [BAR],
        "wait-vs-run": [STATE_COLORS["complete"]],
        "failure-kinds": [BAR],
        "provenance": [STATE_COLORS["complete"], "#e3f2fd"],
    }
    for i, cid in enumerate(CHART_IDS):
        top = HEADER_PX + i * SECTION_PX + 42  # below the section title
        region = img.crop((0, top, 960, min(top + SECTION_PX - 44, img.size[1])))
        colors = region.getcolors(maxcolors=1_000_000) or []
        inked = sum(n for n, c in colors if c != (255, 255, 255))
        assert inked > 500, f"chart {cid} is blank ({inked} non-white pixels)"
        for want in expected[cid]:
            hits = sum(n for n, c in colors if _near(c, _rgb(want)))
            assert hits > 30, f"chart {cid} lacks its {want} marks ({hits} pixels)"
    # a blank page fails the same check (the check can fail)
    blank = Image.new("RGB", (960, 400), "white")
    assert sum(n for n, c in (blank.getcolors() or []) if c != (255, 255, 255)) == 0
