"""Site admins promote, demote, disable and enable users.

A disabled user keeps their rows (jobs, roles, files) but every service call
refuses them (:func:`hpcgear.hierarchy.permissions.get_actor`), on the CLI and
the HTTP API alike. The last enabled site admin can be neither demoted nor
disabled, so an instance always has someone who can undo a change.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpcgear.db.models import User
from hpcgear.errors import InvalidInputError, NotFoundError
from hpcgear.hierarchy.permissions import require_site_admin

__all__ = ["set_user_flags"]


def set_user_flags(
    session: Session,
    actor: str,
    login: str,
    *,
    site_admin: bool | None = None,
    disabled: bool | None = None,
) -> User:
    """Change ``login``'s site-admin and disabled flags (site admins only)."""
    require_site_admin(session, actor, "changing a user")
    user = session.get(User, login)
    if user is None:
        raise NotFoundError(f"user {login!r} does not exist", "list users with `hpcgear user list`")
    losing_admin = user.site_admin and not user.disabled and (
        site_admin is False or disabled is True)
    if losing_admin:
        admins = session.scalar(
            select(func.count()).select_from(User).where(
                User.site_admin.is_(True), User.disabled.is_(False))
        )
        if (admins or 0) <= 1:
            raise InvalidInputError(
                f"{login!r} is the last enabled site admin",
                "promote another user first: `hpcgear user promote NAME`",
            )
    if site_admin is not None:
        user.site_admin = site_admin
    if disabled is not None:
        user.disabled = disabled
    session.flush()
    return user
