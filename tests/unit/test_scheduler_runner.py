"""The command runner: argv lists, scrubbed environment, timeouts, site prefix lines."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest

from hpcgear.errors import TransportError
from hpcgear.scheduler.runner import (
    CommandRunner,
    CompletedCommand,
    SubprocessRunner,
    command_failure_message,
    scrubbed_environment,
    wrap_argv,
)

DIRTY_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "SBATCH_PARTITION": "wrong",
    "SLURM_JOB_ID": "77",
    "SQUEUE_FORMAT": "%i",
    "SACCT_FORMAT": "JobID",
    "SALLOC_ACCOUNT": "x",
    "SLURM_CONF": "/etc/slurm/slurm.conf",
    "SLURM_TIME_FORMAT": "relative",
    "KEEP_ME": "yes",
}

TRICKY_ARGS = ["a b", "$(echo pwned)", "; rm -rf /tmp/x", "'quoted'", '"dq"', "*", "", "\\n"]


def _env_lines(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_scrubbed_environment_drops_scheduler_variables() -> None:
    env = scrubbed_environment(DIRTY_ENV)
    assert "SBATCH_PARTITION" not in env
    assert "SLURM_JOB_ID" not in env
    assert "SQUEUE_FORMAT" not in env and "SACCT_FORMAT" not in env
    assert "SALLOC_ACCOUNT" not in env
    assert env["SLURM_CONF"] == "/etc/slurm/slurm.conf"  # where the cluster is: kept
    assert env["SLURM_TIME_FORMAT"] == "standard"  # forced for parseable timestamps
    assert env["KEEP_ME"] == "yes"


def test_runner_uses_scrubbed_environment() -> None:
    runner = SubprocessRunner(env=DIRTY_ENV)
    result = runner.run(["env"], timeout=10)
    env = _env_lines(result.stdout)
    assert result.ok
    assert "SBATCH_PARTITION" not in env and "SLURM_JOB_ID" not in env
    assert env["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert env["KEEP_ME"] == "yes"


def test_runner_is_a_command_runner() -> None:
    assert isinstance(SubprocessRunner(), CommandRunner)


def test_argv_reaches_the_program_unchanged() -> None:
    result = SubprocessRunner().run(["printf", "%s\\n", *TRICKY_ARGS], timeout=10)
    assert result.stdout.split("\n")[:-1] == TRICKY_ARGS
    assert result.argv == ("printf", "%s\\n", *TRICKY_ARGS)
    assert result.elapsed >= 0


def test_prefix_lines_run_first_and_argv_stays_a_list() -> None:
    runner = SubprocessRunner(prefix_lines=["export HPCGEAR_SITE_MODULE=loaded"])
    result = runner.run(["sh", "-c", 'echo "$HPCGEAR_SITE_MODULE"; printf "%s\\n" "$@"', "sh",
                         *TRICKY_ARGS], timeout=10)
    lines = result.stdout.split("\n")[:-1]
    assert result.ok, result.stderr
    assert lines[0] == "loaded"
    assert lines[1:] == TRICKY_ARGS


def test_failing_site_line_stops_the_command() -> None:
    runner = SubprocessRunner(prefix_lines=["false"])
    result = runner.run(["touch", "/nonexistent-dir-for-hpcgear/x"], timeout=10)
    assert result.returncode == 1
    assert result.stderr == ""  # touch never ran


def test_wrap_argv_without_lines_is_identity() -> None:
    assert wrap_argv(["squeue", "-h"]) == ["squeue", "-h"]
    with pytest.raises(ValueError):
        wrap_argv([])


def test_in_shell_scrub_removes_variables_set_by_login_profiles() -> None:
    argv = wrap_argv(["env"], scrub_in_shell=True)
    assert argv[:2] == ["bash", "-c"]
    proc = subprocess.run(argv, env=DIRTY_ENV, capture_output=True, text=True, check=True)
    env = _env_lines(proc.stdout)
    assert "SBATCH_PARTITION" not in env and "SLURM_JOB_ID" not in env
    assert "SQUEUE_FORMAT" not in env and "SALLOC_ACCOUNT" not in env
    assert env["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert env["SLURM_TIME_FORMAT"] == "standard"
    assert env["KEEP_ME"] == "yes"


def test_nonzero_exit_is_returned_not_raised() -> None:
    result = SubprocessRunner().run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok and not result.killed_by_signal
    assert result.output == "out\nerr"
    assert command_failure_message(result, "thing") == "thing failed (exit 3): out"


def test_killed_by_signal_is_visible() -> None:
    result = SubprocessRunner().run(["sh", "-c", "kill -9 $$"], timeout=10)
    assert result.returncode == -9
    assert result.killed_by_signal
    assert "killed by signal 9" in command_failure_message(result, "x")


def test_stdin_input() -> None:
    result = SubprocessRunner().run(["cat"], timeout=10, input="hello\n")
    assert result.stdout == "hello\n"


def test_timeout_raises_transient_transport_error() -> None:
    with pytest.raises(TransportError) as info:
        SubprocessRunner().run(["sleep", "5"], timeout=0.3)
    assert info.value.transient
    assert info.value.argv == ("sleep", "5")
    assert "did not finish within" in info.value.message


def test_missing_program_is_a_clear_permanent_error() -> None:
    with pytest.raises(TransportError) as info:
        SubprocessRunner().run(["hpcgear-no-such-program"], timeout=5)
    assert not info.value.transient
    assert info.value.message == "command not found: hpcgear-no-such-program"
    assert "module" in info.value.hint


def test_argv_is_debug_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="hpcgear.scheduler.runner"):
        SubprocessRunner().run(["echo", "a b"], timeout=5)
    assert any("run echo 'a b'" in r.getMessage() for r in caplog.records)


def test_completed_command_is_frozen() -> None:
    result = CompletedCommand(("x",), 0, "", "", 0.0)
    with pytest.raises(AttributeError):
        result.returncode = 1  # type: ignore[misc]
