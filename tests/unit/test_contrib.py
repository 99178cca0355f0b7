"""contrib/: systemd units verify, cron lines name real commands."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CliEnv

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib"
HPCGEAR = Path(sys.executable).with_name("hpcgear")


def test_systemd_units_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    units = sorted((CONTRIB / "systemd").iterdir())
    assert {u.name for u in units} >= {"hpcgear-controller.service", "hpcgear-server.service"}
    for unit in units:
        text = unit.read_text().replace("/opt/hpcgear/bin/hpcgear", str(HPCGEAR))
        (tmp_path / unit.name).write_text(text)
    res = subprocess.run([exe, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # a broken unit is caught (the check can fail)
    (tmp_path / "hpcgear-controller.service").write_text(
        (tmp_path / "hpcgear-controller.service").read_text().replace("Type=simple", "Type=bogus"))
    bad = subprocess.run([exe, "verify", str(tmp_path / "hpcgear-controller.service")],
                         capture_output=True, text=True, timeout=120)
    assert "bogus" in bad.stdout + bad.stderr


def _cron_commands() -> list[list[str]]:
    out = []
    for line in (CONTRIB / "cron" / "hpcgear").read_text().splitlines():
        if not line.strip() or line.startswith("#") or "=" in line.split()[0]:
            continue
        words = line.split()[6:]  # 5 time fields and the user
        while words and words[0] != "hpcgear":
            words = words[1:]
        out.append(words)
    return out


def test_cron_lines_run_real_commands(cli_env: CliEnv) -> None:
    commands = _cron_commands()
    assert any(c[1:3] == ["controller", "once"] for c in commands)
    assert any(c[1:3] == ["rules", "evaluate"] for c in commands)
    for words in commands:
        args = [w for w in words[1:] if not w.startswith(("/", ">", "|"))]
        sub = [a for a in args if not a.startswith("-")][:2]
        res = cli_env.run(*sub, "--help")
        assert res.code == 0, f"cron runs `hpcgear {' '.join(sub)}`, which does not exist"
