"""Gear rules: the one typed schema for rule YAML files and ``hpcgear rule add``.

A rule file is YAML. Unknown keys are errors that name the valid keys and the
``file:line``; ``hpcgear rule apply FILE`` creates or updates every rule in it
(applying the same file twice changes nothing). Example::

    project: imaging/study1          # default project of the rules below
    rules:
      # File rule: runs when a file newly matches `when`.
      - name: dicom-to-nifti
        gear: dcm2niix               # NAME, or NAME@VERSION to pin
        auto_update: true            # follow new enabled versions of the gear
        when:
          all:
            - file.type: dicom
            - file.name: "*.dicom.zip"           # glob; "regex:..." for a regex
            - file.classification.Intent: Structural
            - not: {file.tags: skip-conversion}
            - any:
                - session.tags: priority
                - file.info.header.dicom.SliceThickness: {le: 1.5}
        input: dicom                 # the gear input the matching file becomes
        config: {compress_images: "y", bids_sidecar: "y"}
        tags: [hpc]                  # job tags: hpc routes to the cluster
        priority: medium             # low | medium | high | critical
        destination: container       # container | acquisition | session | subject | project

      # Session rule: runs on a session once prerequisite gears completed on it.
      - name: qc-after-checks
        gear: test-gear@1.0.0
        after:
          require: all               # all | any
          gears:
            - dcm2niix
            - {gear: completeness-check, analysis_label: "check*"}
        session_inputs:              # NAME: regex over the session's files, then the project's
          input_file: 'T1w.*\\.nii\\.gz$'
        fixed_inputs:                # NAME: PATH (pinned to its current version) or
          template: {path: imaging/study1/template.nii.gz, version: 2}
        retries: 2                   # automatic new attempts after failures
        tags: [hpc]
        enabled: true

A file may also be a bare YAML list of rules (each naming its ``project``).

Keys of a rule
--------------
``name`` (required), ``gear`` (required; ``NAME`` or ``NAME@VERSION``),
``project`` (``group/project``; default: the file's top-level ``project``),
``version`` (pin; same as ``gear: NAME@VERSION``), ``auto_update`` (follow the
latest enabled version; a rule without a version and without ``auto_update``
is pinned to the latest version when it is created), ``description``,
``when`` (conditions; required for file rules), ``input`` (file rules: the
input the matching file becomes; may be left out when the gear has exactly
one file input), ``fixed_inputs``, ``after`` (makes it a session rule: a list
of gear names, or ``{gears: [...], require: all|any}`` whose items are names
or ``{gear: NAME, analysis_label: GLOB}``), ``session_inputs``, ``retries``
(session rules, 0-10), ``config`` (validated against the gear manifest when
the rule is saved), ``tags``, ``priority``, ``destination`` (file rules) and
``enabled``.

Conditions
----------
``when`` is a mapping or a list. ``all: [...]``, ``any: [...]`` and
``not: {...}`` nest; several keys in one mapping, and the items of a list,
must all hold. A leaf is ``FIELD: VALUE`` (the field's default operator),
``FIELD: [A, B]`` (any of them) or ``FIELD: {OPERATOR: VALUE}``. Fields and
operators are listed in :mod:`hpcgear.rules.predicates`.

On the command line, ``--when`` takes ``FIELD=VALUE``, ``FIELD!=VALUE``,
``FIELD~REGEX``, ``FIELD?`` (exists) or a YAML flow mapping such as
``'{any: [{file.type: dicom}, {file.type: nifti}]}'``; several ``--when``
must all hold.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcgear.config.schema import Where, build, setting
from hpcgear.config.yamlload import LineMap, LineSeq, load_yaml_with_lines
from hpcgear.errors import HpcgearError, InvalidInputError, RuleError, SchemaError
from hpcgear.rules import predicates as P
from hpcgear.text import check_identifier, check_storable, regex_problem

RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
PRIORITY_CHOICES = ("low", "medium", "high", "critical")
DESTINATIONS = ("container", "acquisition", "session", "subject", "project")
MAX_RETRIES = 10

Priority = Literal["low", "medium", "high", "critical"]
Destination = Literal["container", "acquisition", "session", "subject", "project"]


@dataclass(frozen=True, slots=True)
class FixedInput:
    """A file every job of the rule gets, pinned to one version."""

    path: str
    version: int | None = None  # None: the current version when the rule is saved


@dataclass(frozen=True, slots=True)
class Prerequisite:
    """A gear that must have completed on the session (optionally with an analysis label)."""

    gear: str
    analysis_label: str | None = None  # glob over the label of the analysis the job made

    def describe(self) -> str:
        return self.gear + (f" (analysis {self.analysis_label!r})" if self.analysis_label else "")


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule, validated in shape (gear, inputs and config are checked when it is saved)."""

    name: str
    gear: str
    version: str | None = None
    auto_update: bool = False
    project: str | None = None
    description: str = ""
    when: P.Condition | None = None
    input: str | None = None
    fixed_inputs: Mapping[str, FixedInput] = field(default_factory=dict)
    after: tuple[Prerequisite, ...] = ()
    require: Literal["all", "any"] = "all"
    session_inputs: Mapping[str, str] = field(default_factory=dict)
    retries: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    priority: str = "medium"
    destination: str = "container"
    enabled: bool = True
    source: str = ""  # "file:line" of the rule, for messages

    @property
    def kind(self) -> Literal["file", "session"]:
        return "session" if self.after else "file"


# ------------------------------------------------------------------ YAML schema


# `setting` returns dataclasses.field(...) (RUF009 cannot know that).
@dataclass(frozen=True, slots=True)
class _RuleDoc:
    """One gear rule."""

    name: str = setting("Rule name, unique in its project (letters, digits, . _ -).")
    gear: str = setting("Gear NAME or NAME@VERSION.")
    project: str | None = setting("group/project the rule belongs to.", default=None)
    version: str | None = setting("Pinned gear version.", default=None)
    auto_update: bool = setting("Follow the latest enabled gear version.", default=False)
    description: str = setting("Free text.", default="")
    when: Any = setting(  # noqa: RUF009
        "Conditions on the file (all/any/not nesting).", default=None, json={"type": "object"}
    )
    input: str | None = setting("Gear input the matching file becomes.", default=None)
    fixed_inputs: Mapping[str, Any] = setting(
        "NAME: PATH or {path, version}: files every job gets, pinned.", default_factory=dict
    )
    after: Any = setting(  # noqa: RUF009
        "Session rule prerequisites: a list of gears or {gears, require}.", default=None
    )
    session_inputs: Mapping[str, str] = setting(
        "NAME: REGEX over the session's files (then the project's).", default_factory=dict
    )
    retries: int = setting("Session rules: new attempts after a failure (0-10).", default=0)
    config: Mapping[str, Any] = setting(
        "Gear config values (checked against the manifest).", default_factory=dict
    )
    tags: tuple[str, ...] = setting("Job tags, e.g. hpc.", default_factory=tuple)
    priority: Priority = setting("Job priority.", default="medium")  # noqa: RUF009
    destination: Destination = setting(  # noqa: RUF009
        "Where file-rule jobs run: the file's container or one of its ancestors.",
        default="container",
    )
    enabled: bool = setting("Whether the rule fires.", default=True)


@dataclass(frozen=True, slots=True)
class _FileDoc:
    """A rule file."""

    project: str | None = setting("Default group/project of the rules.", default=None)
    rules: tuple[Any, ...] = setting("The rules.", default_factory=tuple)


@dataclass(frozen=True, slots=True)
class _AfterDoc:
    gears: tuple[Any, ...] = setting("Prerequisite gears.")
    require: Literal["all", "any"] = setting("All prerequisites, or any one.", default="all")


@dataclass(frozen=True, slots=True)
class _PrereqDoc:
    gear: str = setting("Gear name.")
    analysis_label: str | None = setting("Glob over the analysis label.", default=None)


@dataclass(frozen=True, slots=True)
class _FixedDoc:
    path: str = setting("group/project/.../FILE")
    version: int | None = setting("File version (default: current).", default=None)


def load_rules_file(path: str | Path) -> list[RuleSpec]:
    """Parse a rule YAML file; SchemaError at ``file:line`` on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError(
            f"cannot read rule file {p}: {exc.strerror or exc}", "check the path"
        ) from None
    except UnicodeDecodeError:
        raise RuleError(f"rule file {p} is not UTF-8 text", "save it as UTF-8") from None
    return parse_rules_text(text, source=str(p))


def parse_rules_text(text: str, *, source: str = "<rules>") -> list[RuleSpec]:
    raw = load_yaml_with_lines(text, source)
    top = Where(source, "", 1)
    if raw is None:
        raise top.error("the rule file is empty", "write `rules:` with a list of rules")
    if isinstance(raw, list):  # a bare list of rules
        raw = LineMap({"rules": raw}, line=1)
        raw.key_lines["rules"] = 1
    doc = build(_FileDoc, raw, top)
    lines = raw.key_lines if isinstance(raw, LineMap) else {}
    rules_where = top.key("rules", lines.get("rules"))
    items = raw.get("rules") or []
    if not items:
        raise rules_where.error("no rules in the file", "list rules under `rules:`")
    item_lines = items.item_lines if isinstance(items, LineSeq) else []
    specs: list[RuleSpec] = []
    seen: dict[tuple[str | None, str], int] = {}
    for i, item in enumerate(items):
        where = rules_where.item(i, item_lines[i] if i < len(item_lines) else None)
        spec = rule_from_yaml(item, where, default_project=doc.project)
        key = (spec.project, spec.name)
        if key in seen:
            raise where.error(
                f"rule {spec.name!r} is given twice (first on line {seen[key]})",
                "give each rule a unique name",
            )
        seen[key] = where.line
        specs.append(spec)
    return specs


def rule_from_yaml(raw: Any, where: Where, *, default_project: str | None = None) -> RuleSpec:
    """Build one RuleSpec from its YAML mapping (``where`` locates it)."""
    if isinstance(raw, Mapping) and isinstance(raw, LineMap):
        where = Where(where.source, where.path, raw.line or where.line)
    d = build(_RuleDoc, raw, where)
    lines: Mapping[Any, int] = raw.key_lines if isinstance(raw, LineMap) else {}

    def at(key: str) -> Where:
        return where.key(key, lines.get(key))

    def wrap(key: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except SchemaError:
            raise
        except HpcgearError as exc:
            raise at(key).error(exc.message, exc.hint) from None

    wrap("name", check_rule_name, d.name)
    gear, version = wrap("gear", split_gear, d.gear, d.version)
    when = parse_condition(raw["when"], at("when")) if d.when is not None else None
    after: tuple[Prerequisite, ...] = ()
    require: Literal["all", "any"] = "all"
    if d.after is not None:
        after, require = _after_from_yaml(d.after, at("after"))
    fixed_at = at("fixed_inputs")
    fixed = {
        name: _fixed_from_yaml(value, fixed_at.key(name, _line(raw, "fixed_inputs", name)))
        for name, value in d.fixed_inputs.items()
    }
    for name, rx in d.session_inputs.items():
        wrap("session_inputs", check_regex, rx, f"session input {name}")
    spec = RuleSpec(
        name=d.name,
        gear=gear,
        version=version,
        auto_update=d.auto_update,
        project=d.project or default_project,
        description=d.description,
        when=when,
        input=d.input,
        fixed_inputs=fixed,
        after=after,
        require=require,
        session_inputs=dict(d.session_inputs),
        retries=d.retries,
        config=_plain(dict(d.config)),
        tags=tuple(d.tags),
        priority=d.priority,
        destination=d.destination,
        enabled=d.enabled,
        source=f"{where.source}:{where.line}",
    )
    try:
        check_shape(spec, explicit=set(raw) if isinstance(raw, Mapping) else set())
    except HpcgearError as exc:
        key = getattr(exc, "key", None)
        target = at(key) if isinstance(key, str) and key in lines else where
        raise target.error(exc.message, exc.hint) from None
    if spec.project is None:
        raise where.error(
            f"rule {spec.name!r} names no project",
            "add `project: group/project` to the rule or at the top of the file",
        )
    return spec


def _line(raw: Any, key: str, sub: str) -> int | None:
    node = raw.get(key) if isinstance(raw, Mapping) else None
    return node.key_lines.get(sub) if isinstance(node, LineMap) else None


def _plain(value: Any) -> Any:
    """LineMap/LineSeq/MappingProxy -> plain JSON types (for storage and comparison)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _after_from_yaml(
    raw: Any, where: Where
) -> tuple[tuple[Prerequisite, ...], Literal["all", "any"]]:
    require: Literal["all", "any"] = "all"
    if isinstance(raw, list):
        items, item_where = raw, where
    else:
        doc = build(_AfterDoc, raw, where)
        lines = raw.key_lines if isinstance(raw, LineMap) else {}
        items, require = raw.get("gears") or [], doc.require
        item_where = where.key("gears", lines.get("gears"))
    if not items:
        raise where.error("`after` lists no gears", "name at least one prerequisite gear")
    item_lines = items.item_lines if isinstance(items, LineSeq) else []
    out = []
    for i, item in enumerate(items):
        sub = item_where.item(i, item_lines[i] if i < len(item_lines) else None)
        if isinstance(item, str):
            out.append(Prerequisite(gear=item))
        else:
            p = build(_PrereqDoc, item, sub)
            out.append(Prerequisite(gear=p.gear, analysis_label=p.analysis_label))
        try:
            split_gear(out[-1].gear, None)
        except HpcgearError as exc:
            raise sub.error(exc.message, exc.hint) from None
        if "@" in out[-1].gear:
            raise sub.error(
                f"prerequisite {out[-1].gear!r} names a version",
                "prerequisites are gear names: any version that completed counts",
            )
    return tuple(out), require


def _fixed_from_yaml(raw: Any, where: Where) -> FixedInput:
    if isinstance(raw, str):
        return FixedInput(path=raw)
    doc = build(_FixedDoc, raw, where)
    return FixedInput(path=doc.path, version=doc.version)


# --------------------------------------------------------------- conditions


_COMPOSITES = ("all", "any", "not")


def parse_condition(raw: Any, where: Where) -> P.Condition:
    """A condition tree from YAML; errors name ``file:line`` and the key path."""
    if isinstance(raw, list):
        if not raw:
            raise where.error("an empty list of conditions", "give at least one condition")
        lines = raw.item_lines if isinstance(raw, LineSeq) else []
        items = tuple(
            parse_condition(item, where.item(i, lines[i] if i < len(lines) else None))
            for i, item in enumerate(raw)
        )
        return items[0] if len(items) == 1 else P.All(items)
    if not isinstance(raw, Mapping) or not raw:
        raise where.error(
            "a condition is a mapping such as `file.type: dicom`, or all/any/not",
            f"fields: {P.valid_fields()}",
        )
    key_lines = raw.key_lines if isinstance(raw, LineMap) else {}
    parts: list[P.Condition] = []
    for key, value in raw.items():
        sub = where.key(key, key_lines.get(key))
        if key in ("all", "any"):
            if isinstance(value, Mapping):
                value = [value]
            if not isinstance(value, list) or not value:
                raise sub.error(f"`{key}` takes a non-empty list of conditions")
            lines = value.item_lines if isinstance(value, LineSeq) else []
            items = tuple(
                parse_condition(v, sub.item(i, lines[i] if i < len(lines) else None))
                for i, v in enumerate(value)
            )
            parts.append(P.All(items) if key == "all" else P.AnyOf(items))
        elif key == "not":
            parts.append(P.Not(parse_condition(value, sub)))
        else:
            try:
                parts.append(P.leaf(str(key), _plain(value)))
            except HpcgearError as exc:
                raise sub.error(exc.message, exc.hint) from None
    return parts[0] if len(parts) == 1 else P.All(tuple(parts))


_CLI_WHEN = re.compile(r"^(?P<field>[A-Za-z_][\w.\-]*)\s*(?P<op>!=|=|~|\?)\s*(?P<value>.*)$", re.S)


def parse_cli_when(texts: Sequence[str]) -> P.Condition | None:
    """``--when`` values (all must hold) -> a condition."""
    parts: list[P.Condition] = []
    for text in texts:
        stripped = text.strip()
        if stripped.startswith(("{", "[")):
            raw = load_yaml_with_lines(stripped, "--when")
            parts.append(parse_condition(raw, Where("--when", "", 1)))
            continue
        m = _CLI_WHEN.match(stripped)
        if m is None:
            raise RuleError(
                f"--when {text!r} is not FIELD=VALUE, FIELD!=VALUE, FIELD~REGEX or FIELD?",
                "e.g. --when file.type=dicom --when 'file.name~^T1' --when session.tags=qc",
            )
        name, op, value = m["field"], m["op"], m["value"]
        try:
            ref = P.parse_field(name)
            if op == "?":
                if value:
                    raise RuleError(f"--when {text!r}: nothing may follow '?'", f"write {name}?")
                parts.append(P.leaf(name, {"exists": True}))
                continue
            if not value:
                raise RuleError(f"--when {text!r} has no value", f"write {name}{op}VALUE")
            typed: Any = _cli_value(value) if ref.kind == "info" else value
            cond: P.Condition = P.leaf(name, {"regex": value}) if op == "~" else P.leaf(name, typed)
            parts.append(P.Not(cond) if op == "!=" else cond)
        except RuleError as exc:
            if exc.message.startswith("--when"):
                raise
            raise RuleError(f"--when {text!r}: {exc.message}", exc.hint) from None
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else P.All(tuple(parts))


def _cli_value(text: str) -> Any:
    """Info values on the command line: JSON scalars (3, 1.5, true) or text."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # only scalars are taken as JSON here
        return text
    return value if isinstance(value, str | int | float | bool) else text


# ----------------------------------------------------------------- checks


class _KeyedRuleError(RuleError):
    def __init__(self, key: str, message: str, hint: str) -> None:
        super().__init__(message, hint)
        self.key = key


def check_rule_name(name: str) -> str:
    if not RULE_NAME_RE.fullmatch(name or ""):
        raise RuleError(
            f"bad rule name {name!r}",
            "rule names are 1-128 letters, digits, '.', '_' and '-', starting with a "
            "letter or digit",
        )
    return name


def check_regex(rx: str, what: str) -> None:
    problem = regex_problem(rx) if isinstance(rx, str) else "is not a string"
    if problem:
        raise RuleError(
            f"{what}: regex {str(rx)[:80]!r} {problem}",
            "use a Python regex without nested repetition (e.g. [a-z0-9_]+ rather than "
            "([a-z]+[0-9]*)+)",
        )


def split_gear(ref: str, version: str | None) -> tuple[str, str | None]:
    """``gear`` (+ ``version``) -> (name, version or None)."""
    text = (ref or "").strip()
    name, _, ref_version = text.partition("@")
    if not name or (text.count("@") > 1) or ("@" in text and not ref_version):
        raise RuleError(f"bad gear reference {ref!r}", "write NAME or NAME@VERSION")
    if ref_version and version and ref_version != version:
        raise RuleError(f"gear {ref!r} and version {version!r} disagree", "give the version once")
    return name, (ref_version or version or None)


def check_shape(spec: RuleSpec, *, explicit: set[Any] | None = None) -> None:
    """Checks that need no database: which keys go with which kind of rule."""
    given = explicit if explicit is not None else set()
    try:
        check_storable(spec.name, "rule name")
        check_storable(spec_to_json(spec), "rule")
    except InvalidInputError as exc:
        raise _KeyedRuleError("config", exc.message, exc.hint) from None
    for tag in spec.tags:
        try:
            check_identifier(tag, "rule tag")
        except InvalidInputError as exc:
            raise _KeyedRuleError("tags", exc.message, exc.hint) from None
    if spec.auto_update and spec.version:
        raise _KeyedRuleError(
            "auto_update",
            f"rule {spec.name!r} pins version {spec.version} and sets auto_update",
            "pin a version or follow new versions, not both",
        )
    if spec.retries < 0 or spec.retries > MAX_RETRIES:
        raise _KeyedRuleError(
            "retries", f"retries must be 0-{MAX_RETRIES}, got {spec.retries}", "lower it"
        )
    if spec.priority not in PRIORITY_CHOICES:
        raise _KeyedRuleError(
            "priority",
            f"unknown priority {spec.priority!r}",
            f"priorities: {', '.join(PRIORITY_CHOICES)}",
        )
    if spec.destination not in DESTINATIONS:
        raise _KeyedRuleError(
            "destination",
            f"unknown destination {spec.destination!r}",
            f"destinations: {', '.join(DESTINATIONS)}",
        )
    if spec.kind == "file":
        if spec.when is None:
            raise _KeyedRuleError(
                "when",
                f"file rule {spec.name!r} has no `when` conditions",
                "add `when:` (e.g. file.type: dicom), or `after:` for a session rule",
            )
        for key, bad in (("session_inputs", spec.session_inputs), ("retries", spec.retries)):
            if bad:
                raise _KeyedRuleError(
                    key,
                    f"`{key}` is for session rules (with `after`); rule {spec.name!r} is a "
                    "file rule",
                    "remove it, or add `after:` to make a session rule",
                )
        return
    if spec.input is not None:
        raise _KeyedRuleError(
            "input",
            f"`input` is for file rules; session rule {spec.name!r} finds its inputs "
            "with `session_inputs`",
            "write session_inputs: {NAME: REGEX}",
        )
    if "destination" in given and spec.destination != "container":
        raise _KeyedRuleError(
            "destination",
            f"session rule {spec.name!r} always runs on the session",
            "remove `destination`",
        )
    if spec.when is not None and "file" in P.referenced(spec.when):
        raise _KeyedRuleError(
            "when",
            f"session rule {spec.name!r} tests file.* fields, but it runs on a session",
            "test session.*, subject.* or project.* fields, or use session_inputs",
        )
    if spec.when is not None and "acquisition" in P.referenced(spec.when):
        raise _KeyedRuleError(
            "when",
            f"session rule {spec.name!r} tests acquisition.* fields",
            "test session.*, subject.* or project.* fields",
        )


# ------------------------------------------------------------ stored form


def spec_to_json(spec: RuleSpec) -> dict[str, Any]:
    """The parts of a spec stored in ``gear_rules.spec`` (gear/version/enabled are columns)."""
    return {
        "kind": spec.kind,
        "description": spec.description,
        "when": P.to_json(spec.when) if spec.when is not None else None,
        "input": spec.input,
        "fixed_inputs": {
            k: {"path": v.path, "version": v.version} for k, v in spec.fixed_inputs.items()
        },
        "after": [{"gear": p.gear, "analysis_label": p.analysis_label} for p in spec.after],
        "require": spec.require,
        "session_inputs": dict(spec.session_inputs),
        "retries": spec.retries,
        "config": _plain(dict(spec.config)),
        "tags": list(spec.tags),
        "priority": spec.priority,
        "destination": spec.destination,
    }


def spec_from_json(
    name: str,
    data: Mapping[str, Any],
    *,
    gear: str,
    version: str | None,
    auto_update: bool,
    enabled: bool,
    project: str | None = None,
) -> RuleSpec:
    when = data.get("when")
    return RuleSpec(
        name=name,
        gear=gear,
        version=version,
        auto_update=auto_update,
        project=project,
        description=str(data.get("description") or ""),
        when=P.from_json(when) if when else None,
        input=data.get("input"),
        fixed_inputs={
            k: FixedInput(path=str(v["path"]), version=v.get("version"))
            for k, v in (data.get("fixed_inputs") or {}).items()
        },
        after=tuple(
            Prerequisite(gear=str(p["gear"]), analysis_label=p.get("analysis_label"))
            for p in (data.get("after") or [])
        ),
        require="any" if data.get("require") == "any" else "all",
        session_inputs=dict(data.get("session_inputs") or {}),
        retries=int(data.get("retries") or 0),
        config=dict(data.get("config") or {}),
        tags=tuple(data.get("tags") or ()),
        priority=str(data.get("priority") or "medium"),
        destination=str(data.get("destination") or "container"),
        enabled=enabled,
    )


def with_changes(spec: RuleSpec, **changes: Any) -> RuleSpec:
    return dataclasses.replace(spec, **changes)
