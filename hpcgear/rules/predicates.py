"""Rule conditions: pure, explainable predicates over file (or session) facts.

A condition is a tree of :class:`All`, :class:`AnyOf`, :class:`Not` and
:class:`Leaf` nodes. A leaf compares one *field* of the facts with a value
using one *operator*. :func:`evaluate` returns an :class:`Explanation` tree in
which every node says whether it passed and why, so ``hpcgear rule test`` can
print exactly what made a rule fire or not. Nothing here touches the
database: the engine builds :class:`Facts` from rows and calls these functions.

Fields
------
``file.name``            glob (default; ``regex:...`` for a regular expression)
``file.type``            equals (``dicom``, ``nifti``, ...)
``file.modality``        equals (``MR``, ``CT``, ...)
``file.origin``          equals: how the version arrived (``user``, ``ingest``, ``job``)
``file.classification``  contains, over all classification values
``file.classification.<Key>``  contains (``Intent``, ``Measurement``, ``Features``, custom)
``file.tags``            contains
``file.info.<dotted>``   equals (also exists, in, glob, regex, contains, gt/ge/lt/le)
``container.type``       equals: the level the file is attached to
``container.label``, ``<level>.label``  glob (default; ``regex:...`` allowed)
``container.tags``, ``<level>.tags``    contains
``container.info.<dotted>``, ``<level>.info.<dotted>``  as ``file.info``

``<level>`` is ``project``, ``subject``, ``session`` or ``acquisition`` (the
file's ancestors; ``container`` is the container the file is attached to).

Operators (a value written as a one-key mapping, e.g. ``{regex: "^T1"}``)
-------------------------------------------------------------------------
``equals``, ``in`` (a list), ``glob``, ``regex`` (searched), ``exists``
(true/false), ``contains`` (a list field or an info list holds the value),
``any_of`` / ``all_of`` (a list field holds any/all of the listed values),
``gt``, ``ge``, ``lt``, ``le`` (numbers). A plain value uses the field's
default operator; a plain list means ``in`` (text and info) or ``any_of``
(list fields).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hpcgear.errors import RuleError
from hpcgear.text import regex_problem

LEVELS: tuple[str, ...] = ("project", "subject", "session", "acquisition")
SUBJECTS: tuple[str, ...] = ("file", "container", *LEVELS)

FieldKind = Literal["text", "list", "info"]

OPERATORS: tuple[str, ...] = (
    "equals",
    "in",
    "glob",
    "regex",
    "exists",
    "contains",
    "any_of",
    "all_of",
    "gt",
    "ge",
    "lt",
    "le",
)
_OPS_BY_KIND: dict[str, frozenset[str]] = {
    "text": frozenset({"equals", "in", "glob", "regex", "exists"}),
    "list": frozenset({"contains", "any_of", "all_of", "exists"}),
    "info": frozenset(OPERATORS) - {"any_of", "all_of"},
}
_FILE_TEXT = ("name", "type", "modality", "origin")
_GLOB_DEFAULT = frozenset({"name", "label"})


# ---------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    """What conditions may look at on a container."""

    type: str
    label: str
    tags: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What conditions may look at on one file version."""

    name: str
    version: int
    type: str | None = None
    modality: str | None = None
    origin: str = "user"
    classification: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Facts:
    """A file (or none, for session rules) plus its container and that container's ancestors.

    ``levels`` maps ``project``/``subject``/``session``/``acquisition`` to the
    ancestors that exist (a file on a session has no acquisition).
    """

    container: ContainerFacts
    levels: Mapping[str, ContainerFacts]
    file: FileFacts | None = None


# ----------------------------------------------------------------- conditions


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A parsed field name such as ``file.info.header.dicom.EchoTime``."""

    subject: str  # file | container | project | subject | session | acquisition
    attr: str  # name, type, modality, origin, classification, tags, info, label
    path: tuple[str, ...] = ()  # info path, or the classification key

    @property
    def kind(self) -> FieldKind:
        if self.attr == "info":
            return "info"
        if self.attr in ("tags", "classification"):
            return "list"
        return "text"

    @property
    def default_op(self) -> str:
        if self.kind == "list":
            return "contains"
        if self.attr in _GLOB_DEFAULT:
            return "glob"
        return "equals"

    def __str__(self) -> str:
        return ".".join((self.subject, self.attr, *self.path))


@dataclass(frozen=True, slots=True)
class Leaf:
    field: FieldRef
    op: str
    value: Any = None

    def describe(self) -> str:
        return f"{self.field} {self.op.replace('_', ' ')} {_show(self.value)}"


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Condition, ...]

    def describe(self) -> str:
        return "all of"


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]

    def describe(self) -> str:
        return "any of"


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition

    def describe(self) -> str:
        return "not"


Condition = All | AnyOf | Not | Leaf


@dataclass(frozen=True, slots=True)
class Explanation:
    """One node of an evaluation: the condition, whether it passed, and why."""

    condition: str
    passed: bool
    why: str
    children: tuple[Explanation, ...] = ()

    def lines(self, indent: int = 0) -> list[str]:
        """Human-readable tree, one node per line."""
        mark = "PASS" if self.passed else "FAIL"
        text = f"{'  ' * indent}[{mark}] {self.condition}"
        if self.why:
            text += f": {self.why}"
        out = [text]
        for child in self.children:
            out.extend(child.lines(indent + 1))
        return out

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "condition": self.condition,
            "passed": self.passed,
            "why": self.why,
        }
        if self.children:
            out["children"] = [c.as_dict() for c in self.children]
        return out


# -------------------------------------------------------------------- parsing


def valid_fields() -> str:
    """One line naming every field a condition may use (for error hints)."""
    return (
        "file.name, file.type, file.modality, file.origin, file.classification[.KEY], "
        "file.tags, file.info.KEY, container.type, container.label, container.tags, "
        "container.info.KEY, and LEVEL.label / LEVEL.tags / LEVEL.info.KEY for LEVEL in "
        + ", ".join(LEVELS)
    )


def parse_field(name: str) -> FieldRef:
    """``file.info.a.b`` -> FieldRef; RuleError naming the valid fields otherwise."""
    parts = str(name).split(".")
    bad = RuleError(f"unknown field {name!r}", f"fields: {valid_fields()}")
    if len(parts) < 2 or any(not p for p in parts) or parts[0] not in SUBJECTS:
        raise bad
    subject, attr, rest = parts[0], parts[1], tuple(parts[2:])
    if subject == "file":
        if attr in _FILE_TEXT or attr == "tags":
            if rest:
                raise bad
            return FieldRef(subject, attr)
        if attr == "classification":
            if len(rest) > 1:
                raise bad
            return FieldRef(subject, attr, rest)
    else:
        if attr in ("label", "tags") or (attr == "type" and subject == "container"):
            if rest:
                raise bad
            return FieldRef(subject, attr)
    if attr == "info":
        if not rest:
            raise RuleError(
                f"field {name!r} needs a key below info",
                f"write e.g. {subject}.info.header.dicom.EchoTime",
            )
        return FieldRef(subject, attr, rest)
    raise bad


def leaf(field_name: str, value: Any) -> Leaf:
    """A leaf from ``field: value`` (plain value or ``{operator: value}``)."""
    ref = parse_field(field_name)
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise RuleError(
                f"{field_name}: an operator mapping has exactly one key, got "
                f"{', '.join(map(str, value)) or 'none'}",
                f"write e.g. {{regex: '^T1'}}; operators: {', '.join(OPERATORS)}",
            )
        op, arg = next(iter(value.items()))
        return _checked(ref, str(op), arg)
    if isinstance(value, list | tuple):
        return _checked(ref, "any_of" if ref.kind == "list" else "in", list(value))
    if isinstance(value, str) and value.startswith("regex:") and ref.kind != "list":
        return _checked(ref, "regex", value[len("regex:") :])
    return _checked(ref, ref.default_op, value)


def _checked(ref: FieldRef, op: str, value: Any) -> Leaf:
    if op not in OPERATORS:
        raise RuleError(f"{ref}: unknown operator {op!r}", f"operators: {', '.join(OPERATORS)}")
    allowed = _OPS_BY_KIND[ref.kind]
    if op not in allowed:
        raise RuleError(
            f"{ref}: operator {op!r} does not apply to this field",
            f"use one of: {', '.join(o for o in OPERATORS if o in allowed)}",
        )
    if op == "exists":
        if not isinstance(value, bool):
            raise RuleError(f"{ref}: exists takes true or false", "write {exists: true}")
    elif op in ("in", "any_of", "all_of"):
        if not isinstance(value, list) or not value:
            raise RuleError(f"{ref}: {op} takes a non-empty list", f"write {{{op}: [a, b]}}")
        if ref.kind != "info" and not all(isinstance(v, str) for v in value):
            raise RuleError(f"{ref}: {op} takes a list of strings", "quote the values")
        value = list(value)
    elif op in ("gt", "ge", "lt", "le"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RuleError(f"{ref}: {op} takes a number", f"write {{{op}: 1.5}}")
    elif op in ("glob", "regex"):
        if not isinstance(value, str):
            raise RuleError(f"{ref}: {op} takes a string", "quote the pattern")
        if op == "regex":
            problem = regex_problem(value)
            if problem:
                raise RuleError(
                    f"{ref}: regular expression {value[:80]!r} {problem}",
                    "use a Python regular expression without nested repetition "
                    "(e.g. [a-z0-9_]+ rather than ([a-z]+[0-9]*)+)",
                )
    elif ref.kind != "info":
        if not isinstance(value, str):
            raise RuleError(
                f"{ref}: {op} takes a string, got {type(value).__name__} {value!r}",
                "quote the value",
            )
    elif value is None or isinstance(value, Mapping | list):
        raise RuleError(
            f"{ref}: {op} takes a plain value (text, number, true/false)",
            "compare nested values by naming them: FIELD.info.a.b",
        )
    return Leaf(ref, op, value)


# --------------------------------------------------- canonical JSON form (DB)


def to_json(cond: Condition) -> dict[str, Any]:
    """The stored form: ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": {...}}``,
    ``{"field": "file.type", "op": "equals", "value": "dicom"}``."""
    if isinstance(cond, All):
        return {"all": [to_json(c) for c in cond.items]}
    if isinstance(cond, AnyOf):
        return {"any": [to_json(c) for c in cond.items]}
    if isinstance(cond, Not):
        return {"not": to_json(cond.item)}
    return {"field": str(cond.field), "op": cond.op, "value": cond.value}


def from_json(data: Mapping[str, Any]) -> Condition:
    if "all" in data:
        return All(tuple(from_json(c) for c in data["all"]))
    if "any" in data:
        return AnyOf(tuple(from_json(c) for c in data["any"]))
    if "not" in data:
        return Not(from_json(data["not"]))
    return _checked(parse_field(str(data["field"])), str(data["op"]), data.get("value"))


def referenced(cond: Condition) -> frozenset[str]:
    """The subjects (``file``, ``container``, levels) a condition looks at."""
    if isinstance(cond, All | AnyOf):
        out: frozenset[str] = frozenset()
        for c in cond.items:
            out |= referenced(c)
        return out
    if isinstance(cond, Not):
        return referenced(cond.item)
    return frozenset({cond.field.subject})


def leaves(cond: Condition) -> tuple[Leaf, ...]:
    """Every leaf of a condition tree."""
    if isinstance(cond, All | AnyOf):
        return tuple(leaf for c in cond.items for leaf in leaves(c))
    if isinstance(cond, Not):
        return leaves(cond.item)
    return (cond,)


def render(cond: Condition) -> str:
    """A one-line form: ``all(file.type equals 'dicom', not(file.tags contains 'skip'))``."""
    if isinstance(cond, All | AnyOf):
        name = "all" if isinstance(cond, All) else "any"
        return f"{name}({', '.join(render(c) for c in cond.items)})"
    if isinstance(cond, Not):
        return f"not({render(cond.item)})"
    return cond.describe()


# ----------------------------------------------------------------- evaluation


_MISSING = object()


def evaluate(cond: Condition, facts: Facts) -> Explanation:
    """Evaluate ``cond`` on ``facts``; every node of the result says why."""
    if isinstance(cond, All):
        kids = tuple(evaluate(c, facts) for c in cond.items)
        failed = sum(1 for k in kids if not k.passed)
        why = "every condition holds" if not failed else f"{failed} of {len(kids)} fail"
        return Explanation(cond.describe(), not failed, why, kids)
    if isinstance(cond, AnyOf):
        kids = tuple(evaluate(c, facts) for c in cond.items)
        passed = sum(1 for k in kids if k.passed)
        why = f"{passed} of {len(kids)} hold" if passed else "none holds"
        return Explanation(cond.describe(), passed > 0, why, kids)
    if isinstance(cond, Not):
        kid = evaluate(cond.item, facts)
        why = "the condition below fails" if not kid.passed else "the condition below holds"
        return Explanation(cond.describe(), not kid.passed, why, (kid,))
    passed, why = _evaluate_leaf(cond, facts)
    return Explanation(cond.describe(), passed, why)


def matches(cond: Condition, facts: Facts) -> bool:
    """Whether ``cond`` holds, short-circuiting and without building explanations.

    Same leaf logic as :func:`evaluate` (the engine's hot path; ``rule test``
    uses :func:`evaluate`), so the two cannot disagree.
    """
    if isinstance(cond, All):
        return all(matches(c, facts) for c in cond.items)
    if isinstance(cond, AnyOf):
        return any(matches(c, facts) for c in cond.items)
    if isinstance(cond, Not):
        return not matches(cond.item, facts)
    return _evaluate_leaf(cond, facts)[0]


def _subject_value(ref: FieldRef, facts: Facts) -> tuple[Any, str | None]:
    """(value or _MISSING, reason when the subject itself is absent)."""
    if ref.subject == "file":
        f = facts.file
        if f is None:
            return _MISSING, "there is no file here (session rules look at containers)"
        if ref.attr == "classification":
            if ref.path:
                return tuple(f.classification.get(ref.path[0], ())), None
            return tuple(v for vals in f.classification.values() for v in vals), None
        if ref.attr == "info":
            return _dig(f.info, ref.path), None
        return getattr(f, ref.attr), None
    c = facts.container if ref.subject == "container" else facts.levels.get(ref.subject)
    if c is None:
        return _MISSING, f"the file has no {ref.subject} above it"
    if ref.attr == "info":
        return _dig(c.info, ref.path), None
    return getattr(c, ref.attr), None


def _dig(info: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = info
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _evaluate_leaf(cond: Leaf, facts: Facts) -> tuple[bool, str]:
    ref, op, want = cond.field, cond.op, cond.value
    value, absent = _subject_value(ref, facts)
    if absent is not None:
        return (op == "exists" and want is False), absent
    if ref.kind == "list":
        items = tuple(value or ())
        shown = f"{ref} is {_show(list(items))}" if items else f"{ref} is empty"
        if op == "exists":
            return bool(items) == want, shown
        if op == "contains":
            return want in items, shown
        if op == "any_of":
            return any(w in items for w in want), shown
        missing = [w for w in want if w not in items]  # all_of
        return not missing, shown + (f"; missing {_show(missing)}" if missing else "")
    if value is _MISSING or value is None:
        where = "is not set" if ref.kind == "text" else "is missing"
        return (op == "exists" and want is False), f"{ref} {where}"
    shown = f"{ref} is {_show(value)}"
    if op == "exists":
        return want is True, shown
    if op == "equals":
        return _same(value, want), shown
    if op == "in":
        return any(_same(value, w) for w in want), shown
    if op in ("glob", "regex"):
        if not isinstance(value, str):
            return False, f"{shown}, not text"
        if op == "glob":
            return fnmatch.fnmatchcase(value, want), shown
        return re.search(want, value) is not None, shown
    if op == "contains":
        if isinstance(value, str) and isinstance(want, str):
            return want in value, shown
        if isinstance(value, list | tuple):
            return any(_same(v, want) for v in value), shown
        return False, f"{shown}, neither a list nor text"
    # gt/ge/lt/le
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False, f"{shown}, not a number"
    number = float(value)
    limit = float(want)
    result = {
        "gt": number > limit,
        "ge": number >= limit,
        "lt": number < limit,
        "le": number <= limit,
    }[op]
    return result, shown


def _same(a: Any, b: Any) -> bool:
    """Equality that does not let True equal 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return repr(value)
