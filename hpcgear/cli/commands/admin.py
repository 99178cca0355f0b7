"""Instance administration: init, db, users, roles, groups, projects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpcgear.cli.context import AppContext, os_login, safe_text
from hpcgear.cli.main import get_app

pass_app = click.make_pass_decorator(AppContext)


@click.command("init")
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    help="Database URL (default: SQLite under ~/.local/share/hpcgear).",
)
@click.option(
    "--storage",
    "storage",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Permanent storage root (default ~/.local/share/hpcgear/storage).",
)
@click.option(
    "--scratch",
    "scratch",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Scratch root for jobs run by the embedded local site.",
)
@pass_app
def init_cmd(app: AppContext, db_url: str | None, storage: str | None, scratch: str | None) -> None:
    """Create (or check) an instance: config file, database schema, storage.

    The user running it becomes the first site admin. Safe to run again: an
    existing instance is upgraded and left as it is.
    """
    from dataclasses import replace

    from hpcgear.config.settings import load_settings, write_settings
    from hpcgear.db.session import Database, create_db_engine, upgrade
    from hpcgear.hierarchy.service import add_user
    from hpcgear.storage.objects import ObjectStore

    settings = load_settings(app.config_path, allow_missing=True)
    if db_url:
        settings = replace(settings, database_url=db_url)
    if storage:
        settings = replace(settings, storage_root=Path(storage).expanduser().resolve())
        if not settings.exists:  # a new instance keeps its image cache beside its storage
            settings = replace(settings, image_cache=settings.storage_root.parent / "images")
    if scratch:
        settings = replace(settings, scratch_root=Path(scratch).expanduser().resolve())
    engine = create_db_engine(settings.database_url, create_dirs=True)
    before, after = upgrade(engine)  # checks the connection first: nothing written if it fails
    ObjectStore(settings.storage_root).ensure()
    settings.scratch_root.mkdir(parents=True, exist_ok=True)
    write_settings(settings)
    db = Database(engine)
    login = os_login()
    with db.session() as s:
        from sqlalchemy import func, select

        from hpcgear.db.models import User

        n_users = s.scalar(select(func.count()).select_from(User)) or 0
        if n_users == 0:
            add_user(s, None, login, site_admin=True)
            admin_note = f"site admin: {login}"
        else:
            admin_note = f"{n_users} user(s) already registered"
    engine.dispose()
    app.echo(f"config:   {settings.config_path}")
    app.echo(f"database: {_redact(settings.database_url)} (schema {before or 'new'} -> {after})")
    app.echo(f"storage:  {settings.storage_root}")
    app.echo(f"scratch:  {settings.scratch_root}")
    app.echo(admin_note)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.group("db")
def db_group() -> None:
    """Database schema migrations."""


@db_group.command("upgrade")
@pass_app
def db_upgrade(app: AppContext) -> None:
    """Apply pending migrations (safe to repeat; site admins only)."""
    from sqlalchemy import inspect

    from hpcgear.db.session import check_connection, create_db_engine, upgrade

    engine = create_db_engine(app.settings.database_url)
    check_connection(engine)
    if inspect(engine).has_table("users"):  # an empty database has no admins yet
        app.require_site_admin("upgrading the database schema")
    before, after = upgrade(engine)
    engine.dispose()
    if before == after:
        app.echo(f"database already at {after}")
    else:
        app.echo(f"database upgraded {before or 'empty'} -> {after}")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def db_status(app: AppContext, as_json: bool) -> None:
    """Show the database URL and its schema revision."""
    from hpcgear.db.session import (
        check_connection,
        create_db_engine,
        current_revision,
        head_revision,
    )

    engine = create_db_engine(app.settings.database_url)
    check_connection(engine)
    data = {
        "url": _redact(app.settings.database_url),
        "revision": current_revision(engine),
        "head": head_revision(),
    }
    engine.dispose()
    if as_json:
        app.emit_json(data)
    else:
        state = "up to date" if data["revision"] == data["head"] else "needs `hpcgear db upgrade`"
        app.echo(f"{data['url']}: revision {data['revision']} ({state})")


@click.group("user")
def user_group() -> None:
    """Users (keyed by login name)."""


@user_group.command("add")
@click.argument("name")
@click.option("--site-admin", is_flag=True, help="Make the user a site admin.")
@pass_app
def user_add(app: AppContext, name: str, site_admin: bool) -> None:
    """Register user NAME (site admins only)."""
    from hpcgear.hierarchy.service import add_user

    actor = app.actor
    with app.db.session() as s:
        add_user(s, actor, name, site_admin=site_admin)
    app.echo(f"added user {name}" + (" (site admin)" if site_admin else ""))


def _user_flag_command(name: str, doc: str, **flags: bool) -> None:
    @user_group.command(name, help=doc)
    @click.argument("login", metavar="NAME")
    @pass_app
    def cmd(app: AppContext, login: str) -> None:
        from hpcgear.hierarchy.users import set_user_flags

        actor = app.actor
        with app.db.session() as s:
            user = set_user_flags(s, actor, login, **flags)
            state = ("site admin" if user.site_admin else "user") + (
                ", disabled" if user.disabled else "")
        app.echo(f"{login} is now a {state}")


_user_flag_command("promote", "Make NAME a site admin (site admins only).", site_admin=True)
_user_flag_command("demote", "Take the site-admin role from NAME (not the last one).",
                   site_admin=False)
_user_flag_command("disable", "Refuse every action by NAME; their data and jobs stay.",
                   disabled=True)
_user_flag_command("enable", "Let a disabled user act again.", disabled=False)


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def user_list(app: AppContext, as_json: bool) -> None:
    """List users."""
    from hpcgear.cli.commands.jobs import zoned
    from hpcgear.hierarchy.service import list_users

    actor = app.actor
    with app.db.session() as s:
        rows: list[dict[str, Any]] = [
            {
                "login": u.login,
                "site_admin": u.site_admin,
                "disabled": u.disabled,
                "created": u.created.isoformat(),
            }
            for u in list_users(s, actor)
        ]
    if as_json:
        app.emit_json(rows)
        return
    app.table(
        [
            [r["login"], "yes" if r["site_admin"] else "", "yes" if r["disabled"] else "",
             zoned(r["created"])]
            for r in rows
        ],
        ["USER", "SITE-ADMIN", "DISABLED", "CREATED"],
    )


@click.group("role")
def role_group() -> None:
    """Roles on groups and projects: read-only, read-write, admin."""


@role_group.command("grant")
@click.argument("user")
@click.argument("path")
@click.argument("role", type=click.Choice(["read-only", "read-write", "admin"]))
@pass_app
def role_grant(app: AppContext, user: str, path: str, role: str) -> None:
    """Give USER the ROLE on PATH (a group or group/project)."""
    from hpcgear.hierarchy.service import grant_role

    actor = app.actor
    with app.db.session() as s:
        grant_role(s, actor, user, path, role)
    app.echo(f"{user} is {role} on {safe_text(path)}")


@role_group.command("revoke")
@click.argument("user")
@click.argument("path")
@pass_app
def role_revoke(app: AppContext, user: str, path: str) -> None:
    """Remove USER's role on PATH."""
    from hpcgear.hierarchy.service import revoke_role

    actor = app.actor
    with app.db.session() as s:
        removed = revoke_role(s, actor, user, path)
    app.echo(
        f"revoked {user} on {safe_text(path)}"
        if removed
        else f"{user} had no role on {safe_text(path)}"
    )


@role_group.command("list")
@click.argument("path", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def role_list(app: AppContext, path: str, as_json: bool) -> None:
    """Roles on PATH (group or group/project; admins), or your own roles."""
    from hpcgear.hierarchy.service import list_roles

    actor = app.actor
    with app.db.session() as s:
        rows = list_roles(s, actor, path)
    if as_json:
        app.emit_json(rows)
        return
    app.table(
        [[r["user"], r["role"], safe_text(r["path"]), r["granted_by"]] for r in rows],
        ["USER", "ROLE", "ON", "GRANTED-BY"],
    )


@click.group("group")
def group_group() -> None:
    """Groups: the top of the hierarchy."""


@group_group.command("create")
@click.argument("group_id", metavar="ID")
@click.option("--label", help="Human label (default: the id).")
@pass_app
def group_create(app: AppContext, group_id: str, label: str | None) -> None:
    """Create group ID (site admins only)."""
    from hpcgear.hierarchy.service import create_group

    actor = app.actor
    with app.db.session() as s:
        create_group(s, actor, group_id, label)
    app.echo(f"created group {group_id}")


@click.group("project")
def project_group() -> None:
    """Projects inside groups."""


@project_group.command("create")
@click.argument("path", metavar="GROUP/PROJECT")
@pass_app
def project_create(app: AppContext, path: str) -> None:
    """Create a project (group admins)."""
    from hpcgear.hierarchy.service import create_project

    actor = app.actor
    with app.db.session() as s:
        p = create_project(s, actor, path)
        pid = p.id
    app.echo(f"created project {safe_text(path)} ({pid})")


__all__ = [
    "db_group",
    "get_app",
    "group_group",
    "init_cmd",
    "project_group",
    "role_group",
    "user_group",
]


def _attach_key_group() -> None:
    from hpcgear.cli.commands.auth import key_group

    user_group.add_command(key_group)


_attach_key_group()
