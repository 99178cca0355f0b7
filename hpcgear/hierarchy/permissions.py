"""Roles and the checks every mutating service call makes.

Roles are granted on a group or a project; a group role applies to all its
projects. ``site-admin`` may do anything. A denied action raises
PermissionDeniedError before anything is written. The same checks on a Core
connection (the login-node read paths) are in :mod:`hpcgear.hierarchy.access`;
both build their errors there, and the role lookup itself (:func:`effective_role`)
is that module's, run on the session.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from hpcgear.db.models import Container, User
from hpcgear.errors import PermissionDeniedError
from hpcgear.hierarchy.access import RoleName, effective_role, not_registered, role_denied

__all__ = ["RoleName", "effective_role", "get_actor", "require_role", "require_site_admin"]


def get_actor(session: Session, login: str) -> User:
    user = session.get(User, login)
    denied = not_registered(login, user)
    if denied is not None:
        raise denied
    assert user is not None
    return user


def require_site_admin(session: Session, login: str, action: str) -> User:
    user = get_actor(session, login)
    if not user.site_admin:
        raise PermissionDeniedError(
            f"{action} needs the site-admin role; user {login!r} does not have it",
            f"ask a site admin to do it, or to run `hpcgear user add {login} --site-admin`",
        )
    return user


def require_role(
    session: Session, login: str, container: Container, needed: RoleName, action: str
) -> User:
    user = get_actor(session, login)
    denied = role_denied(login, container, effective_role(session, user, container), needed, action)
    if denied is not None:
        raise denied
    return user
