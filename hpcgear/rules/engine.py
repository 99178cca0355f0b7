"""The rule engine: turn new changes and job completions into pending jobs.

File rules fire on *edges*, not on state. The engine reads ``change_log``
rows after its cursor (uploads, metadata changes on files and containers),
evaluates the enabled file rules of each touched file's project on the file's
current version, and compares with its memory (``rule_matches``): a rule
fires when a file matches and the memory does not already record that very
version as matched, i.e. on a new version that matches, or on a metadata
change that makes a non-matching file match. When a file stops matching its
memory row goes, so matching again later is a new edge (the job dedupe key
then still stops an identical job). Guards, in order:

* changes older than the rule are ignored (``--since`` backfills lift this);
* a version published by a job fires rules only when that job is
  ``complete`` (outputs of failed or unfinished jobs never trigger), and never
  the rule whose job made it (no loops);
* the same rule never queues the same gear version with the same input
  versions and config twice (``jobs.dedupe_key``; retries included).

Session rules (:mod:`hpcgear.rules.workflow`) are evaluated from the
``job_events`` feed (jobs completing, and the controller's retry decisions)
and from metadata changes on sessions.

Work is done in batches of :data:`BATCH_SIZE` feed rows; each batch's jobs,
memory rows and cursor move commit together (compare-and-set on the cursor),
so ``hpcgear rules evaluate`` may be interrupted and rerun at any point, and
its cost follows the number of new changes, not the size of the database.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, literal, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from hpcgear.config.settings import Settings
from hpcgear.db.models import ChangeLog, Container, File, FileVersion, Job, JobEvent, RuleMatch
from hpcgear.db.session import Database
from hpcgear.errors import (
    DatabaseError,
    HpcgearError,
    InvalidInputError,
    PermissionDeniedError,
    RuleError,
)
from hpcgear.gears.service import get_gear
from hpcgear.hierarchy.permissions import RoleName, require_role, require_site_admin
from hpcgear.hierarchy.service import (
    container_path,
    file_version,
    resolve_container,
    resolve_file,
)
from hpcgear.jobs.service import _input_spec, prepare_job, store_job
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.rules import predicates as P
from hpcgear.rules import workflow
from hpcgear.rules.context import (
    EvalContext,
    EvaluationReport,
    RuleSet,
    existing_rule_job,
    fixed_input_specs,
    path_of,
)
from hpcgear.rules.cursors import (
    CHANGES,
    JOB_EVENTS,
    CursorMoved,
    CursorState,
    advance,
    read_cursor,
    save_cursor,
)
from hpcgear.rules.facts import (
    FactsBuilder,
    current_versions,
    facts_for_file,
    file_facts_from_row,
    load_containers,
)
from hpcgear.rules.service import LoadedRule, get_rule_row, load_rule
from hpcgear.states import JobState


class ControllerHandles(Protocol):
    """What rule evaluation needs of the controller's context (no import of it)."""

    db: Database
    settings: Settings


logger = logging.getLogger(__name__)

BATCH_SIZE = 500
#: Batches per feed and controller cycle, so a backlog never stalls job handling.
CONTROLLER_MAX_BATCHES = 20
FILE_KINDS = ("file.version", "file.meta")


# ------------------------------------------------------------------ public API


def evaluate(
    db: Database,
    sites: SiteRegistry | Callable[[], SiteRegistry],
    *,
    since: dt.datetime | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    max_batches: int | None = None,
) -> EvaluationReport:
    """Evaluate every enabled rule on what changed since the last evaluation.

    Parameters
    ----------
    sites
        The site registry (or a function building it on first use) jobs are routed with.
    since
        Backfill: re-read changes and job events from this time on, ignoring
        the cursors (which are left where they are) and the rules' creation
        time. Memory and dedupe keys keep it from queueing anything twice.
    dry_run
        Do everything but store: one transaction, rolled back; cursors unmoved.
    max_batches
        Stop each feed after this many batches (the controller's per-cycle budget).

    Returns
    -------
    EvaluationReport
        Counts (changes read, jobs created, duplicates skipped, ...) plus the
        created jobs and notes about skipped or failed ones.
    """
    report = EvaluationReport(dry_run=dry_run)
    factory: Callable[[], SiteRegistry] = sites if callable(sites) else (lambda: sites)
    if since is not None:
        report.backfill_since = since.isoformat()
    if dry_run:
        with db.session() as s:
            try:
                ctx = _context(s, factory, report, dry_run=True, backfill=since is not None)
                _run_feeds(db, ctx, s, since, batch_size, max_batches)
            finally:
                s.rollback()
        return report
    with db.session() as s:
        ctx = _context(s, factory, report, dry_run=False, backfill=since is not None)
    _run_feeds(db, ctx, None, since, batch_size, max_batches)
    return report


def evaluate_for_controller(ctx: ControllerHandles) -> int:
    """The controller's rules hook: evaluate new changes; returns the jobs created."""
    from hpcgear.jobs.sites import SiteRegistry

    settings = ctx.settings
    report = evaluate(
        ctx.db,
        lambda: SiteRegistry.from_settings(settings),
        max_batches=CONTROLLER_MAX_BATCHES,
    )
    if report.jobs_created or report.errors or report.gave_up:
        logger.info(
            "rules: %s change(s), %s job event(s) read; %s job(s) created, %s duplicate(s), "
            "%s error(s), %s gave up",
            report.changes_read,
            report.job_events_read,
            report.jobs_created,
            report.duplicates,
            report.errors,
            report.gave_up,
        )
    for note in report.notes:
        logger.warning("rules: %s", note)
    return report.jobs_created


def check_evaluator(session: Session, actor: str) -> None:
    """``hpcgear rules evaluate`` acts for every project's rules: site admins only."""
    require_site_admin(session, actor, "evaluating gear rules")


# --------------------------------------------------------------------- feeds


def _context(
    s: Session,
    factory: Callable[[], SiteRegistry],
    report: EvaluationReport,
    *,
    dry_run: bool,
    backfill: bool,
) -> EvalContext:
    return EvalContext(
        rules=RuleSet(s), site_factory=factory, report=report, dry_run=dry_run, backfill=backfill
    )


def _run_feeds(
    db: Database,
    ctx: EvalContext,
    shared: Session | None,
    since: dt.datetime | None,
    batch_size: int,
    max_batches: int | None,
) -> None:
    for name in (CHANGES, JOB_EVENTS):
        try:
            _run_feed(db, ctx, shared, name, since, batch_size, max_batches)
        except CursorMoved as exc:
            ctx.report.stopped = exc.message
            logger.info("rules: %s", exc.message)
            return
        except OperationalError as exc:  # locked / unreachable: the current batch rolled back
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise DatabaseError(
                f"rule evaluation stopped at {name} position "
                f"{ctx.report.change_cursor if name == CHANGES else ctx.report.event_cursor}: "
                f"{reason}",
                "another writer holds the database; run again (committed batches are kept)",
                transient=True,
            ) from exc


def _run_feed(
    db: Database,
    ctx: EvalContext,
    shared: Session | None,
    name: str,
    since: dt.datetime | None,
    batch_size: int,
    max_batches: int | None,
) -> None:
    """Read one feed to its end (or ``max_batches``), one transaction per batch."""
    local: CursorState | None = None  # backfill and dry-run cursors are never saved
    batches = 0
    first = True
    while max_batches is None or batches < max_batches:
        with _batch_session(db, shared) as s:
            if local is None:
                stored = read_cursor(s, name, lock=shared is None)
                if since is not None:
                    local = CursorState(name, _position_at(s, name, since), [])
                elif shared is not None:
                    local = CursorState(name, stored.position, list(stored.gaps))
                state = local or stored
            else:
                state = local
            new, n = _read_batch(ctx, s, name, state, first, batch_size)
            if local is not None:
                local = new
            else:
                save_cursor(s, state, new)
            _set_report_cursor(ctx.report, name, new.position)
        batches += 1
        ctx.report.batches += 1
        first = False
        if n < batch_size:
            return


class _batch_session:
    """A new committed session per batch, or the dry run's shared one (flushed only)."""

    def __init__(self, db: Database, shared: Session | None) -> None:
        self.db, self.shared = db, shared
        self._cm: Any = None

    def __enter__(self) -> Session:
        if self.shared is not None:
            return self.shared
        self._cm = self.db.session()
        s: Session = self._cm.__enter__()
        return s

    def __exit__(self, *exc: Any) -> bool:
        if self._cm is not None:
            return bool(self._cm.__exit__(*exc))
        if self.shared is not None and exc[0] is None:
            self.shared.flush()
        return False


def _set_report_cursor(report: EvaluationReport, name: str, position: int) -> None:
    if name == CHANGES:
        report.change_cursor = position
    else:
        report.event_cursor = position


def _position_at(s: Session, name: str, since: dt.datetime) -> int:
    """The feed position just before the first row at or after ``since``."""
    if name == CHANGES:
        first = s.scalar(select(func.min(ChangeLog.seq)).where(ChangeLog.created >= since))
        last = s.scalar(select(func.max(ChangeLog.seq)))
    else:
        first = s.scalar(select(func.min(JobEvent.id)).where(JobEvent.ts >= since))
        last = s.scalar(select(func.max(JobEvent.id)))
    if first is None:
        return int(last or 0)
    return int(first) - 1


def _read_batch(
    ctx: EvalContext, s: Session, name: str, state: CursorState, first: bool, limit: int
) -> tuple[CursorState, int]:
    if name == CHANGES:
        cols = (ChangeLog.seq, ChangeLog.kind, ChangeLog.container_id, ChangeLog.file_id)
        key = ChangeLog.seq
    else:
        cols = (JobEvent.id, JobEvent.job_id, JobEvent.kind, JobEvent.new_state)
        key = JobEvent.id
    rows = list(
        s.execute(select(*cols).where(key > state.position).order_by(key).limit(limit)).all()
    )
    gap_rows = []
    if first and state.gaps:
        gap_rows = list(s.execute(select(*cols).where(key.in_(state.gap_ids))).all())
    todo = [*gap_rows, *rows]
    if name == CHANGES:
        ctx.report.changes_read += len(todo)
        if todo and not ctx.rules.empty:
            _process_changes(ctx, s, todo)
    else:
        ctx.report.job_events_read += len(todo)
        if todo and ctx.rules.session_rules:
            workflow.process_job_events(ctx, s, todo)
    new = advance(state, [int(r[0]) for r in rows], {int(r[0]) for r in gap_rows})
    return new, len(rows)


# ----------------------------------------------------------- change processing


def _process_changes(ctx: EvalContext, s: Session, rows: Iterable[Any]) -> None:
    file_seq: dict[str, int] = {}
    container_rows: list[tuple[int, str]] = []
    for seq, kind, container_id, file_id in rows:
        if kind in FILE_KINDS and file_id:
            file_seq[file_id] = max(file_seq.get(file_id, 0), int(seq))
        elif kind == "container.meta":
            container_rows.append((int(seq), container_id))
    if container_rows:
        _expand_container_changes(ctx, s, container_rows, file_seq)
    ids = list(file_seq)
    for i in range(0, len(ids), BATCH_SIZE):
        _evaluate_files(ctx, s, ids[i : i + BATCH_SIZE], file_seq)


def _expand_container_changes(
    ctx: EvalContext, s: Session, rows: list[tuple[int, str]], file_seq: dict[str, int]
) -> None:
    """A container's tags/info changed: re-check files of rules that look at that level."""
    containers = {
        c.id: c for c in s.scalars(select(Container).where(Container.id.in_({c for _, c in rows})))
    }
    sessions: dict[str, int] = {}
    for seq, cid in rows:
        c = containers.get(cid)
        if c is None or not c.project_id:
            continue
        if c.type == "session" and ctx.rules.session_rules.get(c.project_id):
            sessions[c.id] = max(sessions.get(c.id, 0), seq)
        looked_at: set[str] = set()
        for rule in ctx.rules.file_rules.get(c.project_id, []):
            looked_at |= ctx.rules.referenced.get(rule.id, frozenset())
        if c.type in P.LEVELS and c.type in looked_at:
            column = getattr(Container, f"{c.type}_id")
            q = (
                select(File.id)
                .join(Container, Container.id == File.container_id)
                .where(column == c.id)
            )
        elif "container" in looked_at:
            q = select(File.id).where(File.container_id == c.id)
        else:
            continue
        for fid in s.scalars(q):
            file_seq[fid] = max(file_seq.get(fid, 0), seq)
    if sessions:
        workflow.process_session_changes(ctx, s, sessions)


def _evaluate_files(
    ctx: EvalContext, s: Session, ids: list[str], file_seq: Mapping[str, int]
) -> None:
    """Evaluate the file rules of each file's project on its current version.

    Plain columns (not ORM objects) are loaded, with the current version joined
    in, and container facts are built once per container: this loop runs once
    per changed file, so it is the engine's hot path.
    """
    projects = list(ctx.rules.file_rules)
    if not projects:
        return
    wanted = ctx.rules.file_attrs
    # JSON columns no rule looks at are not loaded (decoding them dominates the cost).
    optional = {
        attr: (getattr(File, attr) if attr in wanted else literal(None)).label(attr)
        for attr in ("modality", "classification", "tags", "info")
    }
    # Two index lookups, not a join: PostgreSQL hash-joins the whole file_versions table
    # for a 500-id join, and filtering projects in SQL lets SQLite scan a whole project
    # per batch; either makes a batch cost grow with the database instead of the batch.
    with_rules = set(projects)
    files = [
        f
        for f in s.execute(
            select(
                File.id,
                File.container_id,
                File.project_id,
                File.name,
                File.type,
                File.current_version,
                *optional.values(),
            ).where(File.id.in_(ids))
        )
        if f.project_id in with_rules
    ]
    if not files:
        return
    current = {(f.id, f.current_version) for f in files}
    versions = {
        (v.file_id, v.version): v
        for v in s.execute(
            select(
                FileVersion.file_id,
                FileVersion.version,
                FileVersion.origin_type,
                FileVersion.origin_id,
            ).where(FileVersion.file_id.in_([f.id for f in files]))
        )
        if (v.file_id, v.version) in current
    }
    rows = [
        (f, versions[(f.id, f.current_version)])
        for f in files
        if (f.id, f.current_version) in versions
    ]
    if not rows:
        return
    ctx.report.files_evaluated += len(rows)
    containers = load_containers(s, {f.container_id for f, _v in rows})
    builder = FactsBuilder(containers)
    memory = {
        (m.rule_id, m.file_id): m
        for m in s.scalars(select(RuleMatch).where(RuleMatch.file_id.in_([f.id for f, _v in rows])))
    }
    origin_ids = {str(v.origin_id) for _f, v in rows if v.origin_type == "job"}
    origin_jobs: dict[str, Job] = (
        {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(origin_ids)))}
        if origin_ids
        else {}
    )
    for f, v in rows:
        if f.container_id not in containers:
            continue
        facts = builder.for_file(
            f.container_id,
            file_facts_from_row(
                name=f.name,
                version=v.version,
                type=f.type,
                modality=f.modality,
                origin=v.origin_type,
                classification=f.classification,
                tags=f.tags,
                info=f.info,
            ),
        )
        seq = file_seq[f.id]
        for rule in ctx.rules.file_rules.get(str(f.project_id), []):
            if not ctx.backfill and seq <= rule.created_seq:
                continue
            assert rule.spec.when is not None
            key = (rule.id, f.id)
            mem = memory.get(key)
            if not P.matches(rule.spec.when, facts):
                if mem is not None:
                    s.delete(mem)  # no longer matching: matching again later is a new edge
                    memory.pop(key)
                continue
            if mem is not None and mem.version == v.version and mem.outcome != "error":
                continue  # this version already matched: not an edge
            origin_id = str(v.origin_id)
            guard = origin_guard(v.origin_type, origin_id, origin_jobs.get(origin_id), rule.id)
            outcome: str
            job_id: str | None
            note: str | None
            if guard is not None:
                ctx.report.guarded += 1
                outcome, job_id, note = "guarded", None, guard
            else:
                file_row = s.get(File, f.id)
                assert file_row is not None
                fv = file_version(s, file_row, v.version)
                outcome, job_id, note = _fire(ctx, s, rule, file_row, fv, containers, seq)
            if mem is None:
                mem = RuleMatch(rule_id=rule.id, file_id=f.id)
                s.add(mem)
                memory[key] = mem
            mem.version, mem.seq, mem.outcome = v.version, seq, outcome
            mem.job_id, mem.note = job_id, note
    s.flush()


def origin_guard(
    origin_type: str, origin_id: str, origin_job: Job | None, rule_id: int
) -> str | None:
    """Why a file version must not trigger the rule (None when it may)."""
    if origin_type != "job":
        return None
    if origin_job is None:
        return f"made by job {origin_id}, which no longer exists"
    if origin_job.state != JobState.COMPLETE.value:
        return f"output of job {origin_job.id}, which is {origin_job.state}, not complete"
    if origin_job.rule_id == rule_id or (
        origin_job.origin_type == "rule" and origin_job.origin_id == str(rule_id)
    ):
        return f"output of job {origin_job.id} of this same rule (rules never trigger themselves)"
    return None


def destination_of(
    rule: LoadedRule, container: Container, containers: Mapping[str, Container]
) -> Container:
    where = rule.spec.destination
    if where == "container":
        return container
    cid = getattr(container, f"{where}_id", None)
    dest = containers.get(cid) if cid else None
    if dest is None:
        raise RuleError(
            f"rule {rule.name}: the file's {container.type} has no {where} above it",
            "use `destination: container`, or narrow `when` with container.type",
        )
    return dest


def _fire(
    ctx: EvalContext,
    s: Session,
    rule: LoadedRule,
    f: File,
    fv: FileVersion,
    containers: Mapping[str, Container],
    seq: int,
) -> tuple[str, str | None, str | None]:
    """The file newly matches (and passed the origin guard): queue the job unless a duplicate."""
    report = ctx.report
    container = containers[f.container_id]
    where = f"{path_of(container, containers, f.name)} v{fv.version}"
    try:
        gear = ctx.rules.gear(s, rule)
        dest = destination_of(rule, container, containers)
        assert rule.spec.input is not None
        inputs = [
            _input_spec(rule.spec.input, "file", container, f, fv),
            *ctx.rules.fixed_inputs(s, rule),
        ]
        prepared = prepare_job(
            s,
            rule.owner,
            ctx.sites,
            gear=gear,
            destination=dest,
            inputs=inputs,
            rule_config=rule.spec.config,
            tags=rule.spec.tags,
            priority=rule.spec.priority,
        )
    except HpcgearError as exc:
        report.errors += 1
        report.note(f"rule {rule.name}: {where}: {exc.message}")
        logger.warning("rule %s: %s: %s", rule.name, where, exc.message)
        return "error", None, exc.message[:2000]
    dup = existing_rule_job(s, rule.id, prepared.dedupe_key)
    if dup is not None:
        report.duplicates += 1
        return "duplicate", dup.id, f"same gear version, inputs and config as job {dup.id}"
    if (rule.id, prepared.dedupe_key) in ctx.would_create:
        report.duplicates += 1
        return "duplicate", None, "same as a job this dry run would create"
    entry = {
        "rule": rule.name,
        "rule_id": rule.id,
        "gear": f"{gear.name}@{gear.version}",
        "trigger": where,
        "destination": path_of(dest, containers),
        "site": prepared.site.name,
    }
    report.jobs_created += 1
    if ctx.dry_run:
        ctx.would_create.add((rule.id, prepared.dedupe_key))
        report.job({**entry, "id": None})
        return "queued", None, "dry run"
    job = store_job(
        s,
        rule.owner,
        prepared,
        origin_type="rule",
        origin_id=str(rule.id),
        reason=f"rule {rule.name}: {where} matched (change {seq})",
    )
    job.rule_id = rule.id
    s.flush()
    report.job({**entry, "id": job.id})
    logger.info("rule %s: %s -> job %s", rule.name, where, job.id)
    return "queued", job.id, None


# ----------------------------------------------------------------- rule test


@dataclass(frozen=True, slots=True)
class RuleTest:
    """``hpcgear rule test``: whether the rule would fire on PATH now, and why."""

    rule: str
    target: str
    would_fire: bool
    explanation: P.Explanation

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "target": self.target,
            "would_fire": self.would_fire,
            "explanation": self.explanation.as_dict(),
        }


def test_rule(
    session: Session,
    actor: str,
    sites: SiteRegistry | Callable[[], SiteRegistry],
    ref: str,
    path: str,
) -> RuleTest:
    """Explain whether rule ``ref`` would fire on the file (or session) at ``path``."""
    _project, row = get_rule_row(session, actor, ref, RoleName.READ_ONLY)
    rule = load_rule(row)
    registry = sites() if callable(sites) else sites
    if rule.kind == "session":
        try:
            target = resolve_container(session, path, min_depth=4, max_depth=4)
        except HpcgearError as exc:
            raise InvalidInputError(
                f"rule {rule.name} is a session rule; {exc.message}",
                "test it on a session: group/project/subject/session",
            ) from None
        if target.project_id != row.project_id:
            raise InvalidInputError(
                f"{path} is not in the rule's project", "test a session of the rule's project"
            )
        require_role(session, actor, target, RoleName.READ_ONLY, "testing a rule")
        expl = workflow.explain_session_rule(session, registry, rule, target)
        return RuleTest(ref, container_path(session, target), expl.passed, expl)
    try:
        container, f = resolve_file(session, actor, path, RoleName.READ_ONLY)
    except HpcgearError as exc:
        if isinstance(exc, PermissionDeniedError):
            raise
        raise InvalidInputError(
            f"rule {rule.name} is a file rule; {exc.message}",
            "test it on a file: group/project/.../FILE",
        ) from None
    if f.project_id != row.project_id:
        raise InvalidInputError(
            f"{path} is not in the rule's project", "test a file of the rule's project"
        )
    expl = explain_file_rule(session, registry, rule, f)
    return RuleTest(ref, f"{container_path(session, container)}/{f.name}", expl.passed, expl)


test_rule.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def explain_file_rule(s: Session, sites: SiteRegistry, rule: LoadedRule, f: File) -> P.Explanation:
    fv = current_versions(s, [f]).get(f.id)
    containers = load_containers(s, [f.container_id])
    container = containers[f.container_id]
    title = f"rule {rule.name} on {path_of(container, containers, f.name)} v{f.current_version}"
    checks: list[P.Explanation] = [
        P.Explanation(
            "rule is enabled",
            rule.enabled,
            "" if rule.enabled else "disabled: `hpcgear rule enable` turns it on",
        )
    ]
    assert rule.spec.when is not None
    checks.append(P.evaluate(rule.spec.when, facts_for_file(f, fv, containers)))
    if fv is None:
        checks.append(P.Explanation("file has a current version", False, "it was deleted"))
        return P.Explanation(title, False, "would not fire", tuple(checks))
    origin = s.get(Job, fv.origin_id) if fv.origin_type == "job" else None
    guard = origin_guard(fv.origin_type, fv.origin_id, origin, rule.id)
    checks.append(
        P.Explanation(
            "not the output of a failed, unfinished or same-rule job",
            guard is None,
            guard or f"version {fv.version} came from {fv.origin_type} {fv.origin_id}",
        )
    )
    mem = s.get(RuleMatch, (rule.id, f.id))
    seen = mem is not None and mem.version == fv.version and mem.outcome != "error"
    if mem is None:
        edge_why = "no earlier match of this file is recorded"
    elif seen:
        did = f"job {mem.job_id}" if mem.job_id else (mem.note or mem.outcome)
        edge_why = (
            f"version {mem.version} already matched (change {mem.seq}, {mem.outcome}: {did}); "
            "rules fire on a new version or on metadata that makes the file match"
        )
    else:
        edge_why = f"last match recorded was version {mem.version} ({mem.outcome})"
    checks.append(P.Explanation("this version newly matches (edge)", not seen, edge_why))
    prepared = None
    try:
        g = get_gear(s, rule.gear_ref)
        assert rule.spec.input is not None
        prepared = prepare_job(
            s,
            rule.owner,
            sites,
            gear=g,
            destination=destination_of(rule, container, containers),
            inputs=[
                _input_spec(rule.spec.input, "file", container, f, fv),
                *fixed_input_specs(s, rule),
            ],
            rule_config=rule.spec.config,
            tags=rule.spec.tags,
            priority=rule.spec.priority,
        )
        checks.append(
            P.Explanation(
                "a job can be prepared",
                True,
                f"{g.name}@{g.version} on {path_of(prepared.destination, containers)}, "
                f"site {prepared.site.name}, as {rule.owner}",
            )
        )
    except HpcgearError as exc:
        checks.append(P.Explanation("a job can be prepared", False, exc.message))
    if prepared is not None:
        dup = existing_rule_job(s, rule.id, prepared.dedupe_key)
        checks.append(
            P.Explanation(
                "no equal job of this rule exists",
                dup is None,
                f"job {dup.id} ({dup.state}) has the same gear version, inputs and config"
                if dup is not None
                else "",
            )
        )
    ok = all(c.passed for c in checks)
    return P.Explanation(title, ok, "would fire" if ok else "would not fire", tuple(checks))


# --------------------------------------------------------------------- status


def evaluation_status(session: Session, actor: str) -> dict[str, Any]:
    """Cursor positions and how many feed rows wait (``hpcgear rules status``)."""
    from hpcgear.db.models import GearRule, RuleCursor
    from hpcgear.hierarchy.permissions import get_actor

    get_actor(session, actor)
    feeds: dict[str, Any] = {}
    feed_keys: tuple[tuple[str, Any, Any], ...] = (
        (CHANGES, ChangeLog, ChangeLog.seq),
        (JOB_EVENTS, JobEvent, JobEvent.id),
    )
    for name, model, key in feed_keys:
        row = session.get(RuleCursor, name)
        position = int(row.position) if row is not None else 0
        last = int(session.scalar(select(func.max(key))) or 0)
        waiting = int(
            session.scalar(select(func.count()).select_from(model).where(key > position)) or 0
        )
        feeds[name] = {
            "position": position,
            "last": last,
            "waiting": waiting,
            "gaps": len(row.gaps or []) if row is not None else 0,
            "updated": row.updated.isoformat() if row is not None and row.updated else None,
        }
    total = int(session.scalar(select(func.count()).select_from(GearRule)) or 0)
    enabled = int(
        session.scalar(select(func.count()).select_from(GearRule).where(GearRule.enabled.is_(True)))
        or 0
    )
    return {"rules": total, "enabled_rules": enabled, "feeds": feeds}
