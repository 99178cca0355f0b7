"""Identity: ``whoami``, ``login KEY``/``logout`` and ``user key create|list|revoke``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from hpcgear.cli.context import AppContext, safe_text

pass_app = click.make_pass_decorator(AppContext)


@click.command("whoami")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def whoami_cmd(app: AppContext, as_json: bool) -> None:
    """Say who you are, how you are identified (API key or local account), and where.

    Without a key the identity is the OS account of this process (its uid), never
    $USER or $LOGNAME.
    """
    from hpcgear.cli.context import os_login

    if app.key_login is not None:  # run by the API for a key's owner
        data: dict[str, Any] = {
            "user": app.actor,
            "via": "key",
            "instance": app.settings.api_url or "the hpcgear API server",
        }
    else:
        login = os_login()
        data = {"user": app.actor, "via": "local", "os_account": login}
        from sqlalchemy.engine import make_url

        data["instance"] = make_url(app.settings.database_url).render_as_string(
            hide_password=True
        )
        # A Core query on the users table: whoami should not pay for importing the
        # ORM and building the models (hpcgear.db.models) just to read one row.
        from sqlalchemy import column, select, table

        users = table("users", column("login"), column("site_admin"))
        with app.db.engine.connect() as conn:
            row = conn.execute(
                select(users.c.site_admin).where(users.c.login == data["user"])
            ).first()
            data["registered"] = row is not None
            data["site_admin"] = bool(row and row[0])
    if as_json:
        app.emit_json(data)
        return
    how = "API key" if data["via"] == "key" else f"local OS account {data.get('os_account')}"
    app.echo(f"{data['user']} (via {how}) on {data['instance']}")


@click.command("login")
@click.argument("key")
@click.option("--no-check", is_flag=True, help="Write the key without asking the server.")
@pass_app
def login_cmd(app: AppContext, key: str, no_check: bool) -> None:
    """Store API KEY (host:port:secret) in your config file (mode 600).

    From then on every command goes through the HTTP API as the key's owner; the
    login node needs no database credentials.
    """
    from hpcgear.auth.keytext import parse_key
    from hpcgear.config.settings import resolve_config_path, write_setting

    parsed = parse_key(key)
    who = None
    if not no_check:
        from hpcgear.cli.client import ApiClient

        who = ApiClient(key).get_json("/api/users/self")
    path = resolve_config_path(app.config_path)
    write_setting(path, "api_key", key.strip())
    app.echo(
        f"logged in to {parsed.base_url}"
        + (f" as {who.get('_id')}" if isinstance(who, dict) else "")
        + f"; key stored in {path} (mode 600)"
    )


@click.command("logout")
@pass_app
def logout_cmd(app: AppContext) -> None:
    """Remove the API key from your config file (back to the embedded local mode)."""
    from hpcgear.config.settings import resolve_config_path, write_setting

    path = resolve_config_path(app.config_path)
    if path.exists():
        write_setting(path, "api_key", None)
    app.echo(f"no API key in {path}")


@click.group("key")
def key_group() -> None:
    """API keys: yours, or (site admins) anyone's."""


def _key_row(d: dict[str, Any]) -> list[str]:
    state = "revoked" if d["revoked"] else "active"
    return [
        d["id"],
        d["owner"],
        d["kind"],
        state,
        (d["created"] or "")[:19],
        (d["last_used"] or "-")[:19],
        (d["expires"] or "-")[:19],
        safe_text(d["label"] or ""),
    ]


@key_group.command("create")
@click.option("--user", "owner", metavar="USER", help="For another user (site admins).")
@click.option("--label", help="What the key is for.")
@click.option("--expires-days", type=click.IntRange(min=1), help="Expire after N days.")
@click.option(
    "--url",
    metavar="URL",
    help="The API server's address written into the key (default: api_url in the config).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def key_create(
    app: AppContext,
    owner: str | None,
    label: str | None,
    expires_days: int | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Make an API key; the key text is printed once (only its hash is stored)."""
    from hpcgear.auth.keys import create_key, key_to_dict
    from hpcgear.auth.keytext import format_key
    from hpcgear.errors import ConfigError

    api_url = url or app.settings.api_url
    if not api_url:
        raise ConfigError(
            "the API server's address is not known, so a key cannot name it",
            "pass --url http://HOST:PORT or set api_url in the config file",
        )
    format_key(api_url, "check")  # a bad URL fails before a key is stored
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=expires_days) if expires_days else None
    actor = app.actor
    with app.db.session() as s:
        row, secret = create_key(s, actor, owner, label=label, expires=expires)
        data = key_to_dict(row)
    data["key"] = format_key(api_url, secret)
    if as_json:
        app.emit_json(data)
        return
    app.echo(data["key"])
    app.note(
        f"API key {data['id']} for {data['owner']}: shown once, keep it secret; "
        "use it with `hpcgear login KEY` or flywheel.Client(KEY)"
    )


@key_group.command("list")
@click.option("--user", "owner", metavar="USER", help="Another user's keys (site admins).")
@click.option("--all", "everyone", is_flag=True, help="Every user's keys (site admins).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def key_list(app: AppContext, owner: str | None, everyone: bool, as_json: bool) -> None:
    """List API keys (never their secrets)."""
    from hpcgear.auth.keys import key_to_dict, list_keys

    actor = app.actor
    with app.db.session() as s:
        rows = [key_to_dict(r) for r in list_keys(s, actor, owner, everyone=everyone)]
    if as_json:
        app.emit_json(rows)
        return
    app.table(
        [_key_row(r) for r in rows],
        ["ID", "OWNER", "KIND", "STATE", "CREATED", "LAST-USED", "EXPIRES", "LABEL"],
    )


@key_group.command("revoke")
@click.argument("key_id", metavar="ID")
@pass_app
def key_revoke(app: AppContext, key_id: str) -> None:
    """Revoke key ID (yours; site admins: anyone's). It stops working at once."""
    from hpcgear.auth.keys import revoke_key

    actor = app.actor
    with app.db.session() as s:
        row = revoke_key(s, actor, key_id)
        owner = row.owner
    app.echo(f"revoked API key {key_id} of {owner}")
