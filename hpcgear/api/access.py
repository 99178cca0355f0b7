"""Who is calling (from the ``Authorization`` header) and what a job-scoped key may touch.

A user key acts as its owner, with the owner's roles. A job key acts as the job's
requester but only on the job's destination, its inputs' containers and their
parents (read), and on the destination and the job's analysis (write: info, tags,
files); it stops working when the job reaches a final state.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.auth.keys import KeyIdentity, authenticate
from hpcgear.db.models import Container, Job
from hpcgear.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from hpcgear.hierarchy.permissions import RoleName, require_role

SCHEME = "scitran-user"


@dataclass(frozen=True, slots=True)
class Caller:
    login: str
    key_id: str
    kind: str
    job_id: str | None = None


def caller_from_header(session: Session, header: str | None) -> Caller:
    if not header:
        raise AuthenticationError(
            "no Authorization header", f"send 'Authorization: {SCHEME} <key>'"
        )
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != SCHEME or not secret.strip():
        raise AuthenticationError(
            f"unsupported Authorization scheme {scheme[:32]!r}",
            f"send 'Authorization: {SCHEME} <key>' (the secret after the last ':' of the key)",
        )
    secret = secret.strip().split(":")[-1]  # a whole host:port:secret key is accepted too
    ident: KeyIdentity = authenticate(session, secret)
    return Caller(ident.login, ident.key_id, ident.kind, ident.job_id)


def _lineage(c: Container) -> set[str]:
    ids = {c.group_id, c.project_id, c.subject_id, c.session_id, c.acquisition_id, c.id}
    return {i for i in ids if i}


def job_scope(session: Session, job_id: str) -> tuple[set[str], set[str]]:
    """(readable container ids, writable container ids) of a job key."""
    job = session.get(Job, job_id)
    if job is None:
        return set(), set()
    dest = session.get(Container, job.destination_id)
    read: set[str] = set()
    write: set[str] = set()
    if dest is not None:
        read |= _lineage(dest)
        write.add(dest.id)
    for spec in job.inputs or []:
        cid = spec.get("container_id")
        c = session.get(Container, cid) if cid else None
        if c is not None:
            read |= _lineage(c)
    analyses = session.scalars(
        select(Container.id).where(Container.type == "analysis", Container.job_id == job.id)
    ).all()
    read |= set(analyses)
    write |= set(analyses)
    return read, write


def check_scope(session: Session, caller: Caller, container: Container, write: bool) -> None:
    if caller.job_id is None:
        return
    read_ids, write_ids = job_scope(session, caller.job_id)
    allowed = write_ids if write else read_ids
    if container.id not in allowed:
        raise PermissionDeniedError(
            f"the key of job {caller.job_id} may not "
            f"{'change' if write else 'read'} {container.type} {container.label!r}",
            "a job's key reaches only the job's inputs, destination and their parents",
        )


def get_container(
    session: Session, caller: Caller, container_id: str, need: RoleName = RoleName.READ_ONLY
) -> Container:
    """The container ``container_id`` if the caller may read (or change) it."""
    c = session.get(Container, container_id)
    if c is None:
        raise NotFoundError(f"container {container_id!r} does not exist", "check the id")
    check_scope(session, caller, c, write=need.rank > 1)
    require_role(
        session, caller.login, c, need, "reading" if need.rank == 1 else "changing"
    )
    return c


def can_read(session: Session, caller: Caller, c: Container) -> bool:
    try:
        check_scope(session, caller, c, write=False)
        require_role(session, caller.login, c, RoleName.READ_ONLY, "reading")
    except PermissionDeniedError:
        return False
    return True


def require_user_key(caller: Caller, action: str) -> None:
    """Some actions (running gears, the CLI endpoint) are not for job keys."""
    if caller.kind == "job":
        raise PermissionDeniedError(
            f"a job's key cannot be used for {action}", "use a user key for that"
        )
