"""``GET /metrics``: the controller status as Prometheus text, for a scraper.

Who may read it: a site admin's (user) key from anywhere, or a request without
credentials from the server itself (a loopback address), so a Prometheus on the
same host scrapes without a key. Everyone else gets 401/403: the text names the
sites and their backlog. Behind a reverse proxy on the same host, the proxy must
send ``X-Forwarded-For`` (uvicorn trusts it from 127.0.0.1) or not forward
``/metrics``, else every proxied request looks local.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from hpcgear.api.access import caller_from_header, require_user_key
from hpcgear.api.app import StateDep
from hpcgear.errors import AuthenticationError

router = APIRouter()

#: Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, st: StateDep) -> PlainTextResponse:
    """Controller liveness, cycles, errors and the job backlog per site (Prometheus text)."""
    from hpcgear.controller.status import controller_status, metrics_text
    from hpcgear.hierarchy.permissions import require_site_admin

    header = request.headers.get("authorization")
    with st.session() as s:
        if header:
            caller = caller_from_header(s, header)
            require_user_key(caller, "reading /metrics")
            require_site_admin(s, caller.login, "reading /metrics")
        elif not _loopback(request.client.host if request.client else None):
            raise AuthenticationError(
                "/metrics needs a site admin's key from other hosts",
                "scrape from the server itself, or send 'Authorization: scitran-user <key>' "
                "with a site admin's key",
            )
        intervals = {name: site.poll_interval_seconds for name, site in st.sites.sites.items()}
        statuses = controller_status(s, intervals)
    return PlainTextResponse(metrics_text(statuses, dt.datetime.now(dt.UTC)),
                             media_type=CONTENT_TYPE)
