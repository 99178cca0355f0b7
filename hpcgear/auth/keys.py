"""API keys: per-user keys and job-scoped keys, stored as the sha256 of their secret.

A key's text has the form the Flywheel SDK parses, ``host:port:secret`` (with
``__force_insecure`` before the secret for a plain-HTTP server), so
``flywheel.Client(key)`` finds the server from the key alone. The server is
given only the secret (``Authorization: scitran-user <secret>``); it looks up
the sha256 of it, so a stolen database holds no usable key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.auth.keytext import format_key as format_key
from hpcgear.db.models import ApiKey, Job, User
from hpcgear.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from hpcgear.hierarchy.permissions import get_actor

logger = logging.getLogger(__name__)

# Job states in which a job-scoped key works (the job is live).
LIVE_JOB_STATES = frozenset({"pending", "submitting", "queued", "running", "staging"})
_LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite gives naive datetimes back; they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    # 48 hex characters: 192 bits. (The SDK treats a 57-character key as an OAuth
    # bearer token, so the length must not be 57.)
    return secrets.token_hex(24)


# ------------------------------------------------------------------ service


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """Who a presented key acts as."""

    login: str
    key_id: str
    kind: str  # user | job
    job_id: str | None = None


def key_to_dict(row: ApiKey) -> dict[str, Any]:
    def iso(v: dt.datetime | None) -> str | None:
        return _aware(v).isoformat() if v is not None else None

    return {
        "id": row.id,
        "owner": row.owner,
        "kind": row.kind,
        "job_id": row.job_id,
        "label": row.label,
        "created": iso(row.created),
        "last_used": iso(row.last_used),
        "expires": iso(row.expires),
        "revoked": iso(row.revoked),
    }


def _require_self_or_admin(session: Session, actor: str, owner: str, action: str) -> User:
    user = get_actor(session, actor)
    if owner != actor and not user.site_admin:
        raise PermissionDeniedError(
            f"{action} for another user ({owner!r}) needs the site-admin role",
            "manage your own keys, or ask a site admin",
        )
    return user


def create_key(
    session: Session,
    actor: str,
    owner: str | None = None,
    *,
    label: str | None = None,
    expires: dt.datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new user key for ``owner`` (default: the actor); returns the row and the secret.

    The secret is shown once; only its sha256 is stored.
    """
    owner = owner or actor
    _require_self_or_admin(session, actor, owner, "creating an API key")
    if session.get(User, owner) is None:
        raise NotFoundError(
            f"user {owner!r} does not exist",
            f"a site admin adds it with `hpcgear user add {owner}`",
        )
    if label is not None and (len(label) > 128 or not label.isprintable()):
        raise InvalidInputError(
            "key label must be printable and at most 128 characters", "use a short description"
        )
    if expires is not None and _aware(expires) <= _now():
        raise InvalidInputError("the key's expiry is in the past", "give a future time")
    secret = new_secret()
    row = ApiKey(
        id=secrets.token_hex(8),
        secret_sha256=hash_secret(secret),
        owner=owner,
        kind="user",
        label=label,
        expires=expires,
    )
    session.add(row)
    session.flush()
    logger.info("api key %s created for %s by %s", row.id, owner, actor)
    return row, secret


def create_job_key(session: Session, job: Job, owner: str) -> str:
    """A key that acts as ``owner`` only within ``job``'s scope while the job is live."""
    secret = new_secret()
    session.add(
        ApiKey(
            id=secrets.token_hex(8),
            secret_sha256=hash_secret(secret),
            owner=owner,
            kind="job",
            job_id=job.id,
            label=f"job {job.id}",
        )
    )
    session.flush()
    return secret


def job_key_owner(session: Session, job: Job) -> str:
    """Who a job's key acts as: the requester (for rule jobs, the rule's author)."""
    if job.origin_type == "user":
        return job.origin_id
    if job.rule_id is not None:
        from hpcgear.db.models import GearRule

        rule = session.get(GearRule, job.rule_id)
        if rule is not None:
            return rule.created_by
    raise InvalidInputError(
        f"job {job.id} has no requesting user to act for",
        "run the gear with `hpcgear run` or from a rule",
    )


def list_keys(
    session: Session, actor: str, owner: str | None = None, *, everyone: bool = False
) -> list[ApiKey]:
    """The actor's keys, another user's (site admins), or all keys (``everyone``)."""
    user = get_actor(session, actor)
    q = select(ApiKey).order_by(ApiKey.created, ApiKey.id)
    if everyone:
        if not user.site_admin:
            raise PermissionDeniedError(
                "listing every user's API keys needs the site-admin role",
                "list your own keys with `hpcgear user key list`",
            )
    else:
        who = owner or actor
        _require_self_or_admin(session, actor, who, "listing API keys")
        q = q.where(ApiKey.owner == who)
    return list(session.scalars(q))


def revoke_key(session: Session, actor: str, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"no API key {key_id!r}", "list keys with `hpcgear user key list`")
    _require_self_or_admin(session, actor, row.owner, "revoking an API key")
    if row.revoked is None:
        row.revoked = _now()
        session.flush()
        logger.info("api key %s of %s revoked by %s", row.id, row.owner, actor)
    return row


def revoke_job_keys(session: Session, job_id: str) -> int:
    """Revoke a job's keys (called when the job reaches a final state)."""
    rows = session.scalars(
        select(ApiKey).where(ApiKey.job_id == job_id, ApiKey.revoked.is_(None))
    ).all()
    for row in rows:
        row.revoked = _now()
    session.flush()
    return len(rows)


def authenticate(session: Session, secret: str) -> KeyIdentity:
    """The identity of a presented secret; AuthenticationError if it is not a live key."""
    if not secret or len(secret) > 512:
        raise AuthenticationError("no valid API key was presented", _KEY_HINT)
    row = session.scalar(select(ApiKey).where(ApiKey.secret_sha256 == hash_secret(secret)))
    if row is None:
        raise AuthenticationError("the API key is not known to this server", _KEY_HINT)
    now = _now()
    if row.revoked is not None:
        raise AuthenticationError(f"API key {row.id} was revoked", _KEY_HINT)
    if row.expires is not None and _aware(row.expires) <= now:
        raise AuthenticationError(f"API key {row.id} has expired", _KEY_HINT)
    if row.kind == "job":
        job = session.get(Job, row.job_id) if row.job_id else None
        if job is None or job.state not in LIVE_JOB_STATES:
            raise AuthenticationError(
                f"API key {row.id} belongs to job {row.job_id}, which is no longer running",
                "a job's key works only while the job is live",
            )
    if row.last_used is None or now - _aware(row.last_used) > _LAST_USED_RESOLUTION:
        row.last_used = now
        session.flush()
    return KeyIdentity(row.owner, row.id, row.kind, row.job_id)


_KEY_HINT = "make a key with `hpcgear user key create` and log in with `hpcgear login KEY`"
