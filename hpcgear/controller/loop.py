"""The controller loop: leader lease per site, cycles, signals.

One controller leads each site at a time: it holds a row in
``controller_leases`` that it renews every cycle; a second controller sees an
unexpired lease held by someone else and waits. SIGTERM/SIGINT finish the
current step and stop; SIGHUP reloads the site configs before the next cycle.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from sqlalchemy import select

from hpcgear.config.settings import Settings, load_settings
from hpcgear.controller.context import ControllerContext, CycleReport
from hpcgear.controller.cycle import run_cycle
from hpcgear.controller.lease import acquire_lease, holder_id, release_lease
from hpcgear.controller.sites import SiteRuntime, connect_site
from hpcgear.db.models import Job
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.states import JobState

logger = logging.getLogger(__name__)


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
    _stop: threading.Event = field(default_factory=threading.Event)
    _reload: threading.Event = field(default_factory=threading.Event)
    _runtimes: dict[str, SiteRuntime] = field(default_factory=dict)

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
    def _load(self) -> None:
        for rt in self._runtimes.values():
            rt.close()
        self._runtimes.clear()
        settings: Settings = (
            load_settings(self.settings_path) if self.settings_path else self.ctx.settings
        )
        self.ctx.settings = settings
        registry = SiteRegistry.from_settings(settings)
        names = list(self.site_names) or list(registry.sites)
        for name in names:
            self._runtimes[name] = connect_site(registry.get(name), settings)

    def runtimes(self) -> dict[str, SiteRuntime]:
        if not self._runtimes or self._reload.is_set():
            self._reload.clear()
            self._load()
        return self._runtimes

    # ----------------------------------------------------------- cycles
    def once(self) -> list[CycleReport]:
        """One pass over every site this controller leads."""
        reports = []
        if self.rules_hook is not None:
            try:
                self.rules_hook(self.ctx)
            except Exception:  # rules must never stop job handling
                logger.exception("rule evaluation failed")
        for name, rt in self.runtimes().items():
            if self._stop.is_set():
                break
            if not acquire_lease(self.ctx, name, self.holder):
                logger.info("site %s is led by another controller; waiting", name)
                continue
            report = run_cycle(self.ctx, rt)
            if self.on_report is not None:
                self.on_report(report)
            reports.append(report)
        return reports

    def run(
        self,
        *,
        until_idle: bool = False,
        timeout: float | None = None,
        interval: float | None = None,
    ) -> list[CycleReport]:
        """Cycle until stopped (or until every site is idle, or ``timeout``)."""
        start = time.monotonic()
        last: list[CycleReport] = []
        try:
            while not self._stop.is_set():
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
                self._stop.wait(1.0 if busy and until_idle else float(wait))
        finally:
            for name in list(self._runtimes):
                release_lease(self.ctx, name, self.holder)
                self._runtimes[name].close()
            self._runtimes.clear()
        return last
