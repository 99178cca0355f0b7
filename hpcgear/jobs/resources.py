"""Resource resolution: which CPUs, memory, time, GPUs and partition a job gets.

Pure: a site config, the reserved-key overrides of each layer and the job's
tags in; :class:`ResolvedResources` (a :class:`Resources` plus an explanation of
which layer set what, printed by ``--dry-run``) out. Precedence, lowest first::

    site defaults < gear manifest defaults < rule config < job config < job tags

Config layers use the reserved keys of :mod:`hpcgear.gears.reserved`
(``slurm-cpu``, ``slurm-ram`` *per CPU*, ``slurm-time``, ``slurm-partition`` ...).
Tags use a short vocabulary, memory *per node*::

    cpu=4  ram=16G  time=2h  gpu  gpu=2  partition=NAME  qos=NAME  account=NAME

The partition is the one asked for explicitly (highest layer wins), else the
one a tag routes to (``routing.partition_tags``; ``gpu=2`` routes like ``gpu``),
else the site's default partition. A request above that partition's limits
raises :class:`ResourceError` naming the limit and the partition, before any
sbatch is run (SLURM would accept it and leave it pending forever).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcgear.config.site import SLURM_NAME_RE, PartitionConfig, SiteConfig
from hpcgear.errors import ResourceError
from hpcgear.gears.reserved import ResourceOverrides, parse_reserved
from hpcgear.spec import Resources
from hpcgear.units import (
    format_memory,
    format_slurm_time,
    gpus_in_gres,
    parse_count,
    parse_memory_mb,
    parse_time_minutes,
)

__all__ = [
    "TAG_KEYS",
    "ResolvedResources",
    "ResourceChoice",
    "TagRequest",
    "check_partition_limits",
    "parse_resource_tags",
    "resolve_resources",
]

#: Tag keys that request resources, with their canonical meaning.
TAG_KEYS: Mapping[str, str] = {
    "cpu": "cpus",
    "cpus": "cpus",
    "ram": "mem",
    "mem": "mem",
    "time": "time",
    "gpu": "gpus",
    "gpus": "gpus",
    "partition": "partition",
    "qos": "qos",
    "account": "account",
}
MAX_GPUS = 64

Layer = ResourceOverrides | Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class ResourceChoice:
    """One line of the explanation: ``field`` is ``value`` because of ``source``."""

    field: str
    value: str
    source: str

    def __str__(self) -> str:
        return f"{self.field:<10} {self.value:<14} from {self.source}"


@dataclass(frozen=True, slots=True)
class ResolvedResources:
    """The resolved request plus why each value is what it is."""

    resources: Resources
    explanation: tuple[ResourceChoice, ...]
    writable: bool | None = None  # singularity-writable, if any layer set it
    debug: bool | None = None  # singularity-debug, if any layer set it
    notes: tuple[str, ...] = ()  # warnings for the user (gear defaults this site lacks)

    def explain(self) -> list[str]:
        """Human-readable lines, one per resource, for ``--dry-run``."""
        return [str(c) for c in self.explanation]


@dataclass(frozen=True, slots=True)
class TagRequest:
    """Resources requested through tags; ``sources`` maps a field to its tag."""

    cpus: int | None = None
    mem_mb: int | None = None
    time_minutes: int | None = None
    gpus: int | None = None
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    sources: Mapping[str, str] | None = None


def _tag_key(tag: str) -> tuple[str, str | None]:
    key, sep, value = tag.strip().partition("=")
    return key.strip().lower(), (value.strip() if sep else None)


def parse_resource_tags(tags: Iterable[str]) -> TagRequest:
    """Read the resource tags among ``tags`` (other tags are ignored).

    Raises
    ------
    ResourceError
        Naming the tag when a resource tag's value is malformed or given twice
        with different values.
    """
    found: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for tag in tags:
        key, value = _tag_key(tag)
        canon = TAG_KEYS.get(key)
        if canon is None:
            continue
        parsed = _parse_tag_value(tag, canon, value)
        if canon in found and found[canon] != parsed:
            raise ResourceError(
                f"tags {sources[canon]!r} and {tag!r} ask for different {canon}",
                "keep one of the two tags",
            )
        found[canon] = parsed
        sources[canon] = tag
    return TagRequest(
        cpus=found.get("cpus"),
        mem_mb=found.get("mem"),
        time_minutes=found.get("time"),
        gpus=found.get("gpus"),
        partition=found.get("partition"),
        qos=found.get("qos"),
        account=found.get("account"),
        sources=sources,
    )


def _parse_tag_value(tag: str, canon: str, value: str | None) -> Any:
    what = f"tag {tag!r}"
    if canon == "gpus" and value is None:
        return 1
    if value is None or value == "":
        raise ResourceError(
            f"{what} needs a value",
            f"write it as {canon}=VALUE, e.g. "
            + {"cpus": "cpu=4", "mem": "ram=16G", "time": "time=2h", "gpus": "gpu=2"}.get(
                canon, f"{canon}=NAME"
            ),
        )
    if canon == "cpus":
        n = parse_count(value, what=what, maximum=4096)
        if n < 1:
            raise ResourceError(f"{what} must ask for at least 1 CPU", "e.g. cpu=4")
        return n
    if canon == "gpus":
        return parse_count(value, what=what, maximum=MAX_GPUS)
    if canon == "mem":
        return parse_memory_mb(value, what=what)
    if canon == "time":
        return parse_time_minutes(value, what=what)
    if not SLURM_NAME_RE.fullmatch(value):
        raise ResourceError(
            f"{what} does not name a valid {canon}", "use letters, digits, '_', '.' and '-' only"
        )
    return value


def _as_overrides(layer: Layer) -> ResourceOverrides:
    if layer is None:
        return ResourceOverrides()
    if isinstance(layer, ResourceOverrides):
        return layer
    return parse_reserved(layer)


def resolve_resources(
    site: SiteConfig,
    *,
    manifest: Layer = None,
    rule: Layer = None,
    job: Layer = None,
    tags: Sequence[str] = (),
) -> ResolvedResources:
    """Resolve one job's resources on ``site`` and check the partition limits.

    Parameters
    ----------
    manifest, rule, job
        Each a :class:`ResourceOverrides` (from ``split_reserved``) or a plain
        config mapping whose reserved keys are parsed here; ``None`` for none.
    tags
        The job's tags; resource tags (``cpu=4``, ``gpu``...) and routing tags apply.

    Raises
    ------
    ResourceError
        If a value is malformed, the partition is unknown or ambiguous, or the
        request exceeds the chosen partition's limits.
    """
    d = site.defaults
    picked: dict[str, tuple[Any, str]] = {
        "cpus": (d.cpus, "site default"),
        "time": (d.time_minutes, "site default"),
        "nodes": (1, "built-in default"),
        "ntasks": (1, "built-in default"),
    }
    mem: tuple[str, int, str] = ("node", d.mem_mb, "site default")
    gpu_req: tuple[str, Any, str] | None = None
    writable: bool | None = None
    debug: bool | None = None
    names: dict[str, tuple[str, str]] = {}

    notes: list[str] = []
    for label, layer in (("gear manifest", manifest), ("rule", rule), ("job config", job)):
        ov = _as_overrides(layer)
        for fld in _cleared_names(layer):  # `--config slurm-partition=` clears lower layers
            names.pop(fld, None)
        for fld, value in (
            ("cpus", ov.cpus),
            ("time", ov.time_minutes),
            ("nodes", ov.nodes),
            ("ntasks", ov.ntasks),
        ):
            if value is not None:
                picked[fld] = (value, label)
        if ov.mem_per_cpu_mb is not None:
            mem = ("cpu", ov.mem_per_cpu_mb, label)
        elif ov.mem_mb is not None:
            mem = ("node", ov.mem_mb, label)
        if ov.gres is not None:
            gpu_req = ("gres", ov.gres, label)
        for fld, text in (("partition", ov.partition), ("qos", ov.qos), ("account", ov.account)):
            if text is not None:
                names[fld] = (text, label)
        writable = ov.writable if ov.writable is not None else writable
        debug = ov.debug if ov.debug is not None else debug

    _drop_foreign_gear_names(site, names, notes)
    tr = parse_resource_tags(tags)
    src = tr.sources or {}
    for fld, tvalue, key in (("cpus", tr.cpus, "cpus"), ("time", tr.time_minutes, "time")):
        if tvalue is not None:
            picked[fld] = (tvalue, f"tag {src[key]}")
    if tr.mem_mb is not None:
        mem = ("node", tr.mem_mb, f"tag {src['mem']}")
    if tr.gpus is not None:
        gpu_req = ("count", tr.gpus, f"tag {src['gpus']}")
    for fld, text in (("partition", tr.partition), ("qos", tr.qos), ("account", tr.account)):
        if text is not None:
            names[fld] = (text, f"tag {src[fld]}")

    partition, partition_source = _choose_partition(site, names.get("partition"), tags)
    pcfg = site.partition(partition) if partition is not None else None

    cpus, cpus_src = picked["cpus"]
    if mem[0] == "cpu":
        mem_mb, mem_src = mem[1] * cpus, f"{mem[2]} ({format_memory(mem[1])} per CPU x {cpus})"
    else:
        mem_mb, mem_src = mem[1], mem[2]

    gpus, gres, gpu_src = 0, None, "site default"
    if gpu_req is not None and gpu_req[0] == "gres":
        gres, gpus, gpu_src = gpu_req[1], gpus_in_gres(gpu_req[1]), gpu_req[2]
    elif gpu_req is not None:
        gpus, gpu_src = gpu_req[1], gpu_req[2]
        if gpus > 0:
            gres = f"{(pcfg.gres if pcfg else None) or 'gpu'}:{gpus}"

    qos, qos_src = names.get("qos", (pcfg.qos if pcfg else None, f"partition {partition}"))
    account, account_src = names.get(
        "account", (pcfg.account if pcfg else None, f"partition {partition}")
    )

    resources = Resources(
        cpus=cpus,
        mem_mb=mem_mb,
        time_minutes=picked["time"][0],
        gpus=gpus,
        gres=gres,
        nodes=picked["nodes"][0],
        ntasks=picked["ntasks"][0],
        partition=partition,
        qos=qos,
        account=account,
    )
    explanation = [
        ResourceChoice("partition", partition or "(none)", partition_source),
        ResourceChoice("cpus", str(cpus), cpus_src),
        ResourceChoice("mem", format_memory(mem_mb), mem_src),
        ResourceChoice("time", format_slurm_time(resources.time_minutes), picked["time"][1]),
        ResourceChoice("gpus", str(gpus), gpu_src),
    ]
    if gres:
        explanation.append(ResourceChoice("gres", gres, gpu_src))
    if qos:
        explanation.append(ResourceChoice("qos", qos, qos_src))
    if account:
        explanation.append(ResourceChoice("account", account, account_src))
    if resources.nodes != 1 or resources.ntasks != 1:
        explanation.append(ResourceChoice("nodes", str(resources.nodes), picked["nodes"][1]))
        explanation.append(ResourceChoice("ntasks", str(resources.ntasks), picked["ntasks"][1]))

    if pcfg is not None and partition is not None:
        check_partition_limits(
            site, partition, resources, sources={c.field: c.source for c in explanation}
        )
    return ResolvedResources(
        resources, tuple(explanation), writable=writable, debug=debug, notes=tuple(notes)
    )


_NAME_KEYS = {"slurm-partition": "partition", "slurm-qos": "qos", "slurm-account": "account"}


def _cleared_names(layer: Layer) -> list[str]:
    """Name fields a config layer clears with an empty value (``slurm-partition=``)."""
    if layer is None or isinstance(layer, ResourceOverrides):
        return []
    return [
        fld
        for key, fld in _NAME_KEYS.items()
        if key in layer and isinstance(layer[key], str) and not layer[key].strip()
    ]


def _drop_foreign_gear_names(
    site: SiteConfig, names: dict[str, tuple[str, str]], notes: list[str]
) -> None:
    """Gear defaults naming a partition/QOS/account this site lacks give way to the site's.

    A gear written for one cluster (``slurm-partition: blanca-ics``) stays usable on
    every other: its partition is dropped when the site has no such partition, and
    its QOS/account when the site names them on none of its partitions (or when the
    gear's partition was dropped). Values from a rule, the job or a tag are kept, so
    a user's explicit choice that does not exist is still refused.
    """
    gear = "gear manifest"
    part = names.get("partition")
    dropped_partition = False
    if part is not None and part[1] == gear and part[0] not in site.partitions:
        del names["partition"]
        dropped_partition = True
        notes.append(
            f"the gear's default partition {part[0]!r} does not exist on site {site.name}; "
            f"using the site's partition instead ({', '.join(sorted(site.partitions)) or 'none'})"
        )
    for fld in ("qos", "account"):
        got = names.get(fld)
        if got is None or got[1] != gear:
            continue
        known = {getattr(p, fld) for p in site.partitions.values()} - {None}
        if dropped_partition or got[0] not in known:
            del names[fld]
            notes.append(
                f"the gear's default {fld} {got[0]!r} is not one site {site.name} uses; "
                f"the partition's own {fld} applies"
            )


def _choose_partition(
    site: SiteConfig, explicit: tuple[str, str] | None, tags: Sequence[str]
) -> tuple[str | None, str]:
    if explicit is not None:
        return explicit[0], explicit[1]
    routed: dict[str, str] = {}
    for tag in tags:
        key, _ = _tag_key(tag)
        target = site.routing.partition_tags.get(key) or site.routing.partition_tags.get(tag)
        if target is not None:
            routed.setdefault(target, tag)
    if len(routed) > 1:
        shown = ", ".join(f"{t!r} -> {p}" for p, t in sorted(routed.items()))
        raise ResourceError(
            f"tags route the job to more than one partition on {site.name}: {shown}",
            "add a partition=NAME tag to choose one",
        )
    if routed:
        ((name, tag),) = routed.items()
        return name, f"tag routing ({tag})"
    default = site.default_partition
    return default, ("site default partition" if default else "site has no partitions")


def check_partition_limits(
    site: SiteConfig,
    partition: str,
    resources: Resources,
    *,
    sources: Mapping[str, str] | None = None,
) -> None:
    """Raise ResourceError if ``resources`` exceed ``partition``'s configured limits."""
    pcfg = site.partition(partition)
    src = sources or {}

    def fail(what: str, asked: str, limit: str, fits: str) -> ResourceError:
        origin = f" (from {src[what]})" if what in src else ""
        others = _partitions_allowing(site, partition, fits, resources)
        hint = f"ask for at most {limit}"
        if others:
            hint += f", or use a partition that allows it: {', '.join(others)}"
        return ResourceError(
            f"{what} {asked}{origin} exceeds the limit {limit} of partition {partition} "
            f"on site {site.name}",
            hint,
        )

    problems: list[ResourceError] = []
    if pcfg.max_time_minutes is not None and resources.time_minutes > pcfg.max_time_minutes:
        problems.append(fail(
            "time",
            format_slurm_time(resources.time_minutes),
            format_slurm_time(pcfg.max_time_minutes),
            "time",
        ))
    if pcfg.max_mem_mb is not None and resources.mem_mb > pcfg.max_mem_mb:
        problems.append(
            fail("mem", format_memory(resources.mem_mb), format_memory(pcfg.max_mem_mb), "mem"))
    if pcfg.max_cpus is not None and resources.cpus > pcfg.max_cpus:
        problems.append(fail("cpus", str(resources.cpus), str(pcfg.max_cpus), "cpus"))
    if resources.gpus > pcfg.max_gpus:
        problems.append(fail("gpus", str(resources.gpus), str(pcfg.max_gpus), "gpus"))
    if len(problems) == 1:
        raise problems[0]
    if problems:  # every limit at once, so one fix covers them all
        raise ResourceError(
            "; ".join(p.message for p in problems), "; ".join(p.hint or "" for p in problems)
        )


def _fits(cfg: PartitionConfig, dimension: str, r: Resources) -> bool:
    if dimension == "time":
        return cfg.max_time_minutes is None or r.time_minutes <= cfg.max_time_minutes
    if dimension == "mem":
        return cfg.max_mem_mb is None or r.mem_mb <= cfg.max_mem_mb
    if dimension == "cpus":
        return cfg.max_cpus is None or r.cpus <= cfg.max_cpus
    return r.gpus <= cfg.max_gpus


def _partitions_allowing(site: SiteConfig, current: str, dimension: str, r: Resources) -> list[str]:
    return sorted(
        name
        for name, cfg in site.partitions.items()
        if name != current and _fits(cfg, dimension, r)
    )
