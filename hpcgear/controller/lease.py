"""lease: one leader per site, a row in ``controller_leases`` renewed while it works."""

from __future__ import annotations

import datetime as dt
import os
import socket

from sqlalchemy.exc import IntegrityError

from hpcgear.db.models import ControllerLease

from .context import ControllerContext

LEASE_SECONDS = 90


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
            current = (
                lease.expires if lease.expires.tzinfo else lease.expires.replace(tzinfo=dt.UTC)
            )
            if lease.holder != holder and current > now:
                return False
            lease.holder, lease.expires, lease.heartbeat = holder, expires, now
            return True
    except IntegrityError:
        return False  # another controller inserted the row first


def release_lease(ctx: ControllerContext, site: str, holder: str) -> None:
    with ctx.db.session() as s:
        lease = s.get(ControllerLease, site)
        if lease is not None and lease.holder == holder:
            s.delete(lease)
