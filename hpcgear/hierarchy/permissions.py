"""Roles and the checks every mutating service call makes.

Roles are granted on a group or a project; a group role applies to all its
projects. ``site-admin`` may do anything. A denied action raises
PermissionDeniedError before anything is written.
"""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, Role, User
from hpcgear.errors import InvalidInputError, PermissionDeniedError


class RoleName(enum.StrEnum):
    READ_ONLY = "read-only"
    READ_WRITE = "read-write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {"read-only": 1, "read-write": 2, "admin": 3}[self.value]

    @classmethod
    def parse(cls, text: str) -> RoleName:
        try:
            return cls(text)
        except ValueError:
            raise InvalidInputError(
                f"unknown role {text!r}", f"roles are {', '.join(r.value for r in cls)}"
            ) from None


def get_actor(session: Session, login: str) -> User:
    user = session.get(User, login)
    if user is None:
        raise PermissionDeniedError(
            f"user {login!r} is not registered in this hpcgear instance",
            f"ask a site admin to run `hpcgear user add {login}`",
        )
    if user.disabled:
        raise PermissionDeniedError(
            f"user {login!r} is disabled in this hpcgear instance",
            f"ask a site admin to run `hpcgear user enable {login}`",
        )
    return user


def require_site_admin(session: Session, login: str, action: str) -> User:
    user = get_actor(session, login)
    if not user.site_admin:
        raise PermissionDeniedError(
            f"{action} needs the site-admin role; user {login!r} does not have it",
            f"ask a site admin to do it, or to run `hpcgear user add {login} --site-admin`",
        )
    return user


def effective_role(session: Session, user: User, container: Container) -> RoleName | None:
    """The strongest role ``user`` holds on the container's group or project."""
    if user.site_admin:
        return RoleName.ADMIN
    scope = [container.group_id]
    if container.project_id:
        scope.append(container.project_id)
    rows = session.scalars(
        select(Role.role).where(Role.user_login == user.login, Role.container_id.in_(scope))
    ).all()
    roles = [RoleName(r) for r in rows]
    return max(roles, key=lambda r: r.rank) if roles else None


def require_role(
    session: Session, login: str, container: Container, needed: RoleName, action: str
) -> User:
    user = get_actor(session, login)
    have = effective_role(session, user, container)
    if have is None or have.rank < needed.rank:
        where = f"{container.type} {container.label!r}"
        held = have.value if have else "no role"
        raise PermissionDeniedError(
            f"{action} on {where} needs the {needed.value} role; {login!r} has {held}",
            "ask an admin of the project or group to run "
            f"`hpcgear role grant {login} <group/project> {needed.value}`",
        )
    return user
