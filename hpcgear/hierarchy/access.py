"""Who may see or change what, in SQLAlchemy Core: the checks of the login-node paths.

``hpcgear jobs``, ``hpcgear job show`` and ``hpcgear upload`` run on a login node,
where importing the ORM and building the models is a large part of a call's
start-up (:mod:`hpcgear.jobs.queries`, :mod:`hpcgear.hierarchy.uploads`). These
functions answer the same questions as :mod:`hpcgear.hierarchy.permissions`
(same rules, same errors) on a Core ``Connection`` and return ``Row`` objects,
which have the attributes of the models they stand for (``user.site_admin``,
``container.group_id``). ``tests/unit/test_login_node_reads.py`` checks that
both give the same answers.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from hpcgear.db.tables import containers, roles, users
from hpcgear.errors import InvalidInputError, NotFoundError, PermissionDeniedError

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Connection, Row
    from sqlalchemy.orm import Session
    from sqlalchemy.sql import Select

    #: What these checks read through: a Core connection (the login-node paths) or an
    #: ORM session (the services; a Session runs Core selects too and gives the same
    #: rows), so each check is written once.
    Reader: TypeAlias = Connection | Session

__all__ = [
    "RoleName",
    "effective_role",
    "get_actor",
    "get_container",
    "not_registered",
    "require_role",
    "resolve_project",
    "role_denied",
    "visible_scopes",
]


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


def not_registered(login: str, user: Any) -> PermissionDeniedError | None:
    """The error for an actor who is unknown (``user`` None) or disabled, else None."""
    if user is None:
        return PermissionDeniedError(
            f"user {login!r} is not registered in this hpcgear instance",
            f"ask a site admin to run `hpcgear user add {login}`",
        )
    if user.disabled:
        return PermissionDeniedError(
            f"user {login!r} is disabled in this hpcgear instance",
            f"ask a site admin to run `hpcgear user enable {login}`",
        )
    return None


def role_denied(
    login: str, container: Any, have: RoleName | None, needed: RoleName, action: str
) -> PermissionDeniedError | None:
    """The error when ``have`` is weaker than ``needed`` on ``container``, else None."""
    if have is not None and have.rank >= needed.rank:
        return None
    where = f"{container.type} {container.label!r}"
    held = have.value if have else "no role"
    return PermissionDeniedError(
        f"{action} on {where} needs the {needed.value} role; {login!r} has {held}",
        "ask an admin of the project or group to run "
        f"`hpcgear role grant {login} <group/project> {needed.value}`",
    )


def get_actor(conn: Reader, login: str) -> Row[Any]:
    """The ``users`` row of an enabled, registered actor."""
    user = conn.execute(select(users).where(users.c.login == login)).first()
    denied = not_registered(login, user)
    if denied is not None:
        raise denied
    assert user is not None
    return user


def effective_role(conn: Reader, user: Any, container: Any) -> RoleName | None:
    """The strongest role ``user`` holds on the container's group or project.

    ``user`` and ``container`` are rows or models (``site_admin``, ``login``,
    ``group_id``, ``project_id``); :mod:`hpcgear.hierarchy.permissions` calls this
    with its session and models.
    """
    if user.site_admin:
        return RoleName.ADMIN
    scope = [container.group_id]
    if container.project_id:
        scope.append(container.project_id)
    rows = conn.scalars(
        select(roles.c.role).where(roles.c.user_login == user.login,
                                   roles.c.container_id.in_(scope))
    ).all()
    found = [RoleName(r) for r in rows]
    return max(found, key=lambda r: r.rank) if found else None


def require_role(
    conn: Reader, login: str, container: Any, needed: RoleName, action: str
) -> Row[Any]:
    """The actor's ``users`` row; PermissionDeniedError unless they hold ``needed``."""
    user = get_actor(conn, login)
    denied = role_denied(login, container, effective_role(conn, user, container), needed, action)
    if denied is not None:
        raise denied
    return user


def get_container(conn: Reader, container_id: str) -> Row[Any] | None:
    return conn.execute(select(containers).where(containers.c.id == container_id)).first()


def resolve_project(conn: Reader, path: str) -> Row[Any]:
    """The project at ``group/project`` (what ``resolve_container(..., min_depth=2,
    max_depth=2)`` finds), with the same errors."""
    from hpcgear.hierarchy.paths import HierarchyPath

    hp = HierarchyPath.parse(path, min_depth=2, max_depth=2)
    group = get_container(conn, hp.parts[0])
    if group is None or group.type != "group":
        raise NotFoundError(
            f"group {hp.parts[0]!r} does not exist",
            "list groups with `hpcgear ls`; a site admin creates them with `hpcgear group create`",
        )
    c = containers.c
    project = conn.execute(
        select(containers).where(
            c.parent_id == group.id, c.label_key == hp.parts[1], c.type != "analysis"
        )
    ).first()
    if project is None:
        raise NotFoundError(
            f"project {hp.parts[1]!r} does not exist in {hp.parts[0]}",
            f"list what exists with `hpcgear ls {hp.parts[0]}`",
        )
    return project


def visible_scopes(actor: str) -> tuple[Select[Any], Select[Any]]:
    """(containers ``actor`` holds a role on, projects of the groups among them):
    the subqueries of "what may ``actor`` see" (a group role covers its projects)."""
    scopes = select(roles.c.container_id).where(roles.c.user_login == actor)
    projects_of_groups = select(containers.c.id).where(
        containers.c.type == "project", containers.c.group_id.in_(scopes)
    )
    return scopes, projects_of_groups
