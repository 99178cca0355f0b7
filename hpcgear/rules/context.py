"""What one evaluation run shares: the enabled rules, resolved gears, and the report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, Gear, GearRule, Job
from hpcgear.errors import HpcgearError, RuleError
from hpcgear.gears.service import get_gear
from hpcgear.hierarchy.service import file_version
from hpcgear.jobs.service import _input_spec
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.rules import predicates as P
from hpcgear.rules.service import LoadedRule, load_rule
from hpcgear.spec import InputSpec

logger = logging.getLogger(__name__)

#: How many notes and job entries a report keeps (counts are always complete).
REPORT_LIMIT = 200


@dataclass
class EvaluationReport:
    """What ``hpcgear rules evaluate`` did (or, with ``dry_run``, would do)."""

    dry_run: bool = False
    backfill_since: str | None = None
    changes_read: int = 0
    job_events_read: int = 0
    files_evaluated: int = 0
    sessions_evaluated: int = 0
    jobs_created: int = 0
    duplicates: int = 0
    guarded: int = 0
    errors: int = 0
    gave_up: int = 0
    batches: int = 0
    stopped: str | None = None
    change_cursor: int = 0
    event_cursor: int = 0
    jobs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < REPORT_LIMIT:
            self.notes.append(text)

    def job(self, entry: dict[str, Any]) -> None:
        if len(self.jobs) < REPORT_LIMIT:
            self.jobs.append(entry)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "backfill_since": self.backfill_since,
            "changes_read": self.changes_read,
            "job_events_read": self.job_events_read,
            "files_evaluated": self.files_evaluated,
            "sessions_evaluated": self.sessions_evaluated,
            "jobs_created": self.jobs_created,
            "duplicates_skipped": self.duplicates,
            "guarded": self.guarded,
            "errors": self.errors,
            "gave_up": self.gave_up,
            "batches": self.batches,
            "stopped": self.stopped,
            "cursor": {"change_log": self.change_cursor, "job_events": self.event_cursor},
            "jobs": self.jobs,
            "notes": self.notes,
        }


class RuleSet:
    """The enabled rules, by project and kind, loaded once per evaluation run."""

    def __init__(self, session: Session) -> None:
        self.file_rules: dict[str, list[LoadedRule]] = {}
        self.session_rules: dict[str, list[LoadedRule]] = {}
        self.referenced: dict[int, frozenset[str]] = {}
        #: The ``file.*`` attributes any enabled file rule looks at (the engine loads only these).
        self.file_attrs: set[str] = set()
        self._gears: dict[int, int | HpcgearError] = {}
        self._fixed: dict[int, list[InputSpec] | HpcgearError] = {}
        rows = session.scalars(
            select(GearRule).where(GearRule.enabled.is_(True)).order_by(GearRule.id)
        ).all()
        for row in rows:
            try:
                rule = load_rule(row)
            except (HpcgearError, KeyError, TypeError, ValueError) as exc:
                logger.error("rule %s (id %s) cannot be loaded, skipped: %s", row.name, row.id, exc)
                continue
            target = self.file_rules if rule.kind == "file" else self.session_rules
            target.setdefault(rule.project_id, []).append(rule)
            when = rule.spec.when
            self.referenced[rule.id] = P.referenced(when) if when is not None else frozenset()
            if when is not None and rule.kind == "file":
                self.file_attrs |= {
                    leaf.field.attr for leaf in P.leaves(when) if leaf.field.subject == "file"
                }

    @property
    def empty(self) -> bool:
        return not self.file_rules and not self.session_rules

    def gear(self, session: Session, rule: LoadedRule) -> Gear:
        """The gear version the rule runs now (latest enabled for auto_update)."""
        cached = self._gears.get(rule.id)
        if cached is None:
            try:
                cached = get_gear(session, rule.gear_ref).id
            except HpcgearError as exc:
                cached = RuleError(
                    f"rule {rule.name}: gear {rule.gear_ref}: {exc.message}", exc.hint
                )
            self._gears[rule.id] = cached
        if isinstance(cached, HpcgearError):
            raise cached
        gear = session.get(Gear, cached)
        assert gear is not None
        return gear

    def fixed_inputs(self, session: Session, rule: LoadedRule) -> list[InputSpec]:
        cached = self._fixed.get(rule.id)
        if cached is None:
            try:
                cached = fixed_input_specs(session, rule)
            except HpcgearError as exc:
                cached = exc
            self._fixed[rule.id] = cached
        if isinstance(cached, HpcgearError):
            raise cached
        return cached


def fixed_input_specs(session: Session, rule: LoadedRule) -> list[InputSpec]:
    """The pinned fixed inputs of a rule as input specs."""
    out = []
    for name, pin in rule.fixed.items():
        f = session.get(File, str(pin.get("file_id")))
        container = session.get(Container, f.container_id) if f is not None else None
        if f is None or container is None:
            raise RuleError(
                f"rule {rule.name}: fixed input {name} ({pin.get('path')}) no longer exists",
                "re-apply the rule with a file that exists",
            )
        fv = file_version(session, f, int(pin["version"]))
        out.append(_input_spec(name, "file", container, f, fv))
    return out


@dataclass
class EvalContext:
    """One evaluation run: rules, sites (built on first use), report, mode."""

    rules: RuleSet
    site_factory: Callable[[], SiteRegistry]
    report: EvaluationReport
    dry_run: bool = False
    backfill: bool = False
    would_create: set[tuple[int, str]] = field(default_factory=set)
    _sites: SiteRegistry | None = None

    @property
    def sites(self) -> SiteRegistry:
        if self._sites is None:
            self._sites = self.site_factory()
        return self._sites


def existing_rule_job(session: Session, rule_id: int, dedupe_key: str) -> Job | None:
    """A job of this rule (or a retry of one) with the same gear version, inputs and config."""
    return session.scalar(
        select(Job)
        .where(
            Job.dedupe_key == dedupe_key,
            or_(
                Job.rule_id == rule_id,
                and_(Job.origin_type == "rule", Job.origin_id == str(rule_id)),
            ),
        )
        .order_by(Job.created.desc())
        .limit(1)
    )


def path_of(c: Container, containers: Mapping[str, Container], name: str | None = None) -> str:
    """``group/project/subject/session/acquisition[/analysis][/name]`` from loaded rows."""
    parts = [c.group_id]
    for level in ("project", "subject", "session", "acquisition"):
        cid = getattr(c, f"{level}_id")
        node = containers.get(cid) if cid else None
        if node is not None:
            parts.append(node.label)
    if c.type == "analysis":
        parts.append(c.label)
    if name is not None:
        parts.append(name)
    return "/".join(parts)
