"""Controller status and health: what the controllers did, read back for humans and monitors.

Each cycle's report is stored per site (:func:`record_cycle`, called by the
daemon and by ``controller once``), so ``hpcgear controller status`` can say who
leads each site, when it last cycled, when the scheduler last answered a whole
cycle without errors, the backlog per state and the recent errors, even after
the controller stopped. :func:`health` turns that into a yes/no for monitoring;
:func:`metrics_text` into Prometheus text (a node_exporter textfile, or the API
server's ``/metrics``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpcgear.db.models import ControllerLease, ControllerStatus, Job
from hpcgear.db.session import Database

# Defined with the Core job queries so `hpcgear jobs` / `job show` need not import this
# module (and the ORM) to tell whether a site is led.
from hpcgear.jobs.queries import MIN_STALE_SECONDS, stale_after
from hpcgear.states import JobState

__all__ = [
    "MIN_STALE_SECONDS",
    "RECENT_ERRORS",
    "SiteStatus",
    "controller_status",
    "health",
    "last_led",
    "metrics_text",
    "record_cycle",
    "stale_after",
]

#: How many recent errors a site's status keeps.
RECENT_ERRORS = 20


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def record_cycle(
    db: Database, report: Mapping[str, Any], holder: str, *, now: dt.datetime | None = None
) -> None:
    """Store one cycle's report (``CycleReport.as_dict()``) for its site."""
    now = now or dt.datetime.now(dt.UTC)
    site = str(report["site"])
    errors = [str(e) for e in report.get("errors") or []]
    for attempt in range(2):
        try:
            with db.session() as s:
                row = s.get(ControllerStatus, site, with_for_update=True)
                if row is None:
                    row = ControllerStatus(site=site, holder=holder, last_cycle=now, cycles=0,
                                           last_report={}, recent_errors=[])
                    s.add(row)
                row.holder = holder
                row.last_cycle = now
                row.cycles = (row.cycles or 0) + 1
                row.last_report = dict(report)
                if not errors:
                    row.last_clean_cycle = now
                else:
                    stamped = [{"ts": now.isoformat(), "error": e} for e in errors]
                    row.recent_errors = [*(row.recent_errors or []), *stamped][-RECENT_ERRORS:]
            return
        except IntegrityError:  # another controller inserted the row first
            if attempt:
                raise


@dataclass(frozen=True, slots=True)
class SiteStatus:
    site: str
    leader: str | None
    lease_expires: dt.datetime | None
    last_cycle: dt.datetime | None
    last_clean_cycle: dt.datetime | None
    cycles: int
    last_report: Mapping[str, Any]
    recent_errors: Sequence[Mapping[str, Any]]
    backlog: Mapping[str, int]
    stale_after: dt.timedelta

    def led(self, now: dt.datetime) -> bool:
        """Whether a controller cycled this site recently."""
        return self.last_cycle is not None and now - self.last_cycle <= self.stale_after

    def redacted(self) -> SiteStatus:
        """The status as a user who is no site admin sees it: error texts (which name
        other users' jobs, paths and hosts) become their count and time."""
        from dataclasses import replace

        hidden = "hidden: site admins see controller errors"
        report = dict(self.last_report)
        if report.get("errors"):
            report["errors"] = [f"{len(report['errors'])} error(s) ({hidden})"]
        return replace(
            self,
            last_report=report,
            recent_errors=[{"ts": e.get("ts"), "error": hidden} for e in self.recent_errors],
        )

    def as_dict(self, now: dt.datetime) -> dict[str, Any]:
        def iso(v: dt.datetime | None) -> str | None:
            return v.isoformat() if v else None

        return {
            "site": self.site,
            "led": self.led(now),
            "leader": self.leader,
            "lease_expires": iso(self.lease_expires),
            "last_cycle": iso(self.last_cycle),
            "last_cycle_age_seconds": (
                int((now - self.last_cycle).total_seconds()) if self.last_cycle else None),
            "last_scheduler_answer": iso(self.last_clean_cycle),
            "cycles": self.cycles,
            "last_report": dict(self.last_report),
            "recent_errors": [dict(e) for e in self.recent_errors],
            "backlog": dict(self.backlog),
            "stale_after_seconds": int(self.stale_after.total_seconds()),
        }


def _backlog(session: Session) -> dict[str, dict[str, int]]:
    open_states = [s.value for s in JobState if not s.final]
    rows = session.execute(
        select(Job.site, Job.state, func.count()).where(Job.state.in_(open_states))
        .group_by(Job.site, Job.state)
    ).all()
    out: dict[str, dict[str, int]] = {}
    for site, state, n in rows:
        out.setdefault(site, {})[state] = int(n)
    return out


def controller_status(
    session: Session, sites: Mapping[str, int]
) -> list[SiteStatus]:
    """Status of each site in ``sites`` (name -> poll interval seconds) and any stored one."""
    leases = {row.site: row for row in session.scalars(select(ControllerLease))}
    stored = {row.site: row for row in session.scalars(select(ControllerStatus))}
    backlog = _backlog(session)
    names = list(dict.fromkeys([*sites, *sorted(stored)]))
    out = []
    for name in names:
        lease = leases.get(name)
        st = stored.get(name)
        out.append(SiteStatus(
            site=name,
            leader=lease.holder if lease else None,
            lease_expires=_aware(lease.expires) if lease else None,
            last_cycle=_aware(st.last_cycle) if st else None,
            last_clean_cycle=_aware(st.last_clean_cycle) if st else None,
            cycles=int(st.cycles or 0) if st else 0,
            last_report=dict(st.last_report or {}) if st else {},
            recent_errors=list(st.recent_errors or []) if st else [],
            backlog=backlog.get(name, {}),
            stale_after=stale_after(sites.get(name, 60)),
        ))
    return out


def last_led(session: Session, site: str) -> dt.datetime | None:
    """When a controller last cycled ``site`` (None: never)."""
    st = session.get(ControllerStatus, site)
    lease = session.get(ControllerLease, site)
    times = [t for t in (_aware(st.last_cycle) if st else None,
                         _aware(lease.heartbeat) if lease else None) if t is not None]
    return max(times) if times else None


def health(statuses: Sequence[SiteStatus], now: dt.datetime) -> tuple[bool, list[str]]:
    """(healthy, reasons): every site cycled recently and its last cycle had no errors.

    A site that has nothing to do and was never led is healthy: there is nothing
    waiting on it.
    """
    reasons: list[str] = []
    for st in statuses:
        waiting = sum(st.backlog.values())
        if not st.led(now):
            if st.last_cycle is None and not waiting:
                continue
            since = st.last_cycle.isoformat(timespec="seconds") if st.last_cycle else "never"
            reasons.append(f"site {st.site}: no controller cycle since {since} "
                           f"({waiting} job(s) waiting)")
        elif st.last_report.get("errors"):
            reasons.append(f"site {st.site}: the last cycle had errors: "
                           f"{'; '.join(map(str, st.last_report['errors']))[:300]}")
    return not reasons, reasons


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(statuses: Sequence[SiteStatus], now: dt.datetime) -> str:
    """Prometheus text exposition of the controller status (node_exporter textfile)."""
    lines = [
        "# HELP hpcgear_controller_up 1 if a controller cycled the site recently.",
        "# TYPE hpcgear_controller_up gauge",
    ]
    for st in statuses:
        lines.append(f'hpcgear_controller_up{{site="{_label(st.site)}"}} {int(st.led(now))}')
    lines += [
        "# HELP hpcgear_controller_last_cycle_timestamp_seconds Unix time of the last cycle.",
        "# TYPE hpcgear_controller_last_cycle_timestamp_seconds gauge",
    ]
    for st in statuses:
        if st.last_cycle is not None:
            lines.append(f'hpcgear_controller_last_cycle_timestamp_seconds{{site="'
                         f'{_label(st.site)}"}} {st.last_cycle.timestamp():.0f}')
    lines += [
        "# HELP hpcgear_controller_last_scheduler_answer_timestamp_seconds Unix time of the "
        "last cycle without errors.",
        "# TYPE hpcgear_controller_last_scheduler_answer_timestamp_seconds gauge",
    ]
    for st in statuses:
        if st.last_clean_cycle is not None:
            lines.append(f'hpcgear_controller_last_scheduler_answer_timestamp_seconds{{site="'
                         f'{_label(st.site)}"}} {st.last_clean_cycle.timestamp():.0f}')
    lines += [
        "# HELP hpcgear_controller_cycles_total Cycles run for the site.",
        "# TYPE hpcgear_controller_cycles_total counter",
    ]
    for st in statuses:
        lines.append(f'hpcgear_controller_cycles_total{{site="{_label(st.site)}"}} {st.cycles}')
    lines += [
        "# HELP hpcgear_controller_errors_recent Errors among the last stored cycle errors.",
        "# TYPE hpcgear_controller_errors_recent gauge",
    ]
    for st in statuses:
        lines.append(f'hpcgear_controller_errors_recent{{site="{_label(st.site)}"}} '
                     f"{len(st.recent_errors)}")
    lines += [
        "# HELP hpcgear_jobs Unfinished jobs per site and state.",
        "# TYPE hpcgear_jobs gauge",
    ]
    for st in statuses:
        for state in (s.value for s in JobState if not s.final):
            lines.append(f'hpcgear_jobs{{site="{_label(st.site)}",state="{state}"}} '
                         f"{st.backlog.get(state, 0)}")
    return "\n".join(lines) + "\n"
