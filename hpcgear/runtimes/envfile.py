"""The gear's environment file (``<jobdir>/.hpcgear/gear.env``).

Apptainer and SingularityCE read ``--env-file`` by *evaluating it as a POSIX
shell script* with their embedded interpreter (mvdan.cc/sh), on the host,
before the container starts (apptainer ``internal/pkg/util/env``: "The env file
is shell evaluated using mvdan/sh"; apptainer issue #2475 shows an unquoted
``ABC=x(y)`` failing to parse). So every value is written as one POSIX
single-quoted word (``shlex.quote``): no ``$``, backtick or ``$(...)`` in a value
is ever expanded, quotes and newlines survive byte for byte, and a hostile value
cannot end the assignment. Names must be shell identifiers.

Variables the runtime sets itself and drops from env files (``HOME``, ``PWD``,
``UID``, ...) are left out with a log line instead of being silently ignored.
"""

from __future__ import annotations

import functools
import logging
import re
import shlex
from collections.abc import Iterable

from hpcgear.errors import InvalidInputError
from hpcgear.spec import JobSpec

logger = logging.getLogger(__name__)

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names Apptainer manages itself; an env file cannot set them.
RUNTIME_MANAGED = frozenset({"HOME", "PWD", "OLDPWD", "UID", "GID", "EUID", "PPID", "IFS",
                             "OPTIND"})
#: Prefix of the variables hpcgear sets for every gear.
HPCGEAR_PREFIX = "HPCGEAR_"


#: The env file's first line.
ENV_FILE_HEADER = "# hpcgear gear environment; read by the container runtime's shell interpreter.\n"


def render_env_file(pairs: Iterable[tuple[str, str]]) -> str:
    """Env-file text for ``pairs`` (later pairs win; runtime-managed names skipped).

    Raises
    ------
    InvalidInputError
        If a name is not a shell identifier or a value contains a NUL byte.
    """
    return ENV_FILE_HEADER + _assignments(pairs)


def _assignments(pairs: Iterable[tuple[str, str]]) -> str:
    """The ``NAME='value'`` lines of ``pairs``, checked (see :func:`render_env_file`)."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            raise InvalidInputError(
                f"environment variable name {name!r} is not valid",
                "names are letters, digits and '_' and do not start with a digit",
            )
        if not isinstance(value, str):
            raise InvalidInputError(f"environment variable {name} must be a string, "
                                    f"got {type(value).__name__}", "quote the value")
        if "\0" in value:
            raise InvalidInputError(f"environment variable {name} contains a NUL byte",
                                    "remove it; environment values cannot hold NUL")
        if name in RUNTIME_MANAGED:
            logger.info("env %s: left out of the env file; the container runtime sets it", name)
            continue
        values.pop(name, None)
        values[name] = value
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


def gear_environment(spec: JobSpec) -> list[tuple[str, str]]:
    """The manifest ``environment`` plus hpcgear's own variables, in file order.

    A manifest may not set ``HPCGEAR_*`` names; they are dropped with a log line.
    """
    return [*_manifest_pairs(spec.gear.environment, spec.job_id), *_own_pairs(spec)]


def _manifest_pairs(
    environment: tuple[tuple[str, str], ...], job_id: str | None = None
) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in environment:
        if name.startswith(HPCGEAR_PREFIX):
            logger.warning("%s: manifest sets %s; hpcgear's own value is used",
                           f"job {job_id}" if job_id else "gear", name)
            continue
        pairs.append((name, value))
    return pairs


def _own_pairs(spec: JobSpec) -> list[tuple[str, str]]:
    return [
        ("HPCGEAR_JOB_ID", spec.job_id),
        ("HPCGEAR_ATTEMPT", str(spec.attempt)),
        ("HPCGEAR_SITE", spec.site),
        ("HPCGEAR_GEAR", f"{spec.gear.name}@{spec.gear.version}"),
        ("HPCGEAR_DESTINATION", f"{spec.destination_type}/{spec.destination_id}"),
    ]


@functools.lru_cache(maxsize=64)
def _manifest_env_text(environment: tuple[tuple[str, str], ...]) -> str:
    """The env file's header and the manifest's lines: the same for every job of a gear."""
    return render_env_file(_manifest_pairs(environment))


def render_gear_env(spec: JobSpec) -> str:
    """The text stage-in writes to ``JobPaths.env_file`` (mode 0600) for ``spec``:
    ``render_env_file(gear_environment(spec))``, the manifest's part rendered once per
    gear (an array renders thousands). hpcgear's own names never clash with the
    manifest's, whose ``HPCGEAR_*`` names are dropped."""
    pairs = _own_pairs(spec)
    # The job's id and attempt, then the pairs many jobs share (site, gear,
    # destination), checked and quoted once per distinct value.
    return (
        _manifest_env_text(spec.gear.environment)
        + _assignments(pairs[:2])
        + _shared_assignments(tuple(pairs[2:]))
    )


@functools.lru_cache(maxsize=256)
def _shared_assignments(pairs: tuple[tuple[str, str], ...]) -> str:
    return _assignments(pairs)
