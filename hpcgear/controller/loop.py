"""The controller loop: leader lease per site, cycles, signals.

One controller leads each site at a time (:mod:`hpcgear.controller.lease`): a
second controller sees a live lease held by someone else and waits, or, run
once from cron, says so and fails unless told to wait. SIGTERM/SIGINT finish
the current step and stop; SIGHUP reloads the site configs before the next
cycle (a broken file is logged and the running configuration kept).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from sqlalchemy import func, select

from hpcgear.config.settings import Settings, load_settings
from hpcgear.controller.context import ControllerContext, CycleReport
from hpcgear.controller.cycle import run_cycle
from hpcgear.controller.housekeeping import STORAGE_TMP_AGE_SECONDS
from hpcgear.controller.lease import (
    LEASE_SECONDS,
    SiteLease,
    acquire_lease,
    holder_id,
    lease_holder,
    release_lease,
)
from hpcgear.controller.sites import SiteRuntime, connect_site
from hpcgear.db.models import ChangeLog, Job
from hpcgear.db.session import ChangeWatch
from hpcgear.errors import HpcgearError
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.states import JobState

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 3600
#: Seconds between the daemon's checks for new work (pending jobs, uploads) while it
#: waits for the next cycle, where its change watch cannot tell whether anything was
#: written (a driver that cannot LISTEN): two cheap database queries, no scheduler
#: query, so a batch handed to the site starts being submitted within this.
WAKE_TICK = 0.1
#: The same with a precise change watch (:class:`~hpcgear.db.session.ChangeWatch`: on
#: a SQLite file one ``PRAGMA data_version``, on PostgreSQL the notifications its
#: LISTEN connection already holds; microseconds, no table read): the queries run
#: only when something was written, so a batch handed over is seen within this.
QUICK_WAKE_TICK = 0.02
#: Seconds between its looks for exit records of tracked jobs (a stat per job).
EXIT_TICK = 0.5
#: Most running jobs whose exit records the daemon watches between cycles.
EXIT_WATCH_MAX = 2000
#: Seconds before an exit record already seen triggers another cycle. SLURM's
#: accounting (slurmdbd) records a job's end a second or two after the job wrote its
#: exit record and left the queue, so the first cycle often finds no usage figures
#: yet; one ``squeue`` and one ``sacct`` a second for the jobs that are ending (and
#: only while they are) ends that wait close to when slurmdbd has them.
EXIT_RECHECK = 1.0


#: Modules the submit path imports on first use (kept out of the CLI's start-up):
#: imported by :meth:`Controller.warm_up` before the first batch arrives.
_SUBMIT_PATH_MODULES = (
    "hpcgear.render",
    "hpcgear.staging.stagein",
    "hpcgear.procs",
    "concurrent.futures.process",
)


def site_is_idle(ctx: ControllerContext, site: str) -> bool:
    with ctx.db.session() as s:
        busy = s.scalar(
            select(Job.id)
            .where(Job.site == site, Job.state.in_([st.value for st in JobState if not st.final]))
            .limit(1)
        )
    return busy is None


@dataclass
class Controller:
    settings_path: str | None
    ctx: ControllerContext
    site_names: Sequence[str] = ()
    holder: str = field(default_factory=holder_id)
    on_report: Callable[[CycleReport], None] | None = None
    rules_hook: Callable[[ControllerContext], int] | None = None
    lease_seconds: int = LEASE_SECONDS
    #: Sites the last :meth:`once` could not lead, with who leads them.
    not_led: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _reload: threading.Event = field(default_factory=threading.Event, init=False)
    _runtimes: dict[str, SiteRuntime] = field(default_factory=dict, init=False)
    _lease: SiteLease | None = field(default=None, init=False)
    _housekept: float = field(default=0.0, init=False)
    _announced: dict[str, str] = field(default_factory=dict, init=False)
    _exit_seen: dict[str, float] = field(default_factory=dict, init=False)
    _watch: ChangeWatch | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._lease = SiteLease(self.ctx.db, self.holder, self.lease_seconds)
        self.ctx.fence = self._lease

    # ----------------------------------------------------------- signals
    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("signal %s: finishing the current step, then stopping", signum)
            self._stop.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            logger.info("SIGHUP: reloading site configs before the next cycle")
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def stop(self) -> None:
        self._stop.set()

    # ----------------------------------------------------------- sites
    def _load(self) -> dict[str, SiteRuntime]:
        settings: Settings = (
            load_settings(self.settings_path) if self.settings_path else self.ctx.settings
        )
        registry = SiteRegistry.from_settings(settings)
        names = list(self.site_names) or list(registry.sites)
        sites = [registry.get(name) for name in names]  # every file parses before any swap
        fresh: dict[str, SiteRuntime] = {}
        try:
            for site in sites:
                fresh[site.name] = connect_site(site, settings)
        except BaseException:
            for rt in fresh.values():
                rt.close()
            raise
        self.ctx.settings = settings
        return fresh

    def runtimes(self) -> dict[str, SiteRuntime]:
        if not self._runtimes:
            self._reload.clear()
            self._runtimes = self._load()
        elif self._reload.is_set():
            self._reload.clear()
            try:
                fresh = self._load()
            except HpcgearError as exc:
                logger.error(
                    "SIGHUP: the new configuration is not used, the running one is kept: %s%s",
                    exc.message,
                    f" (hint: {exc.hint})" if exc.hint else "",
                )
                return self._runtimes
            old, self._runtimes = self._runtimes, fresh
            for name, rt in old.items():
                rt.close()
                if name not in fresh:
                    self._release(name)
        return self._runtimes

    def _release(self, name: str) -> None:
        release_lease(self.ctx, name, self.holder)
        if self._lease is not None:
            self._lease.dropped(name)

    def _lead(self, name: str, *, wait: bool) -> bool:
        """Take ``name``'s lease; with ``wait``, until it is free (or the controller stops)."""
        while True:
            if acquire_lease(self.ctx, name, self.holder, self.lease_seconds):
                if self._lease is not None:
                    self._lease.taken(name)
                self.not_led.pop(name, None)
                return True
            who = lease_holder(self.ctx, name)
            self.not_led[name] = (
                f"{who[0]} until {who[1]:%Y-%m-%d %H:%M:%S} UTC" if who else "another controller"
            )
            if not wait or self._stop.is_set():
                holder = who[0] if who else ""
                if self._announced.get(name) != holder:  # say it once per holder, not per cycle
                    self._announced[name] = holder
                    logger.warning(
                        "site %s is led by %s; this controller waits", name, self.not_led[name]
                    )
                return False
            self._stop.wait(2.0)

    # ----------------------------------------------------------- cycles
    def housekeeping(self) -> None:
        """Hourly: temp files of interrupted puts in storage (older than an hour) go."""
        now = time.monotonic()
        if self._housekept and now - self._housekept < HOUSEKEEPING_SECONDS:
            return
        self._housekept = now
        try:
            n = self.ctx.store.clean_tmp(older_than_seconds=STORAGE_TMP_AGE_SECONDS)
        except OSError as exc:
            logger.warning("storage temp cleanup failed: %s", exc)
            return
        if n:
            logger.info("removed %d stale temp file(s) from storage", n)

    def once(self, *, wait: bool = False) -> list[CycleReport]:
        """One pass over every site this controller leads (``wait``: for its lease)."""
        reports = []
        self.housekeeping()
        if self.rules_hook is not None:
            try:
                self.rules_hook(self.ctx)
            except Exception:  # rules must never stop job handling
                logger.exception("rule evaluation failed")
        for name, rt in self.runtimes().items():
            if self._stop.is_set():
                break
            if not self._lead(name, wait=wait):
                continue
            report = run_cycle(self.ctx, rt)
            if self.on_report is not None:
                self.on_report(report)
            reports.append(report)
        return reports

    def warm_up(self) -> None:
        """What the first batch would otherwise pay for on its way to SLURM, paid at
        start (the daemon calls it once, before its first cycle).

        - Each site's sbatch templates are compiled (about 20 ms, once per process).
        - The modules that preparing and sending arrays import on first use are imported.
        """
        import importlib

        from hpcgear.render import compile_templates

        for module in _SUBMIT_PATH_MODULES:
            importlib.import_module(module)
        for name, rt in self.runtimes().items():
            failed = compile_templates(rt.site)
            if failed:
                logger.debug("site %s: templates not compiled ahead: %s", name, ", ".join(failed))

    def close(self) -> None:
        """Release every lease this controller holds and close the site connections."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for name in list(self._runtimes):
            self._release(name)
            self._runtimes[name].close()
        self._runtimes.clear()

    def run(
        self,
        *,
        until_idle: bool = False,
        timeout: float | None = None,
        interval: float | None = None,
    ) -> list[CycleReport]:
        """Cycle until stopped (or until every site is idle, or ``timeout``).

        Between cycles the daemon does not simply sleep the poll interval: it
        starts the next cycle at once while a backlog is left (jobs still
        pending or submitting), and otherwise checks every :data:`WAKE_TICK`
        seconds, with cheap database queries and no scheduler query, whether
        new work arrived (a pending job, an upload rules may match), and every
        :data:`EXIT_TICK` seconds whether a tracked job wrote its exit record.
        The scheduler is polled on new work, on an exit record, and at least
        every poll interval.
        """
        start = time.monotonic()
        last: list[CycleReport] = []
        # SQLite: a cycle's commits do not checkpoint (unless the log grows past a
        # bound); the WAL is copied once the cycle is over, before the wait below.
        self.ctx.db.hold_checkpoints()
        try:
            while not self._stop.is_set():
                marks = self._work_marks()
                last = self.once()
                if until_idle and all(site_is_idle(self.ctx, n) for n in self.runtimes()):
                    break
                if timeout is not None and time.monotonic() - start > timeout:
                    break
                busy = any(r.busy for r in last)
                wait = (
                    interval
                    if interval is not None
                    else min(
                        (rt.site.poll_interval_seconds for rt in self.runtimes().values()),
                        default=10,
                    )
                )
                if until_idle and busy:
                    wait = min(float(wait), 1.0)
                progressed = any(r.claimed or r.submitted or r.adopted for r in last)
                if progressed and self._backlog():
                    continue  # claimed work is left: no sleeping through a backlog
                # A step that failed (SLURM or slurmdbd unreachable) is not retried
                # every time an exit record is seen: that would repeat the failing
                # query, and its warning, every few seconds for the whole outage.
                failing = any(r.errors for r in last)
                self.ctx.db.checkpoint()
                self._sleep(float(wait), marks[0], self._work_marks()[1],
                            watch_exits=not failing)
        finally:
            self.close()
        return last

    # ----------------------------------------------------------- waking up
    def _work_marks(self) -> tuple[int, int]:
        """(newest change-log entry, pending jobs) before a cycle, to spot new work."""
        names = list(self._runtimes) or list(self.site_names)
        with self.ctx.db.session() as s:
            seq = s.scalar(select(func.max(ChangeLog.seq))) or 0
            pending = (
                s.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.site.in_(names), Job.state == JobState.PENDING.value)
                )
                or 0
            )
        return int(seq), int(pending)

    def _backlog(self) -> bool:
        """Whether jobs are still waiting to be submitted (more than one cycle claims)."""
        with self.ctx.db.session() as s:
            left = s.scalar(
                select(Job.id)
                .where(
                    Job.site.in_(list(self._runtimes)),
                    Job.state.in_((JobState.PENDING.value, JobState.SUBMITTING.value)),
                )
                .limit(1)
            )
        return left is not None

    def _sleep(self, seconds: float, seq0: int, pending0: int, *,
               watch_exits: bool = True) -> None:
        """Wait up to ``seconds``; return early on new work or a finished job.

        New work is a change-log entry newer than ``seq0`` (rules may match it)
        or more pending jobs than the ``pending0`` a cap left waiting; a finished
        job is an exit record of a tracked job (only with ``watch_exits``).
        """
        deadline = time.monotonic() + seconds
        next_exit_look = time.monotonic() + EXIT_TICK
        if self._watch is None:
            self._watch = self.ctx.db.change_watch()
        watch = self._watch
        tick = QUICK_WAKE_TICK if watch.precise else WAKE_TICK
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._stop.wait(min(tick, left)):
                return
            try:
                # Nothing committed since the last look: nothing new to find.
                if watch.changed():
                    seq, pending = self._work_marks()
                    if pending > pending0 or (self.rules_hook is not None and seq > seq0):
                        return
                if watch_exits and time.monotonic() >= next_exit_look:
                    next_exit_look = time.monotonic() + EXIT_TICK
                    if self._exit_records_written():
                        return
            except Exception:  # a failed check only means waiting for the interval
                logger.debug("wake-up check failed", exc_info=True)
                watch.close()  # its next look answers True: the check runs again

    def _exit_records_written(self) -> bool:
        """Whether a queued/running job of a site on this host's file system wrote exit.json.

        A stat per tracked job, no scheduler query; skipped for remote sites and
        beyond :data:`EXIT_WATCH_MAX` tracked jobs (the poll interval covers those).
        """
        from hpcgear.controller.resolve import attempt_paths

        local = {n: rt for n, rt in self._runtimes.items() if rt.local_files}
        if not local:
            return False
        with self.ctx.db.session() as s:
            running = s.scalars(
                select(Job)
                .where(
                    Job.site.in_(list(local)),
                    Job.state.in_((JobState.QUEUED.value, JobState.RUNNING.value)),
                )
                .limit(EXIT_WATCH_MAX + 1)
            ).all()
        if not running or len(running) > EXIT_WATCH_MAX:
            return False
        now = time.monotonic()
        for job in running:
            path = attempt_paths(local[job.site].site, job).exit_json
            if os.path.exists(path) and self._exit_seen.get(job.id, 0.0) < now - EXIT_RECHECK:
                # SLURM may report the job running for a moment after the record is
                # written: look again at most every EXIT_RECHECK seconds.
                self._exit_seen[job.id] = now
                return True
        return False
