"""lease: one leader per site, a row in ``controller_leases`` renewed while it works.

* A controller takes a site's lease when it is free, expired, or held by a
  process on this host that no longer exists (a SIGKILLed controller does not
  block its successor for the lease's lifetime).
* While it works it renews the lease whenever a third of it has passed (before
  each job write and inside long stage-in loops), not only once per pass.
* Every job write checks, in the job's own transaction, that this controller
  still holds the lease (:class:`SiteLease`); a stale leader's write is refused
  with :class:`~hpcgear.controller.context.LeaseLostError`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpcgear.db.models import ControllerLease
from hpcgear.db.session import Database

from .context import ControllerContext, LeaseLostError, aware

logger = logging.getLogger(__name__)

LEASE_SECONDS = 90


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_gone(holder: str) -> bool:
    """True when ``holder`` (``host:pid``) names a process on this host that has exited."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by someone else
    return False


def acquire_lease(
    ctx: ControllerContext, site: str, holder: str, seconds: int = LEASE_SECONDS
) -> bool:
    """Take or renew the site's lease; False while another live controller holds it."""
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=seconds)
    try:
        with ctx.db.session() as s:
            lease = s.get(ControllerLease, site, with_for_update=True)
            if lease is None:
                s.add(ControllerLease(site=site, holder=holder, expires=expires, heartbeat=now))
                return True
            current = aware(lease.expires)
            assert current is not None
            if lease.holder != holder and current > now:
                if not holder_is_gone(lease.holder):
                    return False
                logger.warning(
                    "site %s: taking over the lease of %s (that process is gone)",
                    site,
                    lease.holder,
                )
            lease.holder, lease.expires, lease.heartbeat = holder, expires, now
            return True
    except IntegrityError:
        return False  # another controller inserted the row first


def release_lease(ctx: ControllerContext, site: str, holder: str) -> None:
    with ctx.db.session() as s:
        lease = s.get(ControllerLease, site)
        if lease is not None and lease.holder == holder:
            s.delete(lease)


def lease_holder(ctx: ControllerContext, site: str) -> tuple[str, dt.datetime] | None:
    """Who holds ``site``'s lease and until when (None when nobody does)."""
    with ctx.db.session() as s:
        lease = s.get(ControllerLease, site)
        if lease is None:
            return None
        expires = aware(lease.expires)
        assert expires is not None
        return str(lease.holder), expires


@dataclass
class SiteLease:
    """The leases one controller holds, as the :class:`~.context.Fence` of its steps."""

    db: Database
    holder: str
    seconds: int = LEASE_SECONDS
    sites: set[str] = field(default_factory=set)
    _renewed: float = 0.0

    def taken(self, site: str) -> None:
        self.sites.add(site)
        self._renewed = time.monotonic()

    def dropped(self, site: str) -> None:
        self.sites.discard(site)

    def keep(self) -> None:
        if not self.sites or time.monotonic() - self._renewed < self.seconds / 3:
            return
        now = dt.datetime.now(dt.UTC)
        with self.db.session() as s:
            for site in sorted(self.sites):
                lease = s.get(ControllerLease, site, with_for_update=True)
                if lease is None or lease.holder != self.holder:
                    continue  # lost: check() refuses this site's writes
                lease.expires = now + dt.timedelta(seconds=self.seconds)
                lease.heartbeat = now
        self._renewed = time.monotonic()

    def check(self, session: Session, site: str) -> None:
        # FOR SHARE on PostgreSQL: a takeover (FOR UPDATE) waits for this job's commit.
        lease = session.get(ControllerLease, site, with_for_update={"read": True})
        if lease is None or lease.holder != self.holder:
            self.sites.discard(site)
            raise LeaseLostError(
                f"this controller ({self.holder}) no longer leads site {site}"
                + (f"; {lease.holder} does" if lease is not None else ""),
                "nothing was written; the leading controller carries on with the job",
            )
