"""Retry a failed or cancelled job with other config values, tags or resources.

``hpcgear job retry ID --config slurm-ram=8G --tag cpu=4`` makes the next
attempt (a new row linked to the old one, like a plain retry) from the same
gear version and pinned input versions, but re-validates the merged config and
re-resolves the site and resources from the new tags, so a retry can move to a
larger partition or another site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from hpcgear.db.models import Container, Gear
from hpcgear.errors import NotFoundError
from hpcgear.jobs.service import (
    PreparedJob,
    input_spec_from_json,
    prepare_job,
    retryable_job,
    store_job,
)
from hpcgear.jobs.sites import SiteRegistry

__all__ = ["retry_with_changes"]


def retry_with_changes(
    session: Session,
    actor: str,
    sites: SiteRegistry,
    job_id: str,
    *,
    config: Mapping[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    dry_run: bool = False,
) -> PreparedJob:
    """A new attempt of ``job_id`` with ``config`` merged in and ``tags`` (None: the same)."""
    old = retryable_job(session, actor, job_id)
    gear = session.get(Gear, old.gear_id)
    dest = session.get(Container, old.destination_id)
    if gear is None or dest is None:
        raise NotFoundError(
            f"job {job_id}'s gear or destination no longer exists",
            "run the gear again with `hpcgear run`",
        )
    inputs = [input_spec_from_json(i) for i in old.inputs or [] if i.get("base") == "file"]
    merged = {**dict(old.config or {}), **dict(config or {})}
    prepared = prepare_job(
        session,
        actor,
        sites,
        gear=gear,
        destination=dest,
        inputs=inputs,
        config=merged,
        tags=list(old.tags or []) if tags is None else list(tags),
        priority=old.priority,
        coerce_strings=True,
    )
    if dry_run:
        return prepared
    changed = ", ".join(
        [*(f"{k}={v}" for k, v in (config or {}).items()),
         *([f"tags={','.join(tags)}"] if tags is not None else [])]
    )
    job = store_job(
        session,
        actor,
        prepared,
        origin_type=old.origin_type,
        origin_id=old.origin_id,
        previous=old,
        reason=f"retry of {old.id}" + (f" with {changed}" if changed else ""),
    )
    from dataclasses import replace

    return replace(prepared, job=job)
