"""Site configuration: one typed schema for a cluster hpcgear submits to.

A site YAML says how to reach the scheduler (transport, module lines), where
scratch and permanent storage live, which container runtime runs gears, which
partitions exist and what they allow, how tags route jobs, and the limits,
retry policy and defaults the controller applies. Load it with
:func:`load_site`; every error names ``file:line`` and the key, and an unknown
key lists the valid keys. :func:`site_schema_json` exports the same schema as
JSON Schema for editors.

Example (see ``site_configs/`` for complete, tested files)::

    name: alpine
    scheduler: slurm
    scratch_root: /scratch/alpine/{user}      # {user}: the account jobs run as
    runtime: {kind: apptainer, executable: /usr/bin/apptainer, image_cache: /projects/x/sif}
    modules: ["module use /curc/sw/modules/slurm", "module load slurm/alpine"]
    partitions:
      amilan: {max_time: 1-00:00:00, max_mem: 240G, max_cpus: 64, default: true}
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from hpcgear.config.schema import Problem, Where, build, json_schema, setting
from hpcgear.config.yamlload import decode_utf8, load_yaml_with_lines
from hpcgear.errors import ConfigError, InvalidInputError, ResourceError, SchemaError
from hpcgear.states import FailureKind
from hpcgear.units import format_memory, format_slurm_time, parse_memory_mb, parse_time_minutes

__all__ = [
    "DEFAULT_RETRY",
    "FORBIDDEN_RUNTIME_FLAGS",
    "FORBIDDEN_SBATCH_OPTIONS",
    "ArrayConfig",
    "DefaultsConfig",
    "LimitsConfig",
    "PartitionConfig",
    "RetryPolicy",
    "RoutingConfig",
    "RuntimeConfig",
    "SiteConfig",
    "TransportConfig",
    "check_sbatch_option",
    "check_user_name",
    "load_site",
    "load_site_text",
    "site_as_dict",
    "site_schema_json",
]

# Site names appear in paths, SLURM comments and log lines.
SITE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# Partition, QOS, account names (as in hpcgear.gears.reserved; never starts with "-").
SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.\-]{0,127}$")
# A login name that is safe as one path component.
USER_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
# Characters allowed in admin paths. They end up in #SBATCH lines (which are not
# shell-parsed, so they cannot be quoted) and in Apptainer bind specs (where ':' and
# ',' are separators), so the set is deliberately small.
PATH_RE = re.compile(r"^/[A-Za-z0-9_.@+/\-]*$")
PLACEHOLDERS = ("{user}", "{site}")
# A partition's GRES prefix for GPU requests: name[:type], e.g. gpu or gpu:a100.
_GRES_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*(:[A-Za-z0-9_.\-]+)?")
# Values allowed in #SBATCH lines and site-given sbatch option values.
SBATCH_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:=@%+/\-&|\[\]*!]+$")
_PATH_HINT = (
    "use an absolute path made of letters, digits and _ . @ + - / only "
    "(no spaces, ':' or ','), e.g. /scratch/alpine/{user}"
)

#: sbatch options hpcgear sets itself (long names, without dashes). A site's
#: ``extra_sbatch_options`` may not give them, nor any abbreviation of them
#: (sbatch accepts unambiguous prefixes such as ``--out``).
FORBIDDEN_SBATCH_OPTIONS: Mapping[str, str] = types.MappingProxyType({
    "job-name": "hpcgear names every job hpcgear-<job-id> to find it again after a crash",
    "output": "hpcgear writes the job log into the job directory",
    "error": "hpcgear writes the job log into the job directory",
    "export": "jobs run with --export=NONE so no submit-host variable leaks in",
    "export-file": "jobs run with --export=NONE so no submit-host variable leaks in",
    "get-user-env": "jobs run with --export=NONE so no login environment leaks in",
    "comment": "hpcgear comments every job hpcgear:<job-id>:<attempt>",
    "parsable": "the scheduler backend adds it when it submits",
    "hold": "the scheduler backend submits held and releases after recording the id",
    "wait": "sbatch must return at once",
    "array": "hpcgear builds job arrays itself",
    "requeue": "hpcgear owns retries (--no-requeue)",
    "no-requeue": "hpcgear sets it",
    "signal": "hpcgear sets --signal from runtime.term_grace_seconds",
    "open-mode": "hpcgear sets it",
    "chdir": "hpcgear runs jobs in their job directory",
    "wrap": "hpcgear submits a script",
    "partition": "set partitions (and tag routing) instead",
    "qos": "set qos on the partition instead",
    "account": "set account on the partition instead",
    "time": "set defaults.time and partition max_time instead",
    "mem": "set defaults.mem and partition max_mem instead",
    "mem-per-cpu": "memory is requested per node by hpcgear",
    "mem-per-gpu": "memory is requested per node by hpcgear",
    "cpus-per-task": "set defaults.cpus and partition max_cpus instead",
    "gres": "GPUs are requested by hpcgear from partition gres/max_gpus",
    "gpus": "GPUs are requested by hpcgear from partition gres/max_gpus",
    "gpus-per-node": "GPUs are requested by hpcgear from partition gres/max_gpus",
    "gpus-per-task": "GPUs are requested by hpcgear from partition gres/max_gpus",
    "nodes": "hpcgear sets it from the job's resources",
    "ntasks": "hpcgear sets it from the job's resources",
})
_FORBIDDEN_SHORT = {
    "J": "job-name", "o": "output", "e": "error", "H": "hold", "W": "wait", "a": "array",
    "D": "chdir", "p": "partition", "q": "qos", "A": "account", "t": "time",
    "c": "cpus-per-task", "G": "gpus", "N": "nodes", "n": "ntasks",
}

#: Runtime flags hpcgear sets itself; a site's ``runtime.extra_flags`` may not give them.
FORBIDDEN_RUNTIME_FLAGS: frozenset[str] = frozenset({
    "--containall", "-C", "--contain", "-c", "--cleanenv", "-e", "--env-file", "--pwd",
    "--workdir", "-W", "--home", "-H", "--no-home", "--writable", "-w", "--writable-tmpfs",
    "--nv", "--no-eval", "--app",
})


def _minutes_json() -> dict[str, Any]:
    return {"type": ["string", "integer"], "examples": ["2h", "1-00:00:00", 90]}


def _memory_json() -> dict[str, Any]:
    return {"type": ["string", "integer"], "examples": ["16G", "512M", 4096]}


def _parse_minutes(what: str) -> Any:
    def parse(raw: Any) -> int:
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise ResourceError(f"{what} must be a duration like 2h or 1-00:00:00, got {raw!r}")
        return parse_time_minutes(raw, what=what)

    return parse


def _parse_memory(what: str) -> Any:
    def parse(raw: Any) -> int:
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise ResourceError(f"{what} must be a size like 16G, got {raw!r}")
        return parse_memory_mb(raw, what=what)

    return parse


def _parse_site_name(raw: Any) -> str:
    if not isinstance(raw, str) or not SITE_NAME_RE.fullmatch(raw):
        raise SchemaError(
            f"site name {raw!r} is not valid",
            "use lower-case letters, digits, '_', '.' and '-', starting with a letter or digit",
        )
    return raw


def _parse_slurm_name(raw: Any) -> str:
    if not isinstance(raw, str) or not SLURM_NAME_RE.fullmatch(raw):
        raise SchemaError(
            f"{raw!r} is not a SLURM name",
            "use letters, digits, '_', '.' and '-' only (not starting with '-')",
        )
    return raw


def _check_path(raw: Any, *, placeholders: bool, what: str) -> str:
    if not isinstance(raw, str):
        raise SchemaError(f"{what} must be a path string, got {raw!r}", _PATH_HINT)
    text = raw.rstrip("/") or "/"
    bare = text
    if placeholders:
        for p in PLACEHOLDERS:
            bare = bare.replace(p, "x")
    if "{" in bare or "}" in bare:
        allowed = " and ".join(PLACEHOLDERS) if placeholders else "none"
        raise SchemaError(
            f"{what} {raw!r} has an unknown placeholder",
            f"placeholders allowed here: {allowed}",
        )
    if not PATH_RE.fullmatch(bare):
        raise SchemaError(f"{what} {raw!r} is not a safe absolute path", _PATH_HINT)
    parts = bare.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts) and bare != "/":
        raise SchemaError(
            f"{what} {raw!r} has an empty, '.' or '..' component", "write a normalised path"
        )
    return text


def _parse_scratch_template(raw: Any) -> str:
    return _check_path(raw, placeholders=True, what="scratch_root")


def _parse_abs_path(what: str) -> Any:
    def parse(raw: Any) -> str:
        return _check_path(raw, placeholders=False, what=what)

    return parse


def _parse_api_url(raw: Any) -> str:
    from urllib.parse import urlsplit

    if not isinstance(raw, str) or not raw.strip():
        raise SchemaError("api_url must be a URL", "e.g. api_url: http://hpcgear.example:8080")
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or ":" in parts.hostname:
        raise SchemaError(f"api_url {raw!r} is not an http(s) URL with a host name",
                          "e.g. api_url: http://hpcgear.example:8080")
    return raw.strip().rstrip("/")


def _parse_executable(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise SchemaError(f"runtime executable {raw!r} is not valid",
                          "give an absolute path, e.g. /usr/bin/apptainer, or a command name")
    if raw.startswith("/"):
        return _check_path(raw, placeholders=False, what="runtime executable")
    if not re.fullmatch(r"^[A-Za-z0-9_.+\-]+$", raw) or raw.startswith("-"):
        raise SchemaError(f"runtime executable {raw!r} is not a command name or absolute path",
                          "give an absolute path, e.g. /usr/bin/apptainer")
    return raw


# The job tags a user can give (hpcgear.jobs.service): a routing tag outside this set could
# never match a job, and one with control characters would reach terminals raw.
ROUTING_TAG_RE = re.compile(r"[A-Za-z0-9_.:=+\-]{1,64}")


def _check_routing_tag(tag: Any) -> None:
    if not isinstance(tag, str) or not ROUTING_TAG_RE.fullmatch(tag):
        raise SchemaError(
            f"routing tag {str(tag)[:80]!r} is not a job tag",
            "tags are 1-64 letters, digits and _ . : = + - (like hpc or gpu)",
        )


def _check_line(value: str) -> None:
    if not value.strip() or any(c in value for c in "\n\r\0"):
        raise SchemaError(f"module line {value!r} must be one non-empty line",
                          "give each command as its own list item")


def check_sbatch_option(option: str) -> None:
    """Validate one site ``extra_sbatch_options`` item; raise SchemaError if refused.

    The option goes verbatim into an ``#SBATCH`` line, which sbatch parses itself
    (not a shell), so it must be one word of a safe character set, and it may not
    set or abbreviate an option hpcgear owns (:data:`FORBIDDEN_SBATCH_OPTIONS`).
    """
    if not isinstance(option, str) or not option.startswith("-") or option in ("-", "--"):
        raise SchemaError(f"sbatch option {option!r} must start with '-' or '--'",
                          "write options like --constraint=ib or --mail-type=NONE")
    if option.startswith("--"):
        name, _, value = option[2:].partition("=")
        if not re.fullmatch(r"^[A-Za-z][A-Za-z0-9\-]*$", name):
            raise SchemaError(f"sbatch option {option!r} has an invalid name",
                              "write options like --constraint=ib")
        owned = sorted(f for f in FORBIDDEN_SBATCH_OPTIONS if f.startswith(name))
        if owned:
            why = FORBIDDEN_SBATCH_OPTIONS[owned[0]]
            shown = f"--{owned[0]}" if f"--{name}" == f"--{owned[0]}" else (
                f"--{name} (an abbreviation of --{', --'.join(owned)})")
            raise SchemaError(
                f"extra_sbatch_options may not set {shown}: {why}",
                "remove it from extra_sbatch_options",
            )
    else:
        name, value = option[1:2], option[2:]
        if name in _FORBIDDEN_SHORT:
            long = _FORBIDDEN_SHORT[name]
            raise SchemaError(
                f"extra_sbatch_options may not set -{name} (--{long}): "
                f"{FORBIDDEN_SBATCH_OPTIONS[long]}",
                "remove it from extra_sbatch_options",
            )
        if not re.fullmatch(r"^[A-Za-z]$", name):
            raise SchemaError(f"sbatch option {option!r} has an invalid name",
                              "write options like --constraint=ib")
    if value and not SBATCH_VALUE_RE.fullmatch(value):
        raise SchemaError(
            f"sbatch option {option!r} has characters #SBATCH lines cannot carry safely",
            "use letters, digits and _ . , : = @ % + / - & | [ ] * ! only (no spaces or quotes)",
        )


def _check_runtime_flag(flag: str) -> None:
    if any(c in flag for c in "\n\r\0"):
        raise SchemaError(f"runtime flag {flag!r} contains a line break or NUL")
    name = flag.split("=", 1)[0]
    if name in FORBIDDEN_RUNTIME_FLAGS:
        raise SchemaError(
            f"runtime.extra_flags may not set {name}: hpcgear sets the container's "
            "isolation, working directories and environment itself",
            "remove it; extra binds (--bind /projects) and similar flags are fine",
        )


def check_user_name(user: str) -> str:
    """Return ``user`` if it is safe as one path component, else raise InvalidInputError."""
    if not isinstance(user, str) or not USER_NAME_RE.fullmatch(user):
        raise InvalidInputError(
            f"user name {user!r} cannot be used in a scratch path",
            "user names are letters, digits, '_', '.' and '-', not starting with '.' or '-'",
        )
    return user


# ---------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TransportConfig:
    """How hpcgear runs scheduler commands: on this host, or over SSH on a login node."""

    kind: Literal["local", "ssh"] = setting(
        "local: run sbatch/squeue here; ssh: run them on a login node", default="local")
    host: str | None = setting("SSH host name or address (ssh only)", default=None)
    port: int = setting("SSH port", default=22)
    user: str | None = setting("SSH login name (ssh only; default: the controller's user)",
                               default=None)
    key_file: str | None = setting("SSH private key file (ssh only)", default=None,
                                   parse=_parse_abs_path("key_file"))
    known_hosts: str | None = setting(
        "known_hosts file the login node's host key must be in (ssh only)", default=None,
        parse=_parse_abs_path("known_hosts"))
    connect_timeout_seconds: int = setting("seconds to wait for an SSH connection", default=30)
    command_timeout_seconds: int = setting(
        "seconds one scheduler command may take before it counts as timed out", default=120)

    def schema_problems(self) -> Iterator[Problem]:
        if self.kind == "ssh" and not self.host:
            yield Problem(("kind",), "transport kind ssh needs a host",
                          "add `host: login.example.edu`")
        if self.kind == "local":
            for key in ("host", "user", "key_file", "known_hosts"):
                if getattr(self, key) is not None:
                    yield Problem((key,), f"{key} only applies to kind: ssh",
                                  "set `kind: ssh` or remove the key")
        if self.host is not None and not re.fullmatch(r"^[A-Za-z0-9_.:\-\[\]]+$", self.host):
            yield Problem(("host",), f"host {self.host!r} is not a host name or address")
        if self.user is not None and not USER_NAME_RE.fullmatch(self.user):
            yield Problem(("user",), f"user {self.user!r} is not a valid login name")
        if not 1 <= self.port <= 65535:
            yield Problem(("port",), f"port {self.port} is out of range", "use 1..65535")
        for key in ("connect_timeout_seconds", "command_timeout_seconds"):
            if getattr(self, key) < 1:
                yield Problem((key,), f"{key} must be at least 1")


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """The container runtime on the compute nodes and where cached images live."""

    image_cache: str = setting(
        "directory of the digest-keyed SIF cache (shared by login and compute nodes)",
        parse=_parse_abs_path("image_cache"))
    kind: Literal["apptainer", "singularity"] = setting(
        "which runtime family the executable belongs to", default="apptainer")
    executable: str | None = setting(
        "absolute path of apptainer/singularity on the compute nodes (default: the kind, "
        "looked up on PATH)", default=None, parse=_parse_executable)
    extra_flags: tuple[str, ...] = setting(
        "flags added to every exec (e.g. --bind /projects); may not change isolation",
        default=(), item_check=_check_runtime_flag)
    boot_retries: int = setting(
        "how often a container that failed to start (no start marker) is retried in the job",
        default=2)
    boot_retry_delay_seconds: int = setting("seconds between boot retries", default=10)
    term_grace_seconds: int = setting(
        "SLURM sends TERM this many seconds before the time limit (--signal=B:TERM@N) so the "
        "gear can stop and the job record its exit", default=120)
    writable_tmpfs: bool = setting(
        "give the image a writable tmpfs overlay (--writable-tmpfs) for gears that write "
        "into their own image", default=False)
    no_eval: bool = setting(
        "pass --no-eval so environment values are never shell-evaluated in the container "
        "(needs Apptainer >= 1.1 or SingularityCE >= 3.10)", default=True)

    @property
    def executable_path(self) -> str:
        return self.executable or self.kind

    def schema_problems(self) -> Iterator[Problem]:
        if not 0 <= self.boot_retries <= 10:
            yield Problem(("boot_retries",), "boot_retries must be 0..10")
        if not 0 <= self.boot_retry_delay_seconds <= 3600:
            yield Problem(("boot_retry_delay_seconds",), "boot_retry_delay_seconds must be 0..3600")
        if not 0 <= self.term_grace_seconds <= 3600:
            yield Problem(("term_grace_seconds",), "term_grace_seconds must be 0..3600")


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionConfig:
    """One SLURM partition jobs may go to, and the limits checked before sbatch."""

    qos: str | None = setting("QOS to request (--qos); none: the partition's default",
                              default=None, parse=_parse_slurm_name)
    account: str | None = setting("account to charge (--account); none: the user's default",
                                  default=None, parse=_parse_slurm_name)
    max_time_minutes: int | None = setting(
        "longest wall time allowed (e.g. 1-00:00:00 or 24h)", key="max_time", default=None,
        parse=_parse_minutes("max_time"), json=_minutes_json())
    max_mem_mb: int | None = setting(
        "most memory per node a job may ask for (e.g. 240G)", key="max_mem", default=None,
        parse=_parse_memory("max_mem"), json=_memory_json())
    max_cpus: int | None = setting("most CPUs per task a job may ask for", default=None)
    max_gpus: int = setting("most GPUs per node (0: no GPUs)", default=0)
    gres: str | None = setting(
        "GRES prefix for GPU requests, e.g. gpu or gpu:a100 (default gpu)", default=None)
    default: bool = setting("jobs go here unless asked or routed elsewhere", default=False)
    description: str | None = setting("free text for humans", default=None)

    def schema_problems(self) -> Iterator[Problem]:
        if self.max_cpus is not None and self.max_cpus < 1:
            yield Problem(("max_cpus",), "max_cpus must be at least 1")
        if self.max_gpus < 0:
            yield Problem(("max_gpus",), "max_gpus must be 0 or more")
        if self.gres is not None and not _GRES_PREFIX_RE.fullmatch(self.gres):
            yield Problem(("gres",), f"gres {self.gres!r} is not a GRES name[:type]",
                          "e.g. gpu or gpu:a100")

    def limits_text(self) -> str:
        parts = []
        if self.max_time_minutes is not None:
            parts.append(f"time <= {format_slurm_time(self.max_time_minutes)}")
        if self.max_mem_mb is not None:
            parts.append(f"mem <= {format_memory(self.max_mem_mb)}")
        if self.max_cpus is not None:
            parts.append(f"cpus <= {self.max_cpus}")
        parts.append(f"gpus <= {self.max_gpus}")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Which job tags send jobs to this site and to which partition."""

    site_tags: tuple[str, ...] = setting(
        "tags that route a job to this site (e.g. hpc)", default=(),
        item_check=_check_routing_tag)
    partition_tags: Mapping[str, str] = setting(
        "tag -> partition; a tag `gpu` or `gpu=2` picks the partition mapped to gpu",
        default_factory=lambda: types.MappingProxyType({}))

    def schema_problems(self) -> Iterator[Problem]:
        for tag in self.partition_tags:
            if not ROUTING_TAG_RE.fullmatch(tag):
                yield Problem(("partition_tags", tag),
                              f"partition tag {tag[:80]!r} is not a job tag",
                              "tags are 1-64 letters, digits and _ . : = + - (like gpu)")


@dataclasses.dataclass(frozen=True, slots=True)
class LimitsConfig:
    """How much hpcgear puts into the queue at once (none: no limit)."""

    max_in_flight_per_user: int | None = setting(
        "most queued+running jobs per user", default=None)
    max_in_flight_per_project: int | None = setting(
        "most queued+running jobs per project", default=None)
    submit_rate_per_minute: int | None = setting(
        "most sbatch calls per minute for this site", default=None)

    def schema_problems(self) -> Iterator[Problem]:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 1:
                yield Problem((f.name,), f"{f.name} must be at least 1 (or omitted for no limit)")


@dataclasses.dataclass(frozen=True, slots=True)
class ArrayConfig:
    """How batches of similar jobs are submitted as job arrays."""

    max_size: int | None = setting(
        "most tasks per array (none: ask SLURM for MaxArraySize)", default=None)
    throttle: int | None = setting("most tasks of one array running at once (--array=...%N)",
                                   default=None)
    prepare_processes: int = setting(
        "helper processes the controller forks to prepare arrays while it submits others "
        "(0: prepare them in the controller; used with 2+ cores and a local scratch)",
        default=1)

    def schema_problems(self) -> Iterator[Problem]:
        if self.max_size is not None and self.max_size < 1:
            yield Problem(("max_size",), "max_size must be at least 1")
        if self.throttle is not None and self.throttle < 1:
            yield Problem(("throttle",), "throttle must be at least 1")
        if not 0 <= self.prepare_processes <= 64:
            yield Problem(("prepare_processes",), "prepare_processes must be 0..64")


@dataclasses.dataclass(frozen=True, slots=True)
class DefaultsConfig:
    """Resources a job gets when nothing else asks for more or less."""

    cpus: int = setting("CPUs per task", default=1)
    mem_mb: int = setting("memory per node", key="mem", default=2048,
                          parse=_parse_memory("defaults.mem"), json=_memory_json())
    time_minutes: int = setting("wall time", key="time", default=60,
                                parse=_parse_minutes("defaults.time"), json=_minutes_json())

    def schema_problems(self) -> Iterator[Problem]:
        if self.cpus < 1:
            yield Problem(("cpus",), "cpus must be at least 1")


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failure kind is retried: attempts in total, and resource escalation."""

    max_attempts: int = setting("attempts in total, the first included (1: never retry)")
    mem_factor: float = setting("multiply memory by this on each retry", default=1.0)
    time_factor: float = setting("multiply wall time by this on each retry", default=1.0)

    def schema_problems(self) -> Iterator[Problem]:
        if not 1 <= self.max_attempts <= 20:
            yield Problem(("max_attempts",), "max_attempts must be 1..20")
        for key in ("mem_factor", "time_factor"):
            if not 1.0 <= getattr(self, key) <= 16.0:
                yield Problem((key,), f"{key} must be between 1 and 16")


#: Retry defaults per failure kind; a site's ``retry`` entries replace single kinds.
DEFAULT_RETRY: Mapping[FailureKind, RetryPolicy] = types.MappingProxyType({
    FailureKind.GEAR_ERROR: RetryPolicy(max_attempts=1),
    FailureKind.OOM: RetryPolicy(max_attempts=2, mem_factor=2.0),
    FailureKind.TIMEOUT: RetryPolicy(max_attempts=2, time_factor=2.0),
    FailureKind.NODE_FAILURE: RetryPolicy(max_attempts=3),
    FailureKind.PREEMPTED: RetryPolicy(max_attempts=5),
    FailureKind.CANCELLED: RetryPolicy(max_attempts=1),
    FailureKind.BOOT_FAILURE: RetryPolicy(max_attempts=3),
    FailureKind.INPUT_STAGING: RetryPolicy(max_attempts=3),
    FailureKind.OUTPUT_STAGING: RetryPolicy(max_attempts=3),
    FailureKind.INVALID_METADATA: RetryPolicy(max_attempts=1),
    FailureKind.REJECTED: RetryPolicy(max_attempts=1),
    FailureKind.LOST: RetryPolicy(max_attempts=2),
})


# `setting` returns dataclasses.field(...) (RUF009 cannot know that).
@dataclasses.dataclass(frozen=True, slots=True)
class SiteConfig:
    """A cluster (or this host) that hpcgear runs gears on."""

    name: str = setting("short site name used in tags, paths and logs",
                        parse=_parse_site_name)
    scratch_root: str = setting(
        "per-user scratch directory on the compute nodes; placeholders {user} and {site}",
        parse=_parse_scratch_template)
    runtime: RuntimeConfig = setting("container runtime on the compute nodes")  # noqa: RUF009
    storage_root: str | None = setting(
        "ignored (deprecated): outputs are published to the instance's object store, "
        "`storage_root` of the hpcgear config file; `site validate` warns when it is set",
        default=None, parse=_parse_abs_path("storage_root"))
    scratch_user: Literal["service", "owner"] = setting(
        "whose name fills {user} in scratch_root. service (default): the account jobs run as "
        "(transport.user over SSH, else the controller's login), so a service account never "
        "writes into a researcher's scratch; owner: the hpcgear user who owns the job (only "
        "where that user's scratch is writable by the service account)", default="service")
    scheduler: Literal["slurm", "local"] = setting(
        "slurm: submit with sbatch; local: run the same script on this host", default="slurm")
    transport: TransportConfig = setting("how scheduler commands are run",  # noqa: RUF009
                                         default_factory=TransportConfig)
    modules: tuple[str, ...] = setting(
        "shell lines run before every scheduler command, in order (e.g. `module use "
        "/curc/sw/modules/slurm` then `module load slurm/alpine`)",
        default=(), item_check=_check_line)
    partitions: Mapping[str, PartitionConfig] = setting(
        "partitions jobs may use, by SLURM name",
        default_factory=lambda: types.MappingProxyType({}))
    routing: RoutingConfig = setting("tag routing", default_factory=RoutingConfig)  # noqa: RUF009
    limits: LimitsConfig = setting("queue limits", default_factory=LimitsConfig)  # noqa: RUF009
    poll_interval_seconds: int = setting(
        "seconds between squeue polls", key="poll_interval", default=60)
    array: ArrayConfig = setting("job array settings", default_factory=ArrayConfig)  # noqa: RUF009
    extra_sbatch_options: tuple[str, ...] = setting(
        "extra #SBATCH options for every job (e.g. --constraint=ib); may not override "
        "options hpcgear owns", default=(), item_check=check_sbatch_option)
    template_dir: str | None = setting(
        "directory whose job.sbatch.j2 / array.sbatch.j2 replace the shipped templates",
        default=None, parse=_parse_abs_path("template_dir"))
    defaults: DefaultsConfig = setting("default resources", default_factory=DefaultsConfig)  # noqa: RUF009
    retry: Mapping[str, RetryPolicy] = setting(
        "retry policy per failure kind (replaces the built-in policy of that kind)",
        default_factory=lambda: types.MappingProxyType({}))
    api_url: str | None = setting(
        "URL of `hpcgear serve` as compute nodes reach it (http[s]://host:port); jobs of "
        "gears with an api-key input get a job-scoped key for it", default=None,
        parse=_parse_api_url)
    scratch_gc_age_minutes: int = setting(
        "job directories older than this are removed from scratch (e.g. 7d)",
        key="scratch_gc_age", default=7 * 1440, parse=_parse_minutes("scratch_gc_age"),
        json=_minutes_json())

    def schema_problems(self) -> Iterator[Problem]:
        for pname in self.partitions:
            if not SLURM_NAME_RE.fullmatch(pname):
                yield Problem(("partitions", pname), f"partition name {pname!r} is not valid",
                              "use letters, digits, '_', '.' and '-'")
        defaults = [p for p, cfg in self.partitions.items() if cfg.default]
        if self.scheduler == "slurm" and not self.partitions:
            yield Problem(("scheduler",), "a slurm site needs at least one partition",
                          "add `partitions:` with the partitions jobs may use")
        if len(defaults) > 1:
            yield Problem(("partitions", defaults[1], "default"),
                          f"more than one default partition: {', '.join(defaults)}",
                          "mark exactly one partition `default: true`")
        if len(self.partitions) > 1 and not defaults:
            yield Problem(("partitions",), "no partition is marked default",
                          "mark exactly one partition `default: true`")
        for tag, target in self.routing.partition_tags.items():
            if target not in self.partitions:
                yield Problem(("routing", "partition_tags", tag),
                              f"tag {tag!r} routes to unknown partition {target!r}",
                              f"partitions here: {', '.join(sorted(self.partitions)) or 'none'}")
        valid_kinds = sorted(k.value for k in FailureKind)
        for kind in self.retry:
            if kind not in valid_kinds:
                yield Problem(("retry", kind), f"unknown failure kind {kind!r}",
                              f"valid kinds: {', '.join(valid_kinds)}")
        if self.poll_interval_seconds < 1:
            yield Problem(("poll_interval",), "poll_interval must be at least 1 second")
        if (self.array.max_size is not None and self.array.throttle is not None
                and self.array.throttle > self.array.max_size):
            yield Problem(("array", "throttle"), "array throttle is larger than array max_size")
        yield from self._defaults_problems()
        if self.scratch_gc_age_minutes < 60:
            yield Problem(("scratch_gc_age",), "scratch_gc_age must be at least 1h",
                          "running jobs keep their directories; give them time")

    def _defaults_problems(self) -> Iterator[Problem]:
        """Site defaults every partition must allow (a job asking for nothing gets them)."""
        d = self.defaults
        for pname, p in self.partitions.items():
            checks = (
                ("time", p.max_time_minutes, d.time_minutes, format_slurm_time, "max_time"),
                ("mem", p.max_mem_mb, d.mem_mb, format_memory, "max_mem"),
                ("cpus", p.max_cpus, d.cpus, str, "max_cpus"),
            )
            for key, limit, value, fmt, limit_key in checks:
                if limit is not None and value > limit:
                    yield Problem(
                        ("defaults", key),
                        f"defaults.{key} {fmt(value)} exceeds partition {pname}'s "
                        f"{limit_key} {fmt(limit)}; every job sent there without its own "
                        f"{key} would be refused",
                        f"lower defaults.{key} to at most {fmt(limit)} or raise "
                        f"partitions.{pname}.{limit_key}",
                    )

    def warnings(self) -> list[str]:
        """Things that are allowed but probably not what the admin meant."""
        out = []
        if self.storage_root is not None:
            out.append(
                f"site {self.name}: storage_root is ignored; outputs are published to the "
                "object store named by storage_root in the hpcgear config file (remove it "
                "from the site)"
            )
        if self.scratch_user == "owner" and self.transport.kind == "ssh":
            out.append(
                f"site {self.name}: scratch_user: owner puts jobs run by the SSH account "
                f"{self.service_user} into each researcher's scratch; make sure that is "
                "writable by that account and meant"
            )
        return out

    # -- queries -----------------------------------------------------------------------

    @property
    def default_partition(self) -> str | None:
        """The partition marked default (or the only one), None if there are none."""
        for name, cfg in self.partitions.items():
            if cfg.default:
                return name
        if len(self.partitions) == 1:
            return next(iter(self.partitions))
        return None

    def partition(self, name: str) -> PartitionConfig:
        """The partition ``name``; ResourceError naming the valid ones if unknown."""
        try:
            return self.partitions[name]
        except KeyError:
            known = ", ".join(sorted(self.partitions)) or "none"
            raise ResourceError(
                f"site {self.name} has no partition {name!r}",
                f"partitions on {self.name}: {known}",
            ) from None

    @property
    def service_user(self) -> str:
        """The account jobs run as: the SSH login, else the controller's own login.

        hpcgear never switches users: every job runs under the account that runs
        the scheduler commands.
        """
        if self.transport.kind == "ssh" and self.transport.user:
            return self.transport.user
        import getpass

        return getpass.getuser()

    def scratch_user_for(self, owner: str) -> str:
        """Whose name fills ``{user}`` for a job owned by hpcgear user ``owner``."""
        return owner if self.scratch_user == "owner" else self.service_user

    def render_scratch_root(self, user: str) -> str:
        """The scratch root of a job owned by hpcgear user ``user``.

        ``{user}`` is the job owner only with ``scratch_user: owner``; by default it
        is :attr:`service_user`, the account the job runs as (name checked).
        """
        name = check_user_name(self.scratch_user_for(check_user_name(user)))
        return self.scratch_root.replace("{user}", name).replace("{site}", self.name)

    def retry_policy(self, kind: FailureKind | str) -> RetryPolicy:
        """The retry policy for a failure kind (site entry, else the built-in default)."""
        key = FailureKind(kind)
        return self.retry.get(key.value) or DEFAULT_RETRY[key]

    def routes_here(self, tags: Iterable[str]) -> bool:
        """Whether any of ``tags`` is one of this site's routing tags."""
        wanted = set(self.routing.site_tags) | {self.name}
        return any(t in wanted for t in tags)

    def with_roots(
        self,
        *,
        scratch_root: str | None = None,
        storage_root: str | None = None,
        image_cache: str | None = None,
    ) -> SiteConfig:
        """A copy with other scratch/storage/image-cache roots (validated like the YAML).

        Used for the embedded local site, whose roots come from the user's settings.
        """
        out = self
        try:
            if scratch_root is not None:
                out = dataclasses.replace(out, scratch_root=_parse_scratch_template(scratch_root))
            if storage_root is not None:  # kept for callers; sites no longer use it
                _parse_abs_path("storage_root")(storage_root)
            if image_cache is not None:
                runtime = dataclasses.replace(
                    out.runtime, image_cache=_parse_abs_path("image_cache")(image_cache))
                out = dataclasses.replace(out, runtime=runtime)
        except SchemaError as exc:
            raise ConfigError(f"site {self.name}: {exc.message}", exc.hint) from None
        return out


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def load_site_text(text: str, source: str = "<site>", *, all_errors: bool = False) -> SiteConfig:
    """Parse and validate site YAML ``text``; ``source`` names it in error messages.

    With ``all_errors`` every problem is reported at once (``SchemaErrors``).
    """
    raw = load_yaml_with_lines(text, source)
    if raw is None:
        raise SchemaError(f"{source}:1: the site config is empty", "start with `name: mysite`")
    return build(SiteConfig, raw, Where(source, "", getattr(raw, "line", 1)),
                 collect_all=all_errors)


def load_site(path: str | Path, *, all_errors: bool = False) -> SiteConfig:
    """Load a site YAML file (``all_errors``: report every problem at once).

    Raises
    ------
    ConfigError
        If the file cannot be read.
    SchemaError
        If it does not match the schema; the message names ``file:line`` and the key.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read site config {p}: {exc.strerror or exc}",
            "check the path in `sites:` of your hpcgear config",
        ) from None
    return load_site_text(decode_utf8(data, str(p)), str(p), all_errors=all_errors)


def site_as_dict(site: SiteConfig) -> dict[str, Any]:
    """The site as plain JSON-able data (mappings as dicts, tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    out = plain(site)
    assert isinstance(out, dict)
    out["default_partition"] = site.default_partition
    out["service_user"] = site.service_user
    return out


def site_schema_json() -> dict[str, Any]:
    """The site schema as JSON Schema (draft 2020-12), for editors and docs."""
    return json_schema(SiteConfig, title="hpcgear site configuration",
                       schema_id="https://hpcgear.invalid/schemas/site.json")
