"""Session rules: run gear B on a session once gear A (and C ...) completed on it.

A session rule (a rule with ``after:``) is checked on a session when

* a job of one of its prerequisite gears ends on the session (a job whose
  destination is the session or anything inside it; the session is ready when
  no job of a prerequisite gear on it is still pending or running),
* the controller has decided not to retry a failed job of the rule itself
  (its ``retry_decision`` event): the rule may then make a new attempt, or
* the session's own tags or info change (for rules with ``when``).

It then decides, in order:

1. prerequisites: ``require: all`` (default) needs a completed job of every
   listed gear on the session, ``any`` needs one; a prerequisite with
   ``analysis_label`` only counts jobs whose analysis label matches the glob;
2. ``when`` (optional) holds on the session (session.*, subject.*, project.*);
3. inputs: each ``session_inputs`` regex matches exactly one file name on the
   session or its acquisitions, else exactly one on the project; fixed
   inputs are pinned;
4. attempts, counted over jobs of this rule on this session with the same
   gear version, inputs and config (the dedupe key; a controller retry is an
   attempt too): a complete or unfinished one means nothing to do; after a
   failure (once the controller decided not to retry it) a new attempt is
   made while attempts <= ``retries``; then the rule gives up, says so in the
   report and records a ``rule_gave_up`` event on the last attempt. A job a
   user cancelled is not retried automatically.

New input versions or a new gear version make a new dedupe key, so they start
with a fresh attempt count.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, Gear, Job, JobEvent
from hpcgear.errors import HpcgearError
from hpcgear.gears.service import get_gear
from hpcgear.hierarchy.service import file_version
from hpcgear.jobs.service import PreparedJob, _input_spec, prepare_job, store_job
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.jobs.transitions import record_event
from hpcgear.rules import predicates as P
from hpcgear.rules.context import EvalContext, fixed_input_specs, path_of
from hpcgear.rules.facts import facts_for_container, load_containers
from hpcgear.rules.service import LoadedRule
from hpcgear.spec import InputSpec
from hpcgear.states import JobState

logger = logging.getLogger(__name__)

Action = Literal["create", "done", "running", "blocked", "waiting", "gave_up", "cancelled", "error"]

GAVE_UP_EVENT = "rule_gave_up"


@dataclass(frozen=True, slots=True)
class SessionDecision:
    action: Action
    message: str
    explanation: P.Explanation
    prepared: PreparedJob | None = None
    previous: Job | None = None  # the failed attempt a new one follows
    latest: Job | None = None  # the last attempt (for gave_up)
    attempts: int = 0


# ----------------------------------------------------------------- triggers


def process_job_events(ctx: EvalContext, s: Session, rows: Iterable[Any]) -> None:
    """Job events (id, job_id, kind, new_state) -> session rules to check."""
    ended = {JobState.COMPLETE.value, JobState.FAILED.value, JobState.CANCELLED.value}
    relevant = [r for r in rows if r[3] in ended or r[2] == "retry_decision"]
    if not relevant:
        return
    jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_({r[1] for r in relevant})))}
    gears = {
        g.id: g.name
        for g in s.scalars(select(Gear).where(Gear.id.in_({j.gear_id for j in jobs.values()})))
    }
    dests = {
        c.id: c
        for c in s.scalars(
            select(Container).where(Container.id.in_({j.destination_id for j in jobs.values()}))
        )
    }
    todo: dict[tuple[int, str], tuple[LoadedRule, str]] = {}
    for event_id, job_id, kind, new_state in relevant:
        job = jobs.get(job_id)
        dest = dests.get(job.destination_id) if job is not None else None
        if job is None or dest is None or not dest.session_id or not dest.project_id:
            continue
        for rule in ctx.rules.session_rules.get(dest.project_id, []):
            if not ctx.backfill and int(event_id) <= rule.created_event:
                continue
            if new_state in ended:
                # Any prerequisite job ending may be the last unfinished one on the
                # session (earlier ones may have completed meanwhile).
                gear = gears.get(job.gear_id, "")
                if gear in rule.prerequisite_gears:
                    todo.setdefault(
                        (rule.id, dest.session_id), (rule, f"{gear} job {job.id} {new_state}")
                    )
            elif (
                kind == "retry_decision"
                and job.origin_type == "rule"
                and job.origin_id == str(rule.id)
                and job.state == JobState.FAILED.value
            ):
                todo.setdefault((rule.id, dest.session_id), (rule, f"job {job.id} failed"))
    _check_all(ctx, s, todo)


def process_session_changes(ctx: EvalContext, s: Session, sessions: Mapping[str, int]) -> None:
    """Session metadata changed: check the session rules that have ``when`` conditions."""
    todo: dict[tuple[int, str], tuple[LoadedRule, str]] = {}
    rows = s.scalars(select(Container).where(Container.id.in_(list(sessions))))
    for c in rows:
        for rule in ctx.rules.session_rules.get(str(c.project_id), []):
            if rule.spec.when is None:
                continue
            if not ctx.backfill and sessions[c.id] <= rule.created_seq:
                continue
            todo.setdefault((rule.id, c.id), (rule, "session metadata changed"))
    _check_all(ctx, s, todo)


def _check_all(
    ctx: EvalContext, s: Session, todo: Mapping[tuple[int, str], tuple[LoadedRule, str]]
) -> None:
    for (_rule_id, session_id), (rule, why) in todo.items():
        session_c = s.get(Container, session_id)
        if session_c is not None:
            run_session_rule(ctx, s, rule, session_c, why)


def run_session_rule(
    ctx: EvalContext, s: Session, rule: LoadedRule, session_c: Container, why: str
) -> SessionDecision:
    report = ctx.report
    report.sessions_evaluated += 1
    containers = load_containers(s, [session_c.id])
    where = path_of(session_c, containers)
    gear: Gear | None = None
    gear_error: str | None = None
    try:
        gear = ctx.rules.gear(s, rule)
    except HpcgearError as exc:
        gear_error = exc.message
    decision = decide(
        s, ctx.sites, rule, session_c, gear, would_create=ctx.would_create, gear_error=gear_error
    )
    if decision.action == "create":
        prepared = decision.prepared
        assert prepared is not None
        entry = {
            "rule": rule.name,
            "rule_id": rule.id,
            "gear": f"{prepared.gear.name}@{prepared.gear.version}",
            "trigger": why,
            "destination": where,
            "site": prepared.site.name,
            "attempt": decision.attempts + 1,
        }
        report.jobs_created += 1
        if ctx.dry_run:
            ctx.would_create.add((rule.id, prepared.dedupe_key))
            report.job({**entry, "id": None})
            return decision
        job = store_job(
            s,
            rule.owner,
            prepared,
            origin_type="rule",
            origin_id=str(rule.id),
            previous=decision.previous,
            reason=f"rule {rule.name}: {why}; {decision.message}",
        )
        job.rule_id = rule.id
        s.flush()
        report.job({**entry, "id": job.id})
        logger.info("rule %s: session %s -> job %s (%s)", rule.name, where, job.id, why)
    elif decision.action in ("done", "running"):
        report.duplicates += 1
    elif decision.action == "gave_up":
        latest = decision.latest
        assert latest is not None
        already = s.scalar(
            select(JobEvent.id)
            .where(JobEvent.job_id == latest.id, JobEvent.kind == GAVE_UP_EVENT)
            .limit(1)
        )
        if already is None:
            report.gave_up += 1
            report.note(f"rule {rule.name}: {where}: {decision.message}")
            logger.warning("rule %s: %s: %s", rule.name, where, decision.message)
            if not ctx.dry_run:
                record_event(
                    s,
                    latest,
                    GAVE_UP_EVENT,
                    rule.owner,
                    f"rule {rule.name}: {decision.message}",
                    data={"rule_id": rule.id, "attempts": decision.attempts},
                )
                s.flush()
    elif decision.action == "error":
        report.errors += 1
        report.note(f"rule {rule.name}: {where}: {decision.message}")
        logger.warning("rule %s: %s: %s", rule.name, where, decision.message)
    return decision


# ------------------------------------------------------------------ decision


def decide(
    s: Session,
    sites: SiteRegistry,
    rule: LoadedRule,
    session_c: Container,
    gear: Gear | None,
    *,
    would_create: set[tuple[int, str]] | None = None,
    gear_error: str | None = None,
) -> SessionDecision:
    """What the session rule would do on this session now, with the reasons as a tree."""
    checks: list[P.Explanation] = []

    def result(action: Action, message: str, **kw: Any) -> SessionDecision:
        ok = action == "create"
        root = P.Explanation(
            f"rule {rule.name} on session {session_c.label}",
            ok,
            ("would fire: " if ok else "would not fire: ") + message,
            tuple(checks),
        )
        return SessionDecision(action, message, root, **kw)

    checks.append(
        P.Explanation(
            "rule is enabled",
            rule.enabled,
            "" if rule.enabled else "disabled: `hpcgear rule enable` turns it on",
        )
    )
    if not rule.enabled:
        return result("blocked", "the rule is disabled")
    prereq = prerequisites(s, rule, session_c)
    checks.append(prereq)
    if not prereq.passed:
        return result("blocked", "prerequisites not met")
    containers = load_containers(s, [session_c.id])
    if rule.spec.when is not None:
        cond = P.evaluate(rule.spec.when, facts_for_container(session_c, containers))
        checks.append(cond)
        if not cond.passed:
            return result("blocked", "conditions do not hold")
    inputs_node, specs = session_inputs(s, rule, session_c)
    checks.append(inputs_node)
    if not inputs_node.passed:
        return result("error", inputs_node.why)
    if gear is None:
        checks.append(P.Explanation("gear is available", False, gear_error or "unknown"))
        return result("error", gear_error or "gear unavailable")
    try:
        prepared = prepare_job(
            s,
            rule.owner,
            sites,
            gear=gear,
            destination=session_c,
            inputs=[*specs, *fixed_input_specs(s, rule)],
            rule_config=rule.spec.config,
            tags=rule.spec.tags,
            priority=rule.spec.priority,
        )
    except HpcgearError as exc:
        checks.append(P.Explanation("a job can be prepared", False, exc.message))
        return result("error", exc.message)
    checks.append(
        P.Explanation(
            "a job can be prepared",
            True,
            f"{gear.name}@{gear.version}, site {prepared.site.name}, as {rule.owner}",
        )
    )
    if would_create is not None and (rule.id, prepared.dedupe_key) in would_create:
        checks.append(P.Explanation("attempts", False, "this dry run already queues it"))
        return result("running", "already queued in this dry run")
    attempts = list(
        s.scalars(
            select(Job)
            .where(
                Job.origin_type == "rule",
                Job.origin_id == str(rule.id),
                Job.destination_id == session_c.id,
                Job.dedupe_key == prepared.dedupe_key,
            )
            .order_by(Job.created, Job.attempt)
        )
    )
    n = len(attempts)
    limit = 1 + rule.spec.retries
    if not attempts:
        checks.append(P.Explanation("attempts", True, f"none yet (up to {limit} allowed)"))
        return result("create", "first attempt", prepared=prepared)
    done = [j for j in attempts if j.state == JobState.COMPLETE.value]
    if done:
        checks.append(
            P.Explanation("attempts", False, f"job {done[-1].id} already completed these inputs")
        )
        return result("done", f"job {done[-1].id} already completed", attempts=n)
    live = [j for j in attempts if not JobState(j.state).final]
    if live:
        checks.append(P.Explanation("attempts", False, f"job {live[-1].id} is {live[-1].state}"))
        return result("running", f"job {live[-1].id} is {live[-1].state}", attempts=n)
    successors = {j.previous_id for j in attempts}
    ends = [j for j in attempts if j.id not in successors]
    latest = ends[-1] if ends else attempts[-1]
    if latest.state == JobState.CANCELLED.value:
        checks.append(
            P.Explanation("attempts", False, f"job {latest.id} was cancelled; no automatic retry")
        )
        return result("cancelled", f"job {latest.id} was cancelled", latest=latest, attempts=n)
    if n >= limit:
        msg = (
            f"gave up after {n} failed attempt(s) (retries: {rule.spec.retries}); "
            f"last: job {latest.id} ({latest.failure_kind or 'failed'})"
        )
        checks.append(P.Explanation("attempts", False, msg))
        return result("gave_up", msg, latest=latest, attempts=n)
    decided = s.scalar(
        select(JobEvent.id)
        .where(JobEvent.job_id == latest.id, JobEvent.kind == "retry_decision")
        .limit(1)
    )
    if decided is None:
        checks.append(
            P.Explanation(
                "attempts",
                False,
                f"job {latest.id} failed; waiting for the controller's retry decision",
            )
        )
        return result("waiting", "waiting for the controller's retry decision", attempts=n)
    msg = f"attempt {n + 1} of {limit} after job {latest.id} failed ({latest.failure_kind})"
    checks.append(P.Explanation("attempts", True, msg))
    return result("create", msg, prepared=prepared, previous=latest, attempts=n)


def prerequisites(s: Session, rule: LoadedRule, session_c: Container) -> P.Explanation:
    """One node per prerequisite gear: is it complete on the session?

    Complete means a completed job of the gear exists *and* no job of that gear on
    the session is still unfinished (pending ... staging): a session with three
    prerequisite jobs is ready when the last one ends, not the first.
    """
    names = sorted(rule.prerequisite_gears)
    unfinished: dict[str, int] = {}
    for gear_name, count in s.execute(
        select(Gear.name, func.count(Job.id))
        .join(Gear, Gear.id == Job.gear_id)
        .join(Container, Container.id == Job.destination_id)
        .where(
            Container.session_id == session_c.id,
            Job.state.in_([st.value for st in JobState if not st.final]),
            Gear.name.in_(names),
        )
        .group_by(Gear.name)
    ):
        unfinished[str(gear_name)] = int(count)
    rows = s.execute(
        select(Job.id, Gear.name, Job.finished, Job.modified)
        .join(Gear, Gear.id == Job.gear_id)
        .join(Container, Container.id == Job.destination_id)
        .where(
            Container.session_id == session_c.id,
            Job.state == JobState.COMPLETE.value,
            Gear.name.in_(names),
        )
        .order_by(Job.created)
    ).all()
    labels: dict[str, list[str]] = {}
    if any(p.analysis_label for p in rule.spec.after) and rows:
        for job_id, label in s.execute(
            select(Container.job_id, Container.label).where(
                Container.type == "analysis", Container.job_id.in_([r[0] for r in rows])
            )
        ):
            labels.setdefault(str(job_id), []).append(label)
    kids = []
    for p in rule.spec.after:
        jobs = [r for r in rows if r[1] == p.gear]
        busy = unfinished.get(p.gear, 0)
        if busy:
            kids.append(
                P.Explanation(
                    f"{p.describe()} completed",
                    False,
                    f"{busy} {p.gear} job(s) on this session still pending or running"
                    + (f" ({len(jobs)} completed)" if jobs else ""),
                )
            )
            continue
        if p.analysis_label:
            fitting = [
                r
                for r in jobs
                if any(fnmatch.fnmatchcase(lb, p.analysis_label) for lb in labels.get(r[0], []))
            ]
            if fitting:
                why = f"job {fitting[-1][0]} completed with a matching analysis"
            elif jobs:
                seen = sorted({lb for r in jobs for lb in labels.get(r[0], [])})
                why = (
                    f"{len(jobs)} completed {p.gear} job(s), but their analyses are labelled "
                    f"{', '.join(map(repr, seen)) or '(none)'}"
                )
            else:
                why = f"no completed {p.gear} job on this session"
            kids.append(P.Explanation(f"{p.describe()} completed", bool(fitting), why))
            continue
        why = (
            f"job {jobs[-1][0]} completed" if jobs else f"no completed {p.gear} job on this session"
        )
        kids.append(P.Explanation(f"{p.describe()} completed", bool(jobs), why))
    passed_n = sum(1 for k in kids if k.passed)
    if rule.spec.require == "any":
        return P.Explanation(
            "any prerequisite completed",
            passed_n > 0,
            f"{passed_n} of {len(kids)} completed",
            tuple(kids),
        )
    return P.Explanation(
        "all prerequisites completed",
        passed_n == len(kids),
        f"{passed_n} of {len(kids)} completed",
        tuple(kids),
    )


def session_inputs(
    s: Session, rule: LoadedRule, session_c: Container
) -> tuple[P.Explanation, list[InputSpec]]:
    """Each session input regex -> the one matching file (session + acquisitions, then project)."""
    if not rule.spec.session_inputs:
        return P.Explanation("inputs found", True, "the rule takes no session inputs"), []
    session_files: list[tuple[File, Container]] = [
        (row[0], row[1])
        for row in s.execute(
            select(File, Container)
            .join(Container, Container.id == File.container_id)
            .where(
                Container.session_id == session_c.id,
                Container.type.in_(("session", "acquisition")),
            )
            .order_by(Container.label, File.name)
        )
    ]
    project_files: list[tuple[File, Container]] | None = None
    kids: list[P.Explanation] = []
    specs: list[InputSpec] = []
    for name, rx in rule.spec.session_inputs.items():
        pattern = re.compile(rx)
        found = [(f, c) for f, c in session_files if pattern.search(f.name)]
        level = "session"
        if not found:
            if project_files is None:
                project = s.get(Container, str(session_c.project_id))
                project_files = (
                    [
                        (f, project)
                        for f in s.scalars(
                            select(File).where(File.container_id == project.id).order_by(File.name)
                        )
                    ]
                    if project is not None
                    else []
                )
            found = [(f, c) for f, c in project_files if pattern.search(f.name)]
            level = "project"
        title = f"input {name} matches {rx!r}"
        if len(found) == 1:
            f, c = found[0]
            fv = file_version(s, f)
            specs.append(_input_spec(name, "file", c, f, fv))
            shown = f"{c.label}/{f.name}" if c.type == "acquisition" else f.name
            kids.append(P.Explanation(title, True, f"{level} file {shown} v{fv.version}"))
        elif not found:
            kids.append(
                P.Explanation(title, False, "no file on the session or the project matches")
            )
        else:
            names = ", ".join(
                (f"{c.label}/{f.name}" if c.type == "acquisition" else f.name) for f, c in found[:5]
            )
            kids.append(
                P.Explanation(
                    title,
                    False,
                    f"{len(found)} {level} files match ({names}); make the regex match one",
                )
            )
    failed = [k for k in kids if not k.passed]
    why = "; ".join(f"{k.condition}: {k.why}" for k in failed) if failed else "all found"
    return P.Explanation("inputs found", not failed, why, tuple(kids)), specs


def explain_session_rule(
    s: Session, sites: SiteRegistry, rule: LoadedRule, session_c: Container
) -> P.Explanation:
    """``hpcgear rule test`` on a session."""
    try:
        gear: Gear | None = get_gear(s, rule.gear_ref)
        gear_error = None
    except HpcgearError as exc:
        gear, gear_error = None, exc.message
    return decide(s, sites, rule, session_c, gear, gear_error=gear_error).explanation
