"""The one wrapper that runs external commands (sbatch, squeue, ... and any tool).

Every external command hpcgear runs goes through a ``CommandRunner``: it takes an
argv *list* (never a shell string), a timeout and optional stdin, and returns a
``CompletedCommand`` holding argv, exit code, stdout, stderr and elapsed time.
A non-zero exit is *returned*, not raised: the caller (e.g. the SLURM backend)
knows which exit codes and messages mean what. A command that does not finish
in time, or cannot be started at all, raises ``TransportError``.

Two things are done for every command, locally and over SSH alike:

* The environment is scrubbed of ``SBATCH_*``, ``SLURM_*``, ``SQUEUE_*``,
  ``SACCT_*`` (and ``SALLOC_*``/``SRUN_*``/``SINFO_*``/``SCANCEL_*``) variables,
  so a controller started from inside a SLURM job, or a user's ``SBATCH_PARTITION``,
  cannot silently change what hpcgear submits or what squeue prints.
  ``SLURM_CONF`` is kept (it says where the cluster is, not what to do) and
  ``SLURM_TIME_FORMAT=standard`` is set so timestamps parse the same everywhere.
* Site ``prefix_lines`` (e.g. ``module load slurm/alpine``) run first when given.
  The command then runs as ``bash -lc '<scrub>; <lines> && exec "$@"' hpcgear argv...``:
  the site lines are admin configuration, and argv stays a list of positional
  parameters, so no user value is ever parsed by a shell.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hpcgear.errors import TransportError

logger = logging.getLogger(__name__)

#: Environment variable prefixes removed before running any command.
SCRUBBED_PREFIXES: tuple[str, ...] = (
    "SBATCH_",
    "SLURM_",
    "SQUEUE_",
    "SACCT_",
    "SALLOC_",
    "SRUN_",
    "SINFO_",
    "SCANCEL_",
)
#: Variables with a scrubbed prefix that are kept: where the cluster config lives.
KEPT_VARIABLES: frozenset[str] = frozenset({"SLURM_CONF"})
#: Variables set for every command so output formats do not depend on the caller.
FORCED_VARIABLES: Mapping[str, str] = {"SLURM_TIME_FORMAT": "standard"}

# A constant bash snippet (no user data in it) that scrubs the environment inside
# the shell, after login profiles ran. Used when commands go through bash (remote
# shells, site prefix lines), where Python's env= cannot reach.
_SHELL_SCRUB = (
    "for _hv in $(compgen -e); do case $_hv in SLURM_CONF) ;; "
    + "|".join(f"{p}*" for p in SCRUBBED_PREFIXES)
    + ') unset "$_hv" ;; esac; done; unset _hv; '
    + " ".join(f"export {k}={shlex.quote(v)};" for k, v in FORCED_VARIABLES.items())
)


@dataclass(frozen=True, slots=True)
class CompletedCommand:
    """What a finished external command returned.

    ``returncode`` is negative when the command was killed by a signal
    (``-9`` for SIGKILL), as in :mod:`subprocess`.
    """

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def killed_by_signal(self) -> bool:
        """True when the command died from a signal (locally ``rc<0``, via a shell ``rc>128``)."""
        return self.returncode < 0 or self.returncode > 128

    @property
    def output(self) -> str:
        """stdout and stderr together, stripped: for messages and pattern matching."""
        return "\n".join(p for p in (self.stdout.strip(), self.stderr.strip()) if p)


@runtime_checkable
class CommandRunner(Protocol):
    """Runs one argv list and returns its result; raises TransportError on timeout."""

    def run(
        self, argv: Sequence[str], *, timeout: float, input: str | None = None
    ) -> CompletedCommand:
        """Run ``argv`` with ``input`` on stdin; give up after ``timeout`` seconds."""
        ...


def scrubbed_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``base`` (default ``os.environ``) without scheduler variables."""
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith(SCRUBBED_PREFIXES) and key not in KEPT_VARIABLES:
            del env[key]
    env.update(FORCED_VARIABLES)
    return env


def wrap_argv(
    argv: Sequence[str], *, prefix_lines: Sequence[str] = (), scrub_in_shell: bool = False
) -> list[str]:
    """Return the argv that actually runs ``argv`` after site lines / in-shell scrubbing.

    Without ``prefix_lines`` and ``scrub_in_shell`` this is ``argv`` unchanged.
    Otherwise ``argv`` becomes the positional parameters of a constant bash
    script (``exec "$@"``), so it is never re-parsed by a shell.

    >>> wrap_argv(["squeue", "-h"], prefix_lines=["module load slurm"])[:2]
    ['bash', '-lc']
    """
    argv = list(argv)
    if not argv:
        raise ValueError("empty argv")
    lines = [line.strip() for line in prefix_lines if line.strip()]
    if not lines and not scrub_in_shell:
        return argv
    body = (" && ".join(lines) + ' && exec "$@"') if lines else 'exec "$@"'
    script = _SHELL_SCRUB + " " + body
    # -l only when site lines need the login environment (module command).
    return ["bash", "-lc" if lines else "-c", script, "hpcgear", *argv]


def command_failure_message(result: CompletedCommand, what: str) -> str:
    """One line naming the command, its exit status and the first line SLURM/tool said."""
    first = result.output.splitlines()[0] if result.output else "no output"
    if result.returncode < 0:
        status = f"killed by signal {-result.returncode}"
    else:
        status = f"exit {result.returncode}"
    return f"{what} failed ({status}): {first}"


class SubprocessRunner:
    """Runs commands on this host with :mod:`subprocess` (argv lists, no shell).

    Parameters
    ----------
    prefix_lines:
        Site shell lines run before each command (``module load slurm``).
    env:
        Base environment (default ``os.environ``); it is scrubbed either way.
    """

    def __init__(
        self, *, prefix_lines: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        self.prefix_lines = tuple(prefix_lines)
        self._env = dict(env) if env is not None else None

    def run(
        self, argv: Sequence[str], *, timeout: float, input: str | None = None
    ) -> CompletedCommand:
        argv_t = tuple(argv)
        full = wrap_argv(
            argv_t, prefix_lines=self.prefix_lines, scrub_in_shell=bool(self.prefix_lines)
        )
        logger.debug("run %s (timeout %.0fs)", shlex.join(argv_t), timeout)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                full,
                input=input,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                env=scrubbed_environment(self._env),
                stdin=subprocess.DEVNULL if input is None else None,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            elapsed = time.monotonic() - start
            logger.debug("timeout after %.1fs: %s", elapsed, shlex.join(argv_t))
            raise TransportError(
                f"{argv_t[0]} did not finish within {timeout:.0f}s",
                "the command may still have taken effect; retry later or raise the timeout",
                argv=argv_t,
                stdout=_text(exc.stdout),
                stderr=_text(exc.stderr),
                transient=True,
            ) from None
        except FileNotFoundError:
            raise TransportError(
                f"command not found: {argv_t[0]}",
                f"install {argv_t[0]} or put it on PATH (sites can set 'modules' lines "
                "such as 'module load slurm' in the site config)",
                argv=argv_t,
            ) from None
        except OSError as exc:
            raise TransportError(
                f"cannot run {argv_t[0]}: {exc.strerror or exc}",
                "check that the program exists and is executable",
                argv=argv_t,
            ) from None
        elapsed = time.monotonic() - start
        logger.debug("exit %s after %.2fs: %s", proc.returncode, elapsed, argv_t[0])
        return CompletedCommand(argv_t, proc.returncode, proc.stdout, proc.stderr, elapsed)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data
