"""Gear rule services: save (add / update / apply), list, show, enable, disable, delete.

Adding or changing a rule needs the admin role on its project; listing,
showing and testing need read-only. Everything about a rule is checked when
it is saved: the gear (pinned version, or the latest enabled one for
``auto_update``), that the trigger, fixed and session inputs exist in the
manifest and together cover its required inputs, that fixed input files exist
(they are pinned to a version), that the config satisfies the manifest, and the
job tags.

Changing a rule does not re-run it on files it already matched (a bulk
re-tag of a project would otherwise re-run every file): new versions and
newly matching files get the new settings; run ``hpcgear batch`` to redo old
data on purpose.

Who rule jobs act as: the rule's *owner* (``gear_rules.created_by``), the
project admin who last saved it. Its jobs are created with that login (it
needs read-write on the destination when the job is created, or the job is
skipped with the reason); ``origin_type`` is ``rule`` and ``origin_id`` the
rule id, so ``hpcgear jobs`` shows where a job came from.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpcgear.db.models import ChangeLog, Container, Gear, GearRule, Job, JobEvent
from hpcgear.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RuleError,
)
from hpcgear.gears.gear_config import resolve_config
from hpcgear.gears.manifest import GearManifest
from hpcgear.gears.service import get_gear, manifest_of
from hpcgear.hierarchy.permissions import RoleName, effective_role, get_actor, require_role
from hpcgear.hierarchy.service import container_path, file_version, resolve_container, resolve_file
from hpcgear.jobs.service import check_job_tags, require_api_url
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.rules import predicates as P
from hpcgear.rules.schema import (
    FixedInput,
    RuleSpec,
    check_rule_name,
    check_shape,
    spec_from_json,
    spec_to_json,
)

logger = logging.getLogger(__name__)

#: Keys of ``gear_rules.spec`` that are bookkeeping, not part of what a user wrote.
BOOKKEEPING = ("created_seq", "created_event", "updated_by", "updated")


@dataclass(frozen=True, slots=True)
class LoadedRule:
    """A rule row as plain values (safe to keep across sessions)."""

    id: int
    project_id: str
    name: str
    owner: str
    enabled: bool
    gear_name: str
    gear_version: str | None
    auto_update: bool
    spec: RuleSpec
    created_seq: int
    created_event: int
    fixed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def gear_ref(self) -> str:
        return self.gear_name if self.auto_update else f"{self.gear_name}@{self.gear_version}"

    @property
    def prerequisite_gears(self) -> frozenset[str]:
        return frozenset(p.gear for p in self.spec.after)


def load_rule(row: GearRule) -> LoadedRule:
    data = dict(row.spec or {})
    spec = spec_from_json(
        row.name,
        data,
        gear=row.gear_name,
        version=row.gear_version,
        auto_update=row.auto_update,
        enabled=row.enabled,
    )
    return LoadedRule(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        owner=row.created_by,
        enabled=row.enabled,
        gear_name=row.gear_name,
        gear_version=row.gear_version,
        auto_update=row.auto_update,
        spec=spec,
        created_seq=int(data.get("created_seq") or 0),
        created_event=int(data.get("created_event") or 0),
        fixed=dict(data.get("fixed_inputs") or {}),
    )


# ------------------------------------------------------------------- lookup


def split_rule_ref(ref: str) -> tuple[str, str]:
    """``group/project/NAME`` -> (``group/project``, NAME)."""
    parts = [p for p in (ref or "").strip().strip("/").split("/") if p]
    if len(parts) != 3:
        raise InvalidInputError(
            f"{ref!r} is not GROUP/PROJECT/RULE", "name a rule as group/project/rule-name"
        )
    return "/".join(parts[:2]), parts[2]


def get_rule_row(
    session: Session, actor: str, ref: str, needed: RoleName = RoleName.READ_ONLY
) -> tuple[Container, GearRule]:
    project_path, name = split_rule_ref(ref)
    project = resolve_container(session, project_path, min_depth=2, max_depth=2)
    require_role(session, actor, project, needed, _action(needed))
    row = session.scalar(
        select(GearRule).where(GearRule.project_id == project.id, GearRule.name == name)
    )
    if row is None:
        known = session.scalars(
            select(GearRule.name).where(GearRule.project_id == project.id).order_by(GearRule.name)
        ).all()
        raise NotFoundError(
            f"project {project_path} has no rule {name!r}",
            f"rules there: {', '.join(known)}" if known else "list rules with `hpcgear rule list`",
        )
    return project, row


def _action(needed: RoleName) -> str:
    return "changing gear rules" if needed == RoleName.ADMIN else "reading gear rules"


def list_rules(session: Session, actor: str, project: str | None = None) -> list[GearRule]:
    """Rules of one project, or of every project the actor may read."""
    user = get_actor(session, actor)
    q = select(GearRule).order_by(GearRule.project_id, GearRule.name)
    if project:
        p = resolve_container(session, project, min_depth=2, max_depth=2)
        require_role(session, actor, p, RoleName.READ_ONLY, "listing gear rules")
        return list(session.scalars(q.where(GearRule.project_id == p.id)))
    rows = list(session.scalars(q))
    if user.site_admin:
        return rows
    readable: dict[str, bool] = {}
    out = []
    for r in rows:
        if r.project_id not in readable:
            c = session.get(Container, r.project_id)
            readable[r.project_id] = c is not None and effective_role(session, user, c) is not None
        if readable[r.project_id]:
            out.append(r)
    return out


# --------------------------------------------------------------------- save


@dataclass(frozen=True, slots=True)
class SaveResult:
    rule: GearRule
    action: Literal["created", "updated", "unchanged"]
    project_path: str


def save_rule(
    session: Session,
    actor: str,
    spec: RuleSpec,
    *,
    create_only: bool = False,
    coerce_strings: bool = False,
    sites: SiteRegistry | None = None,
) -> SaveResult:
    """Create or update one rule after checking everything about it.

    Parameters
    ----------
    create_only
        Refuse when the rule exists (``hpcgear rule add``); ``rule apply`` updates.
    coerce_strings
        Config values are command-line strings to convert to the manifest's types.
    """
    check_rule_name(spec.name)
    check_shape(spec)
    if not spec.project:
        raise RuleError(f"rule {spec.name!r} names no project", "give group/project")
    project = resolve_container(session, spec.project, min_depth=2, max_depth=2)
    require_role(session, actor, project, RoleName.ADMIN, "changing gear rules")
    existing = session.scalar(
        select(GearRule).where(GearRule.project_id == project.id, GearRule.name == spec.name)
    )
    if existing is not None and create_only:
        raise AlreadyExistsError(
            f"project {spec.project} already has a rule {spec.name!r}",
            "pick another name, or change it with `hpcgear rule apply FILE.yaml`",
        )
    where = f"rule {spec.name!r}" + (f" ({spec.source})" if spec.source else "")
    gear, version = _resolve_gear(session, spec, existing, where)
    manifest = manifest_of(gear)
    trigger = _check_inputs(manifest, spec, where)
    fixed = _pin_fixed_inputs(session, actor, manifest, spec, existing, where)
    config = _check_config(manifest, spec, coerce_strings, where)
    tags = check_job_tags(list(spec.tags))
    if sites is not None and any(i.base == "api-key" for i in manifest.inputs):
        # The site its jobs go to must reach the API. Other rules are not routed
        # here: sites may be configured after the rule, and each job is routed
        # (and refused with the reason) when the rule fires.
        require_api_url(manifest, sites.route(tuple(tags)))
    for p in spec.after:
        if p.gear == gear.name:
            raise RuleError(
                f"{where}: a session rule cannot wait for its own gear {p.gear!r}",
                "list the gears that must finish before this one",
            )
        known = session.scalar(select(Gear.id).where(Gear.name == p.gear).limit(1))
        if known is None:
            raise RuleError(
                f"{where}: prerequisite gear {p.gear!r} is not installed",
                "check the name with `hpcgear gear list`",
            )
    stored = spec_to_json(spec)
    stored.update(
        input=trigger,
        fixed_inputs=fixed,
        config=config,
        tags=list(tags),
    )
    project_path = container_path(session, project)
    if existing is not None:
        same = (
            existing.gear_name == gear.name
            and existing.gear_version == version
            and existing.auto_update == spec.auto_update
            and existing.enabled == spec.enabled
            and _user_part(existing.spec) == _user_part(stored)
        )
        if same:
            return SaveResult(existing, "unchanged", project_path)
        old = dict(existing.spec or {})
        existing.gear_name = gear.name
        existing.gear_version = version
        existing.auto_update = spec.auto_update
        existing.enabled = spec.enabled
        existing.created_by = actor  # the admin who last saved it owns its jobs
        existing.spec = {
            **stored,
            "created_seq": old.get("created_seq", 0),
            "created_event": old.get("created_event", 0),
            "updated_by": actor,
            "updated": _now(),
        }
        session.flush()
        logger.info("rule %s/%s updated by %s", project_path, spec.name, actor)
        return SaveResult(existing, "updated", project_path)
    row = GearRule(
        project_id=project.id,
        name=spec.name,
        gear_name=gear.name,
        gear_version=version,
        auto_update=spec.auto_update,
        enabled=spec.enabled,
        created_by=actor,
        spec={
            **stored,
            # Rules act on changes made after they exist (``rules evaluate --since`` backfills).
            "created_seq": int(session.scalar(select(func.max(ChangeLog.seq))) or 0),
            "created_event": int(session.scalar(select(func.max(JobEvent.id))) or 0),
            "updated_by": actor,
            "updated": _now(),
        },
    )
    session.add(row)
    session.flush()
    logger.info("rule %s/%s created by %s", project_path, spec.name, actor)
    return SaveResult(row, "created", project_path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _user_part(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (spec or {}).items() if k not in BOOKKEEPING}


def _resolve_gear(
    session: Session, spec: RuleSpec, existing: GearRule | None, where: str
) -> tuple[Gear, str | None]:
    """The gear the rule runs now, and the version to store (None: follow latest)."""
    name = spec.gear
    try:
        if spec.version:
            return get_gear(session, f"{name}@{spec.version}"), spec.version
        if spec.auto_update:
            return get_gear(session, name), None
        if existing is not None and existing.gear_name == name and existing.gear_version:
            # Re-applying a file that names no version keeps the version pinned before.
            return get_gear(session, f"{name}@{existing.gear_version}"), existing.gear_version
        gear = get_gear(session, name)
        return gear, gear.version
    except (NotFoundError, InvalidInputError) as exc:
        raise RuleError(f"{where}: {exc.message}", exc.hint) from None


def _file_inputs(manifest: GearManifest) -> list[str]:
    return [i.name for i in manifest.inputs if i.base == "file"]


def _check_inputs(manifest: GearManifest, spec: RuleSpec, where: str) -> str | None:
    """Input names exist, are file inputs, and cover the required ones; returns the trigger."""
    files = _file_inputs(manifest)
    listed = ", ".join(files) or "none"

    def check(name: str, what: str) -> None:
        if name not in manifest.input_names:
            raise RuleError(
                f"{where}: gear {manifest.name} has no input {name!r} ({what})",
                f"file inputs of {manifest.name}: {listed}",
            )
        if name not in files:
            raise RuleError(
                f"{where}: input {name!r} of gear {manifest.name} is not a file input",
                f"file inputs: {listed}",
            )

    trigger = spec.input
    if spec.kind == "file":
        if trigger is None:
            free = [n for n in files if n not in spec.fixed_inputs]
            if len(free) != 1:
                raise RuleError(
                    f"{where}: say which input of {manifest.name} the matching file becomes",
                    f"add `input: NAME` (--input NAME); file inputs: {listed}",
                )
            trigger = free[0]
        check(trigger, "input")
    for name in spec.fixed_inputs:
        check(name, "fixed_inputs")
        if name == trigger:
            raise RuleError(
                f"{where}: input {name!r} is both the trigger input and a fixed input",
                "give it one role",
            )
    for name in spec.session_inputs:
        check(name, "session_inputs")
        if name in spec.fixed_inputs:
            raise RuleError(
                f"{where}: input {name!r} is both a fixed and a session input",
                "give it one role",
            )
    given = {*spec.fixed_inputs, *spec.session_inputs, *([trigger] if trigger else [])}
    missing = [
        i.name for i in manifest.inputs if i.base == "file" and i.required and i.name not in given
    ]
    if missing:
        key = "session_inputs" if spec.kind == "session" else "fixed_inputs"
        raise RuleError(
            f"{where}: required input(s) {', '.join(missing)} of gear {manifest.name} get no file",
            f"add them under `{key}`",
        )
    return trigger


def _pin_fixed_inputs(
    session: Session,
    actor: str,
    manifest: GearManifest,
    spec: RuleSpec,
    existing: GearRule | None,
    where: str,
) -> dict[str, dict[str, Any]]:
    """Resolve each fixed input path to a file id and a pinned version."""
    before = dict(((existing.spec or {}) if existing else {}).get("fixed_inputs") or {})
    out: dict[str, dict[str, Any]] = {}
    for name, fixed in spec.fixed_inputs.items():
        try:
            container, f = resolve_file(session, actor, fixed.path, RoleName.READ_ONLY)
            version = fixed.version
            old = before.get(name) or {}
            if version is None and old.get("path") == fixed.path and old.get("file_id") == f.id:
                version = int(old["version"])  # re-apply keeps the version pinned before
            fv = file_version(session, f, version)
        except (NotFoundError, InvalidInputError, PermissionDeniedError) as exc:
            raise RuleError(f"{where}: fixed input {name}: {exc.message}", exc.hint) from None
        decl = manifest.input(name)
        if decl.type_filter and f.type not in decl.type_filter:
            raise RuleError(
                f"{where}: fixed input {name}: gear {manifest.name} takes file types "
                f"{', '.join(decl.type_filter)}; {f.name!r} is {f.type or 'untyped'}",
                "pick a file of an accepted type",
            )
        out[name] = {
            "path": fixed.path,
            "version": fv.version,
            "file_id": f.id,
            "container_id": container.id,
        }
    return out


def _check_config(
    manifest: GearManifest, spec: RuleSpec, coerce_strings: bool, where: str
) -> dict[str, Any]:
    try:
        full = resolve_config(manifest, dict(spec.config), coerce_strings=coerce_strings)
    except InvalidInputError as exc:
        raise RuleError(f"{where}: {exc.message}", exc.hint) from None
    # Store what the rule sets (typed), not the defaults: a new gear version's
    # defaults then apply to keys the rule leaves alone.
    return {k: full.get(k) for k in spec.config if spec.config[k] is not None}


# --------------------------------------------------- enable / disable / delete


def set_enabled(session: Session, actor: str, ref: str, enabled: bool) -> GearRule:
    _project, row = get_rule_row(session, actor, ref, RoleName.ADMIN)
    row.enabled = enabled
    row.spec = {**(row.spec or {}), "updated_by": actor, "updated": _now()}
    session.flush()
    logger.info("rule %s %s by %s", ref, "enabled" if enabled else "disabled", actor)
    return row


def delete_rule(session: Session, actor: str, ref: str) -> int:
    """Delete a rule (its jobs stay; they keep ``rule_id`` for the record)."""
    _project, row = get_rule_row(session, actor, ref, RoleName.ADMIN)
    rule_id = row.id
    session.delete(row)
    session.flush()
    logger.info("rule %s deleted by %s", ref, actor)
    return rule_id


# ------------------------------------------------------------------ apply


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    project: str
    name: str
    action: str


def apply_rules(
    session: Session,
    actor: str,
    specs: Sequence[RuleSpec],
    *,
    sites: SiteRegistry | None = None,
) -> list[ApplyOutcome]:
    """Create or update every rule (the caller's transaction makes it all or nothing)."""
    out = []
    for spec in specs:
        res = save_rule(session, actor, spec, sites=sites)
        out.append(ApplyOutcome(res.project_path, spec.name, res.action))
    return out


# ------------------------------------------------------------------ output


def rule_to_dict(session: Session, row: GearRule) -> dict[str, Any]:
    rule = load_rule(row)
    spec = rule.spec
    project = session.get(Container, row.project_id)
    jobs = session.scalar(select(func.count()).select_from(Job).where(Job.rule_id == row.id))
    return {
        "id": row.id,
        "project": container_path(session, project) if project else row.project_id,
        "name": row.name,
        "kind": spec.kind,
        "enabled": row.enabled,
        "gear": row.gear_name,
        "version": row.gear_version,
        "auto_update": row.auto_update,
        "owner": row.created_by,
        "created": row.created.isoformat() if row.created else None,
        "updated": (row.spec or {}).get("updated"),
        "description": spec.description,
        "when": P.render(spec.when) if spec.when is not None else None,
        "conditions": P.to_json(spec.when) if spec.when is not None else None,
        "input": spec.input,
        "fixed_inputs": {k: dict(v) for k, v in rule.fixed.items()},
        "after": [{"gear": p.gear, "analysis_label": p.analysis_label} for p in spec.after],
        "require": spec.require,
        "session_inputs": dict(spec.session_inputs),
        "retries": spec.retries,
        "config": dict(spec.config),
        "tags": list(spec.tags),
        "priority": spec.priority,
        "destination": spec.destination,
        "jobs": int(jobs or 0),
    }


def rule_to_yaml_doc(data: Mapping[str, Any], row: GearRule) -> dict[str, Any]:
    """The rule as a YAML mapping ``hpcgear rule apply`` accepts (round trip)."""
    spec = load_rule(row).spec
    doc: dict[str, Any] = {"name": data["name"], "project": data["project"]}
    doc["gear"] = data["gear"] if data["auto_update"] else f"{data['gear']}@{data['version']}"
    if data["auto_update"]:
        doc["auto_update"] = True
    if data["description"]:
        doc["description"] = data["description"]
    if spec.when is not None:
        doc["when"] = to_yaml_condition(spec.when)
    if spec.kind == "file":
        doc["input"] = data["input"]
    if data["fixed_inputs"]:
        doc["fixed_inputs"] = {
            k: {"path": v["path"], "version": v["version"]} for k, v in data["fixed_inputs"].items()
        }
    if spec.after:
        doc["after"] = {
            "require": spec.require,
            "gears": [
                p.gear
                if not p.analysis_label
                else {"gear": p.gear, "analysis_label": p.analysis_label}
                for p in spec.after
            ],
        }
        if spec.session_inputs:
            doc["session_inputs"] = dict(spec.session_inputs)
        doc["retries"] = spec.retries
    if data["config"]:
        doc["config"] = data["config"]
    if data["tags"]:
        doc["tags"] = data["tags"]
    doc["priority"] = data["priority"]
    if spec.kind == "file":
        doc["destination"] = data["destination"]
    doc["enabled"] = data["enabled"]
    return doc


def to_yaml_condition(cond: P.Condition) -> Any:
    """A condition in the YAML form (explicit operators, so it parses back the same)."""
    if isinstance(cond, P.All):
        return {"all": [to_yaml_condition(c) for c in cond.items]}
    if isinstance(cond, P.AnyOf):
        return {"any": [to_yaml_condition(c) for c in cond.items]}
    if isinstance(cond, P.Not):
        return {"not": to_yaml_condition(cond.item)}
    short = cond.op == cond.field.default_op and not isinstance(cond.value, list | dict)
    if short and isinstance(cond.value, str) and cond.value.startswith("regex:"):
        short = False  # would read back as a regex
    return {str(cond.field): cond.value if short else {cond.op: cond.value}}


def fixed_input_specs(rule: LoadedRule) -> dict[str, FixedInput]:
    return {
        k: FixedInput(path=str(v["path"]), version=v.get("version")) for k, v in rule.fixed.items()
    }
