"""Log lines: timestamps with a zone, --log-json, and no Alembic chatter at -v."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import CliEnv

HPCGEAR = Path(sys.executable).with_name("hpcgear")


def _run(env: CliEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HPCGEAR), "--config", str(env.config), *args],
                          capture_output=True, text=True, timeout=120)


def test_verbose_lines_have_timestamps_and_no_alembic(cli_env: CliEnv) -> None:
    # the daemon logs its cycle lines with timestamps even without -v
    res = _run(cli_env, "controller", "run", "--until-idle", "--timeout", "20")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines and any("[local] idle" in ln for ln in lines), res.stderr
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (INFO|WARNING) ")
    assert all(stamp.match(ln) for ln in lines), lines
    verbose = _run(cli_env, "-v", "controller", "run", "--until-idle")
    assert "alembic" not in verbose.stderr.lower()
    assert all(stamp.match(ln) for ln in verbose.stderr.strip().splitlines()), verbose.stderr
    loud = _run(cli_env, "-vvv", "db", "upgrade")
    assert "alembic" in loud.stderr.lower()


def test_log_json_is_one_object_per_line(cli_env: CliEnv) -> None:
    res = _run(cli_env, "-v", "--log-json", "controller", "run", "--until-idle")
    assert res.returncode == 0, res.stderr
    records = [json.loads(ln) for ln in res.stderr.splitlines() if ln.startswith("{")]
    assert records
    assert {"ts", "level", "logger", "message"} <= set(records[0])
    assert records[0]["ts"].endswith("+00:00")
    logging.getLogger().handlers.clear()


def test_controller_once_lines_have_timestamps_and_json_stays(cli_env: CliEnv) -> None:
    # cron mail and log files: each line of `controller once` starts with an ISO time and zone
    res = _run(cli_env, "controller", "once")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert any(ln.endswith("[local] idle") for ln in lines), res.stderr
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d \[local\] ")
    assert lines and all(stamp.match(ln) for ln in lines), lines
    # --json is unchanged: one report object per site on stdout, no stamps mixed in
    as_json = _run(cli_env, "controller", "once", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["site"] == "local" and "errors" in report
    assert not stamp.match(as_json.stderr.strip() or "x"), as_json.stderr
