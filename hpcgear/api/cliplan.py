"""Where each CLI command runs when the CLI is a client of ``hpcgear serve`` (one table).

With an API key configured, every ``hpcgear`` command is one of:

``forward``
    runs on the server as the key's owner (``POST /api/hpcgear/cli``): the same
    click command and service functions, the identity taken from the key.
``client``
    handled by the client itself over dedicated endpoints (``upload`` streams the
    files into storage, ``download`` streams file contents back, ``whoami`` asks
    ``/api/users/self``).
``local``
    runs on the client and needs no database (``login``, ``logout``, checking a
    manifest, a site YAML, a de-identification profile on a local file).
``refused``
    a server-side admin command (``init``, ``db``, ``serve``, running the
    controller, ``scratch gc``, building images, changing the server's config):
    refused in client mode with an ``error:``/``hint:`` pair.

A forwarded command's parameters that name files are listed in ``paths``: the
client moves the file *content* over HTTP (inputs are uploaded to a private
staging dir on the server, outputs come back as a stream into the client's
path), and the server refuses any such parameter whose value is not one it
staged itself, so a client never makes the server read or write a path it names.
``tests/unit/test_cliplan.py`` walks the whole click tree and fails on any
command missing here, or any file-like parameter of a forwarded command that is
not declared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Mode(StrEnum):
    FORWARD = "forward"
    CLIENT = "client"
    LOCAL = "local"
    REFUSED = "refused"


class PathRole(StrEnum):
    IN = "in"  # a file or directory the command reads: its content is uploaded first
    OUT_FILE = "out-file"  # a file the command writes: streamed back to the client's path
    OUT_DIR = "out-dir"  # a directory the command fills: streamed back as a tar


@dataclass(frozen=True, slots=True)
class PathParam:
    role: PathRole
    #: '-' (standard output) is a valid value and is passed as is
    stdout_ok: bool = False
    #: values that are names, not files (``ps3.15-basic``)
    names: frozenset[str] = frozenset()
    #: values with ``://`` are image references, not files
    refs: bool = False

    def allows_literal(self, value: str) -> bool:
        """Whether ``value`` may reach the server unchanged (it names no file)."""
        if self.stdout_ok and value == "-":
            return True
        if value in self.names:
            return True
        return self.refs and "://" in value


@dataclass(frozen=True, slots=True)
class Plan:
    mode: Mode
    paths: Mapping[str, PathParam] = field(default_factory=dict)
    #: for ``refused``: why, and what to do instead
    hint: str = ""


IN = PathParam(PathRole.IN)
_FWD = Plan(Mode.FORWARD)
_LOCAL = Plan(Mode.LOCAL)


def _refused(hint: str) -> Plan:
    return Plan(Mode.REFUSED, hint=hint)


_SERVER_ADMIN = (
    "a server-side admin command: run it on the server as a site admin, with the "
    "server's database config and no key (`HPCGEAR_LOCAL=1 hpcgear ...`)"
)

#: command words (``"user key create"``) -> where it runs. Every click command is here.
PLAN: dict[str, Plan] = {
    # ---- client-side handlers and local commands (no database)
    "login": _LOCAL,
    "logout": _LOCAL,
    "whoami": Plan(Mode.CLIENT),
    "upload": Plan(Mode.CLIENT, {"files": IN}),
    # (the client writes `--tar -` to its own stdout; the server only plans: --dry-run --json)
    "download": Plan(
        Mode.CLIENT, {"out": PathParam(PathRole.OUT_DIR), "tar": PathParam(PathRole.OUT_FILE)}
    ),
    "gear validate": _LOCAL,
    "gear convert-dockerfile": _LOCAL,
    "site validate": _LOCAL,
    "site schema": _LOCAL,
    "deid test": _LOCAL,
    # ---- server-side admin commands
    "init": _refused("`hpcgear logout` first to create a local instance; the server has its own"),
    "db status": _refused(_SERVER_ADMIN),
    "db upgrade": _refused(_SERVER_ADMIN),
    "serve": _refused(_SERVER_ADMIN),
    "controller run": _refused(_SERVER_ADMIN),
    "controller once": _refused(_SERVER_ADMIN),
    "controller metrics": _refused(
        "the API serves the metrics at GET /metrics (site admins' keys); "
        "--textfile is written on the server by cron"
    ),
    "scratch gc": _refused(_SERVER_ADMIN),
    "gear build": _refused(
        "images are built on the server (apptainer); build there as a site admin, or build "
        "a SIF yourself and `hpcgear gear install DIR --image FILE.sif`"
    ),
    "site add": _refused(
        "a site YAML becomes part of the server's config: copy it to the server and run "
        "`hpcgear site add` there as a site admin (check it first: `hpcgear site validate`)"
    ),
    "site preflight": _refused(
        "it probes the cluster from the server (sbatch --test-only, apptainer, scratch): "
        + _SERVER_ADMIN
    ),
    "job debug": _refused(
        "it recreates the job in the scratch of the site and runs the container there: "
        "run it on a node that sees the scratch, with database access"
    ),
    # ---- forwarded, reading files of the client
    "ingest bids": Plan(Mode.FORWARD, {"directory": IN}),
    "ingest dicom": Plan(Mode.FORWARD, {"directory": IN, "deid_profile": IN}),
    "ingest folder": Plan(Mode.FORWARD, {"directory": IN}),
    "ingest nifti": Plan(Mode.FORWARD, {"directory": IN}),
    "gear install": Plan(Mode.FORWARD, {"source": IN, "image": PathParam(PathRole.IN, refs=True)}),
    "rule apply": Plan(Mode.FORWARD, {"file": IN}),
    "deid attach": Plan(
        Mode.FORWARD, {"profile": PathParam(PathRole.IN, names=frozenset({"ps3.15-basic"}))}
    ),
    # ---- forwarded, writing files of the client
    "export bids": Plan(Mode.FORWARD, {"out": PathParam(PathRole.OUT_DIR)}),
    "provenance export": Plan(
        Mode.FORWARD, {"output": PathParam(PathRole.OUT_FILE, stdout_ok=True)}
    ),
    "report": Plan(Mode.FORWARD, {"out": PathParam(PathRole.OUT_FILE, stdout_ok=True)}),
    "view run": Plan(Mode.FORWARD, {"out": PathParam(PathRole.OUT_FILE)}),
    "view show": Plan(Mode.FORWARD, {"out": PathParam(PathRole.OUT_FILE)}),
    # ---- forwarded, database only
    **{
        name: _FWD
        for name in (
            "batch", "run", "jobs", "job cancel", "job logs", "job retry", "job show", "usage",
            "classification add", "classification rm", "classification set",
            "controller health", "controller status",
            "deid detach", "deid map", "deid show",
            "find", "ls", "mv", "rename", "rm", "history", "versions",
            "gear disable", "gear enable", "gear list", "gear show",
            "group create", "project create",
            "info set", "info unset", "tag add", "tag rm", "note add", "note list",
            "ingest reclassify",
            "provenance show", "provenance trace",
            "role grant", "role list", "role revoke",
            "rule add", "rule disable", "rule enable", "rule list", "rule rm", "rule show",
            "rule test", "rules evaluate", "rules status",
            "site show",
            "trash list", "trash purge", "trash restore",
            "user add", "user demote", "user disable", "user enable", "user list",
            "user promote", "user key create", "user key list", "user key revoke",
            "view list", "view rm", "view save",
        )
    },
}

_GROUPS = frozenset(" ".join(k.split()[:i]) for k in PLAN for i in range(1, len(k.split())))


def command_words(rest: Sequence[str]) -> tuple[str, ...]:
    """The command's words in ``rest`` (the command line after global options):
    ``["user", "key", "create", "--json"]`` -> ``("user", "key", "create")``."""
    words: list[str] = []
    for a in rest:
        if a.startswith("-"):
            if words and " ".join(words) in _GROUPS:
                continue  # a group's own option (--help): the subcommand may follow
            break
        words.append(a)
        if " ".join(words) not in _GROUPS:
            break
    return tuple(words)


def plan_for(rest: Sequence[str]) -> tuple[str, Plan] | None:
    """(command name, plan) for a command line, or None when it names no command.

    ``view PROJECT ...`` is the ad-hoc view (``view show``), as in ``ViewGroup``.
    """
    words = command_words(rest)
    name = " ".join(words)
    if name in PLAN:
        return name, PLAN[name]
    if words[:1] == ("view",) and len(words) == 2:
        return "view show", PLAN["view show"]
    return None


STAGE_PREFIX = "@hpcgear-stage:"
OUT_PREFIX = "@hpcgear-out:"
