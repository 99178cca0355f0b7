"""Reserved HPC config keys: resource requests carried inside a gear's config.

Gears written for Flywheel's HPC client ask for resources through plain config
keys (``slurm-cpu``, ``slurm-ram``, ...). Some declare them in their manifest,
so the gear reads them from ``config.json`` too (the Intermountain
Neuroimaging gears do); others rely on the executor to recognise them. hpcgear
recognises every key in :data:`RESERVED_KEYS` whether declared or not, and
validates it as a resource *before* any value can reach an sbatch script.

Semantics follow the Flywheel HPC client so a gear gets the resources it got
there:

* ``slurm-cpu`` / ``scheduler_cpu``: CPUs per task (``--cpus-per-task``).
* ``slurm-ram`` / ``scheduler_ram``: memory **per CPU** (the client renders it
  as ``--mem-per-cpu``, and the INC manifests say so in their descriptions).
  :attr:`ResourceOverrides.mem_mb` is therefore the per-CPU value times the
  CPU count; :attr:`ResourceOverrides.mem_per_cpu_mb` keeps the value as written.
* ``slurm-time``: wall time, SLURM spelling (a bare number is minutes) or ``2h``.
* ``singularity-debug`` / ``singularity-writable``: booleans for the runtime.

An empty string means "not set" (gears use ``""`` defaults for "site default"),
and so does 0 for the CPU and memory keys: the HPC-ready gears imaging centres
publish ship ``slurm-cpu: 0`` / ``slurm-ram: "0"`` as "use the site default".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from hpcgear.errors import GearConfigError, ResourceError
from hpcgear.spec import Resources
from hpcgear.units import parse_count, parse_memory_mb, parse_time_minutes

CPU_KEYS = ("slurm-cpu", "scheduler_cpu")
RAM_KEYS = ("slurm-ram", "scheduler_ram")
BOOLEAN_KEYS = ("singularity-debug", "singularity-writable")

RESERVED_KEYS: tuple[str, ...] = (
    "slurm-cpu",
    "slurm-ram",
    "slurm-time",
    "slurm-partition",
    "slurm-qos",
    "slurm-account",
    "slurm-gres",
    "slurm-nodes",
    "slurm-ntasks",
    "scheduler_cpu",
    "scheduler_ram",
    "singularity-debug",
    "singularity-writable",
)
RESERVED_KEY_SET = frozenset(RESERVED_KEYS)

# Partition, QOS and account names. The leading character may not be "-" so a
# value can never read as an option, whatever the renderer does with it.
SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.\-]*$")
# One GRES item: name[:type][:count], e.g. gpu, gpu:2, gpu:a100:2. A type must
# contain a non-digit so "gpu:2" reads as a count. Items may be comma-separated.
_GRES_ITEM_RE = re.compile(
    r"^[A-Za-z][A-Za-z0-9_\-]*"
    r"(?::[A-Za-z0-9_.\-]*[A-Za-z_.\-][A-Za-z0-9_.\-]*)?"
    r"(?::[1-9][0-9]*)?$"
)
_TRUE_WORDS = frozenset({"true", "yes", "1"})
_FALSE_WORDS = frozenset({"false", "no", "0"})

RESERVED_HINT = (
    "reserved HPC keys take SLURM values: slurm-cpu/slurm-nodes/slurm-ntasks a whole number, "
    "slurm-ram a size per CPU like 4G, slurm-time like 2h or 1-00:00:00, "
    "slurm-partition/slurm-qos/slurm-account a name, slurm-gres like gpu:1, "
    "singularity-debug/singularity-writable true or false"
)


MAX_CPUS = 4096
MAX_NODES = 10_000
MAX_NTASKS = 100_000


@dataclass(frozen=True, slots=True)
class ResourceOverrides:
    """Resource values taken from reserved config keys, normalised; None = not given.

    ``mem_mb`` is per node, as :class:`hpcgear.spec.Resources` wants it:
    ``mem_per_cpu_mb`` times ``cpus`` (1 when no CPU key was given).
    """

    cpus: int | None = None
    mem_mb: int | None = None
    mem_per_cpu_mb: int | None = None
    time_minutes: int | None = None
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    gres: str | None = None
    nodes: int | None = None
    ntasks: int | None = None
    debug: bool | None = None
    writable: bool | None = None

    @property
    def is_empty(self) -> bool:
        """True when no reserved key set anything."""
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))

    def apply_to(self, base: Resources) -> Resources:
        """Return ``base`` with every given value replaced.

        Per-CPU memory is multiplied by the *resulting* CPU count, so a site or
        user CPU request combined with a gear's ``slurm-ram`` keeps the
        ``--mem-per-cpu`` meaning. Partition limits are checked elsewhere.
        """
        cpus = self.cpus if self.cpus is not None else base.cpus
        mem_mb = base.mem_mb
        if self.mem_per_cpu_mb is not None:
            mem_mb = self.mem_per_cpu_mb * cpus
        return dataclasses.replace(
            base,
            cpus=cpus,
            mem_mb=mem_mb,
            time_minutes=_pick(self.time_minutes, base.time_minutes),
            partition=_pick(self.partition, base.partition),
            qos=_pick(self.qos, base.qos),
            account=_pick(self.account, base.account),
            gres=_pick(self.gres, base.gres),
            nodes=_pick(self.nodes, base.nodes),
            ntasks=_pick(self.ntasks, base.ntasks),
        )


def _pick(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def is_reserved(key: str) -> bool:
    """Whether ``key`` is a reserved HPC key."""
    return key in RESERVED_KEY_SET


def parse_reserved(config: Mapping[str, Any]) -> ResourceOverrides:
    """Validate and normalise the reserved keys of ``config``.

    Raises
    ------
    GearConfigError
        Naming every bad reserved key at once, with the accepted spelling.
    """
    overrides, problems = check_reserved(config)
    if problems:
        raise GearConfigError(_summary(problems), RESERVED_HINT)
    return overrides


def split_reserved(
    config: Mapping[str, Any], *, declared: Collection[str] = ()
) -> tuple[dict[str, Any], ResourceOverrides]:
    """Split ``config`` into the gear's config and the resource overrides.

    Reserved keys the manifest declares (``declared``, e.g.
    ``manifest.config_names``) stay in the gear config as well, because the
    gear reads them from ``config.json``; undeclared ones are removed.
    """
    overrides = parse_reserved(config)
    declared_set = frozenset(declared)
    gear_config = {
        key: value
        for key, value in config.items()
        if key not in RESERVED_KEY_SET or key in declared_set
    }
    return gear_config, overrides


def check_reserved(config: Mapping[str, Any]) -> tuple[ResourceOverrides, list[str]]:
    """Parse the reserved keys; return the overrides and one message per bad key.

    Library callers that collect problems from several sources (config
    validation) use this; others use :func:`parse_reserved`.
    """
    problems: list[str] = []

    def given(key: str) -> Any:
        value = config.get(key)
        if isinstance(value, str) and not value.strip():
            return None
        if key in _ZERO_IS_UNSET and _is_zero(value):
            return None
        return value

    def attempt(key: str, parse: Any) -> Any:
        value = given(key)
        if value is None:
            return None
        try:
            return parse(value, key)
        except ResourceError as exc:
            problems.append(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
            return None

    cpus = _one_of(CPU_KEYS, {k: attempt(k, _cpus) for k in CPU_KEYS}, config, problems)
    per_cpu = _one_of(RAM_KEYS, {k: attempt(k, _memory) for k in RAM_KEYS}, config, problems)
    overrides = ResourceOverrides(
        cpus=cpus,
        mem_per_cpu_mb=per_cpu,
        mem_mb=None if per_cpu is None else per_cpu * (cpus or 1),
        time_minutes=attempt("slurm-time", _time),
        partition=attempt("slurm-partition", _slurm_name),
        qos=attempt("slurm-qos", _slurm_name),
        account=attempt("slurm-account", _slurm_name),
        gres=attempt("slurm-gres", _gres),
        nodes=attempt("slurm-nodes", _nodes),
        ntasks=attempt("slurm-ntasks", _ntasks),
        debug=attempt("singularity-debug", _boolean),
        writable=attempt("singularity-writable", _boolean),
    )
    return overrides, problems


_ZERO_IS_UNSET = frozenset(CPU_KEYS + RAM_KEYS)
_ZERO_WORD_RE = re.compile(r"\s*0+(?:\.0*)?\s*(?:[kmgtp]i?b?|b)?\s*", re.IGNORECASE)


def _is_zero(value: Any) -> bool:
    """0, 0.0, "0", "0G", "0 MB": a zero request, which means "not set"."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    return isinstance(value, str) and _ZERO_WORD_RE.fullmatch(value) is not None


def coerce_reserved_string(key: str, text: str) -> Any:
    """Convert a command-line string for an undeclared reserved key.

    Booleans become ``bool``; everything else stays a string and is validated
    by :func:`check_reserved`. Unknown words for a boolean are left as text so
    the validation names them.
    """
    if key in BOOLEAN_KEYS:
        word = text.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return text


def _one_of(
    keys: tuple[str, ...], parsed: dict[str, Any], config: Mapping[str, Any], problems: list[str]
) -> Any:
    values = {k: v for k, v in parsed.items() if v is not None}
    if len(set(values.values())) > 1:
        shown = " and ".join(f"{k}={config[k]!r}" for k in values)
        problems.append(f"{shown} disagree; they ask for the same resource")
        return None
    return next(iter(values.values()), None)


def _cpus(value: Any, key: str) -> int:
    return _positive(value, key, MAX_CPUS)


def _nodes(value: Any, key: str) -> int:
    return _positive(value, key, MAX_NODES)


def _ntasks(value: Any, key: str) -> int:
    return _positive(value, key, MAX_NTASKS)


def _positive(value: Any, key: str, maximum: int) -> int:
    if not isinstance(value, str | int):
        raise ResourceError(f"{key} {value!r} is not a whole number", "e.g. 4")
    n = parse_count(value, what=key, maximum=maximum)
    if n < 1:
        raise ResourceError(f"{key} must be at least 1, got {value!r}", f"use 1..{maximum}")
    return n


def _memory(value: Any, key: str) -> int:
    if not isinstance(value, str | int | float):
        raise ResourceError(f"{key} {value!r} is not a size", "write sizes like 4G or 512M")
    return parse_memory_mb(value, what=key)


def _time(value: Any, key: str) -> int:
    if not isinstance(value, str | int | float):
        raise ResourceError(
            f"{key} {value!r} is not a duration", "write durations like 2h or 1-12:00:00"
        )
    return parse_time_minutes(value, what=key)


def _slurm_name(value: Any, key: str) -> str:
    text = value.strip() if isinstance(value, str) else None
    if text is None or not SLURM_NAME_RE.fullmatch(text):
        raise ResourceError(
            f"{key} {value!r} is not a SLURM name",
            "use letters, digits, '_', '.' and '-' only (not starting with '-')",
        )
    return text


def _gres(value: Any, key: str) -> str:
    text = value.strip() if isinstance(value, str) else None
    if not text or not all(_GRES_ITEM_RE.fullmatch(item) for item in text.split(",")):
        raise ResourceError(
            f"{key} {value!r} is not a GRES request",
            "write name[:type][:count], e.g. gpu:1 or gpu:a100:2 (comma-separate several)",
        )
    return text


def _boolean(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ResourceError(f"{key} {value!r} is not a boolean", "use true or false")


def _summary(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"bad reserved HPC key: {problems[0]}"
    listed = "; ".join(f"{i}) {p}" for i, p in enumerate(problems, 1))
    return f"{len(problems)} bad reserved HPC keys: {listed}"
