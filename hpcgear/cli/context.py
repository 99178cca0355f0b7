"""The CLI's injected context: settings, database, storage and output.

Heavy things (SQLAlchemy, the object store) are built lazily so that
``hpcgear --help`` and simple commands start fast on a login node.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from hpcgear.config.settings import Settings
    from hpcgear.db.session import Database
    from hpcgear.storage.objects import ObjectStore


def os_login() -> str:
    """The OS account of this process (real uid -> passwd), never ``$USER``."""
    from hpcgear.auth import identity

    return identity.os_login()


class AppContext:
    # A plain class, not a dataclass: importing dataclasses (and inspect) costs
    # every CLI call, `hpcgear --help` included, a noticeable part of its start-up.
    def __init__(
        self,
        config_path: str | None = None,
        as_user: str | None = None,
        traceback: bool = False,
        log_json: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        key_login: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.as_user = as_user
        self.traceback = traceback
        self.log_json = log_json
        self.stdout: TextIO = stdout if stdout is not None else sys.stdout
        self.stderr: TextIO = stderr if stderr is not None else sys.stderr
        self._settings: Settings | None = None
        self._db: Database | None = None
        self._store: ObjectStore | None = None
        self._actor_checked = False
        # Set by the HTTP API when it runs a command for a key's owner (hpcgear/api/cli.py):
        # the identity then comes from the key, not from the OS account of the server.
        self.key_login = key_login

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from hpcgear.config.settings import load_settings

            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def db(self) -> Database:
        if self._db is None:
            from hpcgear.db.session import Database

            self._db = Database.open(self.settings.database_url)
        return self._db

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            from hpcgear.storage.objects import ObjectStore

            self._store = ObjectStore(self.settings.storage_root)
        return self._store

    @property
    def actor(self) -> str:
        """The acting user: the key's owner (server side) or the OS login of this process,
        or ``--as USER`` when that user is a site admin."""
        login = self.key_login or os_login()
        if not self.as_user or self.as_user == login:
            return login
        if not self._actor_checked:
            from hpcgear.hierarchy.permissions import require_site_admin

            with self.db.session() as s:
                require_site_admin(s, login, f"acting as another user (--as {self.as_user})")
            self._actor_checked = True
        return self.as_user

    def require_site_admin(self, action: str) -> str:
        """The acting user, who must be a site admin for ``action``."""
        from hpcgear.hierarchy.permissions import require_site_admin

        actor = self.actor
        with self.db.session() as s:
            require_site_admin(s, actor, action)
        return actor

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()

    # ----------------------------------------------------------------- output
    def echo(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def note(self, text: str) -> None:
        print(text, file=self.stderr)

    def emit_json(self, data: Any) -> None:

        json.dump(data, self.stdout, indent=2, sort_keys=False, default=str)
        self.stdout.write("\n")

    def table(self, rows: list[list[str]], headers: list[str]) -> None:
        if not rows:
            return
        rows = [[safe_text(str(c)) for c in row] for row in rows]  # user text is data
        widths = [len(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = min(max(widths[i], len(cell)), 60)
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        self.echo(fmt.format(*headers).rstrip())
        for row in rows:
            cells = [c if len(c) <= 60 else c[:57] + "..." for c in row]
            self.echo(fmt.format(*cells).rstrip())


def safe_text(text: str) -> str:
    """Render user text for a terminal: the one place that makes it inert.

    Control characters (ESC sequences, newlines, tabs), format characters (bidi
    overrides, zero-width joiners), line/paragraph separators and unassigned or
    surrogate code points are shown as escapes (``\\x1b``, ``\\u202e``); ordinary
    text, including non-ASCII letters, is unchanged.
    """
    return "".join(
        ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in str(text)
    )


def safe_join(items: Any, sep: str = ", ") -> str:
    """``sep``-joined safe_text of each item (tags, info keys, site values)."""
    return sep.join(safe_text(str(i)) for i in items)


def parse_pairs(values: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    """Repeated ``NAME=VALUE`` options to a dict; one clear error for each mistake."""
    from hpcgear.errors import InvalidInputError

    out: dict[str, str] = {}
    for v in values:
        if "=" not in v:
            raise InvalidInputError(f"{what} {v!r} is not NAME=VALUE", f"write {what} NAME=VALUE")
        k, val = v.split("=", 1)
        if not k:
            raise InvalidInputError(f"{what} {v!r} has an empty name", f"write {what} NAME=VALUE")
        if k in out:
            raise InvalidInputError(f"{what} {k!r} given twice", "give each name once")
        out[k] = val
    return out


def site_registry(app: AppContext) -> Any:
    """The configured sites plus the embedded local one."""
    from hpcgear.jobs.sites import SiteRegistry

    reg = SiteRegistry.from_settings(app.settings)
    for line in reg.shared_tags_warnings():
        app.note(f"warning: {line}")
    return reg
