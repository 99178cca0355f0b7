"""arrays: similar submitting jobs go out as ONE held job array (write-ahead, adopted by name)."""

from __future__ import annotations

import functools
import os
import secrets
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import String, bindparam, cast, func, literal, select
from sqlalchemy.orm import Session

from hpcgear.db.bulk import executemany, unindexed
from hpcgear.db.models import Gear, Job, JobEvent
from hpcgear.errors import HpcgearError, InvalidInputError
from hpcgear.jobs.transitions import (
    StaleJobError,
    record_event,
    record_events_many,
    update_fields,
)
from hpcgear.render import (
    ArrayPaths,
    JobPaths,
    build_runtime_argv,
    runtime_argv_template,
)
from hpcgear.scheduler.base import SchedulerUnavailableError, SubmitRejectedError
from hpcgear.spec import JobSpec, Resources
from hpcgear.staging.checksums import is_local
from hpcgear.states import FailureKind, JobState, check_transition

from .admit import fits_live_limits, release
from .context import (
    ControllerContext,
    CycleReport,
    fail_job,
    fault_point,
    job_session,
    utcnow,
)
from .resolve import image_digest_or_fail, prepare_attempts
from .sites import SiteRuntime
from .stagein import stage_array_attempts


def array_size_limit(rt: SiteRuntime) -> int:
    """Tasks per array: the site's max_size, capped by the live MaxArraySize."""
    live = rt.max_array_size
    if live is None:
        try:
            info = rt.backend.cluster_info()
            live, rt.max_job_count = info.max_array_size, info.max_job_count
        except HpcgearError:
            live = 1001
        rt.max_array_size = live
    configured = rt.site.array.max_size
    return max(1, min(configured, live) if configured else live)


class CasRow(NamedTuple):
    """A job's row as preparation read it: what the intent compares and sets."""

    id: str
    state: str
    state_seq: int


@dataclass(frozen=True)
class PreparedArray:
    """An array staged and rendered, its script written: what :func:`send_array`
    submits. Small enough to come back from a helper process cheaply (the tasks'
    specs stay there: only the first task's goes into the intent's event)."""

    array_id: str
    job_ids: list[str]
    rows: dict[str, CasRow]
    first: JobSpec
    first_paths: JobPaths
    apaths: ArrayPaths
    script_sha256: str


def submit_array(
    ctx: ControllerContext, rt: SiteRuntime, job_ids: Sequence[str], report: CycleReport
) -> None:
    """Stage in every job, then submit them as ONE job array (write-ahead, held)."""
    prepared = prepare_array(ctx, rt, job_ids, report)
    if prepared is not None:
        send_array(ctx, rt, prepared, report)


def prepare_array(
    ctx: ControllerContext, rt: SiteRuntime, job_ids: Sequence[str], report: CycleReport
) -> PreparedArray | None:
    """Specs, per-array stage-in and the array script of ``job_ids`` (nothing in SLURM
    and no intent yet); None when no job is left to submit (each failed one is failed)."""
    from hpcgear.render import render_array

    site = rt.site
    with job_session(ctx, job_ids[0]) as (s, job):
        gear = s.get(Gear, job.gear_id)
        assert gear is not None
        digest = gear.image_digest
    if not digest:
        for jid in job_ids:
            image_digest_or_fail(ctx, jid, report)  # fails each with the clear message
        return None
    sif = rt.ensure_image(ctx.store, digest)
    specs: list[JobSpec] = []
    all_paths: list[JobPaths] = []
    configs: list[dict[str, Any]] = []
    attempts, rows = prepare_attempts(ctx, rt, job_ids, sif)
    misfits: dict[Resources, str | None] = {}
    for spec, paths, cfg in attempts:
        if not fits_live_limits(ctx, rt, spec, report, misfits):
            continue
        specs.append(spec)
        all_paths.append(paths)
        configs.append(cfg)
    if not specs:
        return None
    array_id = f"a{secrets.token_hex(8)}"
    apaths = ArrayPaths.for_array(site.render_scratch_root(specs[0].user), array_id)
    rt.transport.mkdir(apaths.root)
    # ONE tasks.dat for the array instead of a job directory per task: each task
    # creates its own from it when it starts (sbatch_templates/array.sbatch.j2).
    staged = stage_array_attempts(ctx, rt, specs, all_paths, configs, apaths.tasks_dat, report)
    if not staged:
        return None
    specs = [specs[i] for i, _f in staged]
    all_paths = [all_paths[i] for i, _f in staged]
    script = render_array(
        specs,
        site,
        array_id=array_id,
        paths=all_paths,
        array_paths=apaths,
        max_array_size=rt.max_array_size,
        task_files=[files for _i, files in staged],
    )
    rt.transport.write_text(apaths.sbatch, script.text, mode=0o700)
    return PreparedArray(
        array_id,
        [sp.job_id for sp in specs],
        {
            sp.job_id: CasRow(r.id, r.state, r.state_seq)
            for sp in specs
            for r in (rows[sp.job_id],)
        },
        specs[0],
        all_paths[0],
        apaths,
        script.sha256,
    )


#: What a forked preparation helper works with: set just before the fork, read in it.
_HELPER: tuple[ControllerContext, SiteRuntime] | None = None


def prepared_arrays(
    ctx: ControllerContext,
    rt: SiteRuntime,
    batches: Sequence[Sequence[str]],
    report: CycleReport,
) -> Generator[tuple[Sequence[str], Callable[[], PreparedArray | None]], None, None]:
    """Each batch, in order, with a call that returns it prepared (None: no job left)
    or raises what preparing it raised.

    Preparing an array (specs, ``tasks.dat``, the script) is CPU work; sending it
    (intent, sbatch, the SLURM ids, release) is mostly database and SLURM time. With
    two or more arrays to go, up to ``array.prepare_processes`` forked helpers
    prepare the next arrays while the caller sends the ones before them, and while
    it waits for the next it prepares the last one no helper has started. Only on a
    local scratch (an SSH connection cannot be shared with a forked process). The
    helpers write only what preparation writes (tasks failed as ``input_staging`` or
    ``rejected``, in their own transactions); the write-ahead intent, the claim,
    stays with the caller. Leaving early (close the generator) cancels what no
    helper has started and waits for the rest.
    """
    workers = rt.site.array.prepare_processes
    if len(batches) < 2 or workers < 1 or _cores() < 2 or not is_local(rt.transport):
        for chunk in batches:
            yield chunk, functools.partial(prepare_array, ctx, rt, chunk, report)
        return
    from hpcgear.procs import process_pool

    # What every preparation asks the cluster once (its partitions' limits, cached
    # on ``rt``) is asked here, before the fork: each helper inherits the answer
    # rather than run the same scontrol and sinfo while the first array waits.
    rt.live_partitions()
    global _HELPER
    _HELPER = (ctx, rt)
    pool = process_pool(min(workers, len(batches) - 1), _helper_started)
    todo = deque(range(len(batches)))  # not handed out yet: helpers from the front
    futures: dict[int, Future[Any]] = {}
    here: dict[int, Callable[[], PreparedArray | None]] = {}

    def feed() -> None:  # keep each helper busy and one array queued for them
        while todo and sum(not f.done() for f in futures.values()) <= workers:
            k = todo.popleft()
            futures[k] = pool.submit(_prepare_in_helper, list(batches[k]))

    try:
        for i, chunk in enumerate(batches):
            mine = i in todo  # array 0: prepared here while the helpers start on 1, 2...
            if mine:
                todo.remove(i)
            feed()
            if mine:
                here[i] = _prepared_here(ctx, rt, chunk, report)
            # While a helper prepares this one, prepare the last one nobody started.
            while i in futures and not futures[i].done() and todo:
                j = todo.pop()
                here[j] = _prepared_here(ctx, rt, batches[j], report)
            if i in here:
                yield chunk, here.pop(i)
            else:
                yield chunk, functools.partial(_collect, futures.pop(i), report)
    finally:
        _HELPER = None
        pool.shutdown(wait=True, cancel_futures=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _helper_started() -> None:
    """In a forked helper: its own database connections (the inherited ones belong
    to the controller and are left alone, not closed)."""
    assert _HELPER is not None
    _HELPER[0].db.engine.dispose(close=False)


def _prepare_in_helper(job_ids: list[str]) -> tuple[PreparedArray | None, int, list[str]]:
    assert _HELPER is not None, "not a preparation helper"
    ctx, rt = _HELPER
    mine = CycleReport(site=rt.site.name)
    prepared = prepare_array(ctx, rt, job_ids, mine)
    return prepared, mine.failed, mine.errors


def _prepared_here(
    ctx: ControllerContext, rt: SiteRuntime, job_ids: Sequence[str], report: CycleReport
) -> Callable[[], PreparedArray | None]:
    try:
        prepared = prepare_array(ctx, rt, job_ids, report)
    except HpcgearError as exc:
        failure = exc

        def again() -> PreparedArray | None:
            raise failure

        return again
    return lambda: prepared


def _collect(future: Future[Any], report: CycleReport) -> PreparedArray | None:
    from concurrent.futures.process import BrokenProcessPool

    try:
        prepared, failed, errors = future.result()
    except BrokenProcessPool as exc:
        raise HpcgearError(
            f"the helper process preparing an array died ({exc})",
            "its jobs are submitted on the next cycle; if this repeats, look for the "
            "kernel's OOM killer in the system log or set array.prepare_processes: 0",
            transient=True,
        ) from None
    report.failed += failed
    report.errors.extend(errors)
    return prepared  # type: ignore[no-any-return]


def send_array(
    ctx: ControllerContext,
    rt: SiteRuntime,
    prepared: PreparedArray,
    report: CycleReport,
    held: list[HeldArray] | None = None,
) -> None:
    """Write the intent of a prepared array, sbatch it held, record its SLURM ids and
    release it (:func:`record_array`; with ``held``, left held and added to it for
    :func:`release_arrays`)."""
    write_intent(ctx, rt, prepared, report)
    sbatch_array(ctx, rt, prepared, report, held)


def write_intent(
    ctx: ControllerContext, rt: SiteRuntime, prepared: PreparedArray, report: CycleReport
) -> None:
    """The write-ahead intent of a prepared array, committed: after it, its sbatch may
    run (:func:`sbatch_array`). Raises StaleJobError when a job changed since it was
    prepared (nothing written)."""
    site = rt.site
    array_id, job_ids, rows = prepared.array_id, prepared.job_ids, prepared.rows
    apaths, sha256, first_spec = prepared.apaths, prepared.script_sha256, prepared.first
    # Write-ahead intent, per task, all in ONE transaction committed before sbatch,
    # compared with the rows as prepare_attempts read them: a job another process
    # changed since aborts the whole array (retried next cycle). It is also the
    # claim of a job still `pending` (claim.claim leaves an array's jobs to it):
    # that job moves to `submitting` in the same write, its intent event says so.
    # Lean events: the runtime argv differs between tasks only in the job directory,
    # so task 0 carries it as a template and provenance rebuilds each task's argv.
    check_transition(JobState.PENDING, JobState.SUBMITTING)
    claiming = {jid for jid in job_ids if rows[jid].state == JobState.PENDING.value}
    # Every task claimed here: task 0's event is written as data, the others' by SQL.
    all_claimed = len(claiming) == len(job_ids)
    if ctx.fence is not None:
        ctx.fence.keep()
    with ctx.db.session() as s:
        if ctx.fence is not None:
            # Inside the same transaction: a takeover cannot claim these jobs too.
            ctx.fence.check(s, site.name)
        # ONE statement, executed per task: the task's index and its compare-and-set
        # are all that differ between the rows.
        matched = executemany(
            s, _INTENT,
            [{"b_id": jid, "b_seq": rows[jid].state_seq, "b_index": index}
             for index, jid in enumerate(job_ids)],
            {"b_now": utcnow(), "b_sha": sha256, "b_array_id": array_id},
        )
        if matched != len(job_ids):
            raise StaleJobError(
                f"a job of array {array_id} changed while it was being submitted",
                "the jobs are submitted on the next cycle",
                transient=True,
            )
        report.claimed += len(claiming)
        first: dict[str, Any] = {
            "script": apaths.sbatch,
            "script_sha256": sha256,
            "argv": build_runtime_argv(first_spec, site, prepared.first_paths),
            "argv_template": runtime_argv_template(first_spec, site),
            "scratch_root": site.render_scratch_root(first_spec.user),
        }
        claimed = {"old_state": JobState.PENDING.value, "new_state": JobState.SUBMITTING.value}
        events = [
            {
                "job_id": jid,
                "actor": ctx.actor,
                "kind": "sbatch",
                "message": f"submitting as task {index} of array {array_id} with --hold",
                "data": {
                    "array_id": array_id,
                    "index": index,
                    **(first if index == 0 else {"argv_from": job_ids[0]}),
                },
                **(claimed if jid in claiming else {}),
            }
            for index, jid in enumerate(job_ids[:1] if all_claimed else job_ids)
        ]
        record_events_many(s, events)
        if all_claimed:  # the other tasks' events in ONE statement from the rows just written
            _record_intent_events(s, array_id, job_ids[0], ctx.actor)
    fault_point("array.intent")


def sbatch_array(
    ctx: ControllerContext,
    rt: SiteRuntime,
    prepared: PreparedArray,
    report: CycleReport,
    held: list[HeldArray] | None = None,
    *,
    submitted: Callable[[], str] | None = None,
) -> None:
    """sbatch an array whose intent is committed (held), then record it
    (:func:`record_array`). ``submitted``: the answer of an sbatch already started
    (:class:`ArraySender`), returned or raised, instead of running it here."""
    array_id, job_ids = prepared.array_id, prepared.job_ids
    try:
        if submitted is None:
            base = rt.backend.submit(prepared.apaths.sbatch, hold=True)
        else:
            base = submitted()
    except SubmitRejectedError as exc:
        for jid in job_ids:
            with job_session(ctx, jid) as (s, job):
                fail_job(s, job, ctx.actor, FailureKind.REJECTED, exc.slurm_message or exc.message)
        report.failed += len(job_ids)
        return
    except SchedulerUnavailableError as exc:
        report.errors.append(f"array {array_id}: {exc.message}")
        return  # the next cycle looks the array up by name
    fault_point("array.sbatch")
    record_array(ctx, rt, array_id, job_ids, base, report, how="submitted", held=held)


class ArraySender:
    """Sends prepared arrays in turn, each one's ``sbatch`` overlapping the database
    work of its neighbours.

    An array's sbatch is a scheduler round trip (about 10 ms for 1,000 tasks here)
    in which the controller only waits, while the intent before it and the record
    after it (about 35 ms) are the controller's own work. On a local transport each
    sbatch runs in a thread as soon as its intent is committed, and meanwhile the
    controller records the array sent before it and writes the next one's intent.
    Each array's own order is unchanged (intent committed, sbatch, record; recovery
    adopts any array with an intent by its name), only different arrays' steps
    overlap. On a remote transport (one SSH connection) it sends each in turn.

    :meth:`send` raises what writing the intent raises (that array is not sent) and
    what recording the array before it raises; :meth:`finish` records the last one;
    :meth:`close` waits for an sbatch still running, whose array, if an error left
    it unrecorded, the next cycle adopts by name.
    """

    def __init__(
        self,
        ctx: ControllerContext,
        rt: SiteRuntime,
        report: CycleReport,
        held: list[HeldArray] | None = None,
    ) -> None:
        self.ctx, self.rt, self.report, self.held = ctx, rt, report, held
        self._pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(1, thread_name_prefix="hpcgear-sbatch")
            if is_local(rt.transport)
            else None
        )
        self._in_flight: tuple[PreparedArray, Future[str]] | None = None

    def send(self, prepared: PreparedArray) -> None:
        if self._pool is None:
            send_array(self.ctx, self.rt, prepared, self.report, self.held)
            return
        write_intent(self.ctx, self.rt, prepared, self.report)
        started = self._pool.submit(self.rt.backend.submit, prepared.apaths.sbatch, hold=True)
        before, self._in_flight = self._in_flight, (prepared, started)
        if before is not None:
            self._record(before)

    def finish(self) -> None:
        before, self._in_flight = self._in_flight, None
        if before is not None:
            self._record(before)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _record(self, sent: tuple[PreparedArray, Future[str]]) -> None:
        prepared, started = sent
        sbatch_array(
            self.ctx, self.rt, prepared, self.report, self.held, submitted=started.result
        )


class HeldArray(NamedTuple):
    """An array recorded (its jobs ``queued`` with their SLURM ids) and still held."""

    array_id: str
    base: str
    jobs: list[tuple[str, str]]  # (job id, SLURM id) of the tasks to release


def record_array(
    ctx: ControllerContext,
    rt: SiteRuntime,
    array_id: str,
    job_ids: Sequence[str],
    base: str,
    report: CycleReport,
    *,
    how: str,
    held: list[HeldArray] | None = None,
) -> None:
    """Record the SLURM id of every task of held array ``base`` (hpcgear's array
    ``array_id``, of jobs ``job_ids``) and move its jobs to ``queued``, then release it
    (:func:`release_arrays`). With ``held`` it is not released here but added to it:
    a cycle that sends several arrays releases them all with ONE ``scontrol release``.

    The SLURM ids and the move are ONE set-based UPDATE guarded by ``state =
    submitting`` (each task's id is ``<base>_<its array_index>``) and its events ONE
    ``INSERT ... SELECT``, in ONE fenced transaction committed before the release: a
    job no longer ``submitting`` (a cancel that landed during sbatch) keeps no SLURM
    id and its task is scancelled, never released. Should the controller die between
    that commit and the release, the tasks are ``queued`` but still held: the poll
    releases them (:func:`release_interrupted`).
    """
    now = utcnow()
    if ctx.fence is not None:
        ctx.fence.keep()
    with ctx.db.session() as s:
        if ctx.fence is not None:
            ctx.fence.check(s, rt.site.name)
        natives = _record_queued(s, array_id, base, now)
        note = "held until released"
        if how != "submitted":
            note = f"{how} after a restart, held until released"
        _record_queued_events(
            s, array_id, base, now, ctx.actor, note,
            {} if how == "submitted" else {"array_job_id": base},
        )
        strays = [j for j in job_ids if j not in natives]
        if strays:  # cancelled meanwhile: their tasks are cancelled, never released
            strays = [f"{base}_{i}" for i in _indexes(s, strays).values()]
    fault_point("array.recorded")
    if strays:
        rt.backend.cancel(strays)
    recorded = [(j, natives[j]) for j in job_ids if j in natives]
    if recorded:
        array = HeldArray(array_id, base, recorded)
        if held is None:
            release_arrays(ctx, rt, [array], report)
        else:
            held.append(array)
    if how == "adopted":
        report.adopted += len(recorded)
    else:
        report.submitted += len(recorded)


def release_arrays(
    ctx: ControllerContext, rt: SiteRuntime, arrays: Sequence[HeldArray], report: CycleReport
) -> None:
    """Release recorded held arrays: ONE ``scontrol release`` of their base ids.

    A release SLURM refuses fails that array's jobs as ``rejected``
    (:func:`~hpcgear.controller.admit.release`); one SLURM does not answer leaves
    them ``queued`` and held, and the poll releases them. Then a job cancelled since
    its array was recorded has its task scancelled at once (the cancel step would
    next cycle): it must not run.
    """
    if not arrays:
        return
    try:
        release(
            ctx, rt, [job for a in arrays for job in a.jobs], report,
            release_ids=[a.base for a in arrays],
        )
    except SchedulerUnavailableError as exc:
        # The jobs are queued and their SLURM ids recorded: the poll releases them.
        report.errors.append(f"array {', '.join(a.base for a in arrays)}: release: {exc.message}")
    bases = {a.array_id: f"{a.base}_" for a in arrays}
    gone: list[str] = []
    with ctx.db.session() as s:
        for array_id, native in s.execute(
            select(Job.array_id, Job.native_id).where(
                Job.array_id.in_(list(bases)),
                unindexed(_jobs.c.state) == JobState.CANCELLED.value,
            )
        ):
            if native and array_id and native.startswith(bases[array_id]):  # its task
                gone.append(native)
    if gone:
        rt.backend.cancel(gone)


def _indexes(s: Session, job_ids: Sequence[str]) -> dict[str, int]:
    """Each job's task index in its array, as its intent wrote it."""
    return {r.id: int(r.array_index or 0) for r in _rows(s, job_ids).values()}


def _rows(s: Session, job_ids: Sequence[str]) -> dict[str, Any]:
    """The columns the array steps need, as Core rows (no ORM objects for 1,000 tasks)."""
    rows: dict[str, Any] = {}
    ids = list(job_ids)
    for start in range(0, len(ids), 5000):
        for r in s.execute(
            select(Job.id, Job.state, Job.state_seq, Job.array_index).where(
                Job.id.in_(ids[start : start + 5000])
            )
        ):
            rows[r.id] = r
    missing = [j for j in job_ids if j not in rows]
    if missing:
        raise InvalidInputError(f"job {missing[0]} vanished", "it was deleted meanwhile")
    return rows


_jobs = Job.__table__
_events = JobEvent.__table__
#: A task's index in its array as its intent wrote it, as text.
_ARRAY_INDEX = cast(_jobs.c.array_index, String)
#: The write-ahead intent of one task (executed per task of an array): it becomes
#: ``submitting`` (a ``pending`` job is claimed by it; a ``submitting`` one stays) as task
#: ``b_index`` of array ``b_array_id``, if its ``state_seq`` is still the one read.
_INTENT = (
    _jobs.update()
    .where(_jobs.c.id == bindparam("b_id"), _jobs.c.state_seq == bindparam("b_seq"))
    .values(
        state=JobState.SUBMITTING.value,
        state_seq=_jobs.c.state_seq + 1,
        modified=bindparam("b_now"),
        script_sha256=bindparam("b_sha"),
        array_id=bindparam("b_array_id"),
        array_index=bindparam("b_index"),
    )
)
#: A task's SLURM id: the array's base id, ``_``, the task index its intent wrote.
_TASK_ID = bindparam("prefix", type_=String) + _ARRAY_INDEX
#: Moves an array's ``submitting`` jobs to ``queued``, each with its task's SLURM id.
_RECORD_QUEUED = (
    _jobs.update()
    .where(
        _jobs.c.array_id == bindparam("b_array_id"),
        unindexed(_jobs.c.state) == JobState.SUBMITTING.value,
    )
    .values(
        state=JobState.QUEUED.value,
        native_id=_TASK_ID,
        submitted=bindparam("b_now"),
        last_seen=bindparam("b_now"),
        modified=bindparam("b_now"),
        state_seq=_jobs.c.state_seq + 1,
    )
    .returning(_jobs.c.id, _jobs.c.native_id)
)


def _record_queued(s: Session, array_id: str, base: str, now: Any) -> dict[str, str]:
    """Move the array's jobs still ``submitting`` to ``queued`` with their SLURM ids, in
    ONE statement; job id -> SLURM id of those it moved."""
    check_transition(JobState.SUBMITTING, JobState.QUEUED)
    rows = s.execute(_RECORD_QUEUED, {"b_array_id": array_id, "prefix": f"{base}_", "b_now": now})
    return {r.id: r.native_id for r in rows}


def _events_of_jobs(kind: str, old: JobState, new: JobState, message: Any, *where: Any) -> Any:
    """``INSERT ... SELECT`` of one ``kind`` event (``old`` -> ``new``) per job row
    matching ``where``, with ``message`` (an expression of the row); its time, actor
    and data are bound as ``ev_ts``, ``ev_actor`` and ``ev_data``. Built once at import
    (compiled once per dialect)."""
    return _events.insert().from_select(
        ["job_id", "ts", "actor", "kind", "old_state", "new_state", "message", "data"],
        select(
            _jobs.c.id,
            bindparam("ev_ts", type_=_events.c.ts.type),
            bindparam("ev_actor", type_=String),
            literal(kind),
            literal(old.value),
            literal(new.value),
            message,
            bindparam("ev_data", type_=_events.c.data.type),
        ).where(*where),
    )


#: The ``submitting -> queued`` events of an array's jobs that have a SLURM id of the
#: array (``e_prefix`` is ``<base>_``).
_QUEUED_EVENTS = _events_of_jobs(
    "state", JobState.SUBMITTING, JobState.QUEUED,
    literal("queued as ") + _jobs.c.native_id + bindparam("e_suffix", type_=String),
    _jobs.c.array_id == bindparam("e_array_id"),
    unindexed(_jobs.c.state) == JobState.QUEUED.value,
    func.substr(_jobs.c.native_id, 1, bindparam("e_prefix_len"))
    == bindparam("e_prefix", type_=String),
)
#: The intent events of an array's tasks but its first (``i_first``), every one of
#: them claimed from ``pending`` by the intent: the message names the task index the
#: intent wrote, the data points at the first task's event for the runtime argv.
_INTENT_EVENTS = _events_of_jobs(
    "sbatch", JobState.PENDING, JobState.SUBMITTING,
    literal("submitting as task ") + _ARRAY_INDEX + bindparam("i_suffix", type_=String),
    _jobs.c.array_id == bindparam("i_array_id"),
    _jobs.c.id != bindparam("i_first"),
)


def _record_intent_events(s: Session, array_id: str, first: str, actor: str) -> None:
    """The ``sbatch`` intent event of every task of ``array_id`` but ``first``, in ONE
    ``INSERT ... SELECT`` from the rows the intent just wrote (in its transaction):
    what :func:`send_array` would write one by one, but the data's ``index`` (the
    message and the job's ``array_index`` hold it)."""
    s.execute(
        _INTENT_EVENTS,
        {"ev_ts": utcnow(), "ev_actor": actor, "i_suffix": f" of array {array_id} with --hold",
         "ev_data": {"array_id": array_id, "argv_from": first}, "i_array_id": array_id,
         "i_first": first},
    )


def _record_queued_events(
    s: Session, array_id: str, base: str, now: Any, actor: str, note: str,
    data: dict[str, Any],
) -> None:
    """The ``submitting -> queued`` event of every job :func:`_record_queued` just moved,
    in ONE ``INSERT ... SELECT`` (in its transaction, so exactly those rows: the
    array's ``queued`` jobs with a SLURM id of ``base``)."""
    prefix = f"{base}_"
    s.execute(
        _QUEUED_EVENTS,
        {"ev_ts": now, "ev_actor": actor, "e_suffix": f" ({note})", "ev_data": data,
         "e_array_id": array_id, "e_prefix": prefix, "e_prefix_len": len(prefix)},
    )


def adopt_or_reset_array(
    ctx: ControllerContext, rt: SiteRuntime, array_id: str, report: CycleReport
) -> None:
    """An array whose sbatch may have run: adopt it by name, or submit its jobs again."""
    from hpcgear.render import array_slurm_name

    with ctx.db.session() as s:
        job_ids = list(
            s.scalars(
                select(Job.id).where(
                    Job.array_id == array_id,
                    unindexed(_jobs.c.state) == JobState.SUBMITTING.value,
                )
            ).all()
        )
    if not job_ids:
        return
    found = rt.backend.lookup_by_name(array_slurm_name(array_id))
    if found:
        if len(found) > 1:
            rt.backend.cancel(found[1:])
        record_array(ctx, rt, array_id, job_ids, found[0], report, how="adopted")
        return
    # sbatch never created it: forget the intent so the jobs are submitted afresh.
    for jid in job_ids:
        with job_session(ctx, jid) as (s, job):
            update_fields(s, job, array_id=None, array_index=None)
            record_event(
                s,
                job,
                "sbatch_abandoned",
                ctx.actor,
                f"array {array_id} was never created in SLURM; resubmitting",
                data={"array_id": array_id},
            )
