"""Where a DICOM study goes: project, subject and session labels from its header.

Sources, strongest first, decided per level (project, subject, session):

1. explicit options (``--project/--subject/--session``);
2. a ``fw://group/project[/subject[/session]]`` value in the routing field or in
   one of the ``fw_fields`` (PatientComments, StudyComments by default);
3. the facility convention: the routing field (AccessionNumber by default) typed
   at the scanner as ``<project>/<subject>/<session>``, parsed with a regex whose
   named groups are ``project``, ``subject`` and ``session``.

Fallbacks (subject from PatientID, session from StudyDate_StudyTime or StudyID)
are the caller's business because they are read after de-identification. This
module is pure: values in, labels and reasons out. Reasons never quote header
values (they may be identifying); they name fields and labels only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from hpcgear.errors import HpcgearError, InvalidInputError
from hpcgear.hierarchy.paths import check_label
from hpcgear.text import regex_problem

DEFAULT_ROUTE_FIELD = "AccessionNumber"
DEFAULT_ROUTE_PATTERN = r"^(?P<project>[^/]+)/(?P<subject>[^/]+)(?:/(?P<session>[^/]+))?$"
DEFAULT_FW_FIELDS = ("PatientComments", "StudyComments")
ROUTE_GROUPS = ("project", "subject", "session")
FW_PREFIX = "fw://"
LEVELS = ("project", "subject", "session")


@dataclass(frozen=True, slots=True)
class RoutingRules:
    """How to route: the header field and pattern, fw:// fields, explicit labels."""

    field: str = DEFAULT_ROUTE_FIELD
    pattern: str = DEFAULT_ROUTE_PATTERN
    fw_fields: tuple[str, ...] = DEFAULT_FW_FIELDS
    project: str | None = None
    subject: str | None = None
    session: str | None = None
    #: levels a pattern route must name (the seeds' convention: all three);
    #: a study whose routing field names fewer goes to Unsorted with the reason.
    require: tuple[str, ...] = LEVELS

    def compiled(self) -> re.Pattern[str]:
        return compile_pattern(self.pattern)

    @property
    def header_fields(self) -> tuple[str, ...]:
        """Fields whose original (pre-de-identification) values routing reads."""
        return tuple(dict.fromkeys((self.field, *self.fw_fields)))


def parse_required_levels(text: str) -> tuple[str, ...]:
    """``project,subject,session`` -> the levels a pattern route must name."""
    levels = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in levels if p not in LEVELS]
    if bad or "project" not in levels:
        raise InvalidInputError(
            f"--route-require {text!r} must list project and optionally subject, session",
            "e.g. --route-require project,subject,session (the default) or project,subject",
        )
    return tuple(level for level in LEVELS if level in levels)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a routing regex; it must name at least one of project/subject/session."""
    problem = regex_problem(pattern)
    if problem:
        raise InvalidInputError(
            f"routing pattern {pattern[:80]!r} {problem}",
            "e.g. --route-pattern '^(?P<project>[^/]+)/(?P<subject>[^/]+)/(?P<session>.+)$'",
        )
    rx = re.compile(pattern)
    if not set(rx.groupindex) & set(ROUTE_GROUPS):
        raise InvalidInputError(
            f"routing pattern {pattern!r} has no named group project, subject or session",
            "name the parts: (?P<project>...), (?P<subject>...), (?P<session>...)",
        )
    return rx


@dataclass(frozen=True, slots=True)
class Route:
    """Labels found for a study (None = not found) and why others were not used."""

    project: str | None = None
    subject: str | None = None
    session: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # level -> option|fw|pattern
    problems: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # required levels a pattern route did not name


def clean_label(value: str | None) -> str | None:
    """A usable hierarchy label from a header value, or None."""
    if value is None:
        return None
    text = " ".join(str(value).split())  # collapse whitespace, drop control chars
    if not text:
        return None
    try:
        return check_label(text)
    except HpcgearError:
        return None


def parse_fw_url(text: str) -> tuple[str, ...] | None:
    """``fw://group/project[/subject[/session]]`` -> its parts (None if not fw://)."""
    stripped = text.strip()
    if not stripped.lower().startswith(FW_PREFIX):
        return None
    parts = tuple(p.strip() for p in stripped[len(FW_PREFIX) :].strip("/").split("/"))
    return parts


def route_study(values: Mapping[str, str | None], group: str, rules: RoutingRules) -> Route:
    """Route one study from the original values of ``rules.header_fields``."""
    found: dict[str, str] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    invalid: list[str] = []  # levels named by a value that is not a label ('..', '/')

    def take(level: str, value: str | None, source: str, what: str) -> None:
        if level in found or value is None:
            return
        label = clean_label(value)
        if label is None:
            if str(value).strip():
                problems.append(f"the {level} label from {what} is not a valid label")
                invalid.append(level)
            return
        found[level] = label
        sources[level] = source

    for level in LEVELS:
        take(level, getattr(rules, level), "option", f"--{level}")

    for name in rules.header_fields:
        raw = values.get(name)
        parts = parse_fw_url(raw) if raw else None
        if parts is None:
            continue
        if not parts or len(parts) < 2 or len(parts) > 4 or any(not p for p in parts):
            problems.append(f"{name} holds a fw:// value that is not fw://group/project[/...]")
            continue
        if parts[0] != group:
            problems.append(f"{name} names group {parts[0]!r}, this ingest is into {group!r}")
            continue
        for level, value in zip(LEVELS, parts[1:], strict=False):
            take(level, value, "fw", f"the fw:// value in {name}")
        break

    raw = values.get(rules.field)
    if raw and parse_fw_url(raw) is None:
        m = rules.compiled().search(raw.strip())
        if m is None:
            if "project" not in found:
                problems.append(f"{rules.field} does not match the routing pattern")
        else:
            groups = m.groupdict()
            for level in LEVELS:
                take(level, groups.get(level), "pattern", rules.field)
    elif not raw and "project" not in found:
        problems.append(f"{rules.field} is empty and no fw:// value was found")

    missing: tuple[str, ...] = ()
    if "pattern" in sources.values():
        named_groups = set(rules.compiled().groupindex)
        missing = tuple(
            level for level in rules.require if level in named_groups and level not in found
        )
        if missing:
            named = [level for level in LEVELS if sources.get(level) == "pattern"]
            problems.append(
                f"{rules.field} names {'/'.join(named) or 'nothing'} but no "
                f"{' or '.join(missing)} (routing needs {'/'.join(rules.require)})"
            )

    return Route(
        # A named but invalid level is never skipped: the study goes to Unsorted
        # with the problem as its reason instead of landing one level up.
        project=None if invalid else found.get("project"),
        subject=found.get("subject"),
        session=found.get("session"),
        sources=sources,
        problems=tuple(problems),
        missing=missing,
    )
