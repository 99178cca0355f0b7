"""The CLI's injected context: settings, database, storage and output.

Heavy things (SQLAlchemy, the object store) are built lazily so that
``hpcgear --help`` and simple commands start fast on a login node.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from hpcgear.config.settings import Settings
    from hpcgear.db.session import Database
    from hpcgear.storage.objects import ObjectStore


def os_login() -> str:
    import getpass

    return getpass.getuser()


class AppContext:
    # A plain class, not a dataclass: importing dataclasses (and inspect) costs
    # every CLI call, `hpcgear --help` included, a noticeable part of its start-up.
    def __init__(
        self,
        config_path: str | None = None,
        as_user: str | None = None,
        traceback: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.config_path = config_path
        self.as_user = as_user
        self.traceback = traceback
        self.stdout: TextIO = stdout if stdout is not None else sys.stdout
        self.stderr: TextIO = stderr if stderr is not None else sys.stderr
        self._settings: Settings | None = None
        self._db: Database | None = None
        self._store: ObjectStore | None = None
        self._actor_checked = False

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
        """The acting user: the OS login, or ``--as USER`` when a site admin asks."""
        login = os_login()
        if not self.as_user or self.as_user == login:
            return login
        if not self._actor_checked:
            from hpcgear.hierarchy.permissions import require_site_admin

            with self.db.session() as s:
                require_site_admin(s, login, f"acting as another user (--as {self.as_user})")
            self._actor_checked = True
        return self.as_user

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()

    # ----------------------------------------------------------------- output
    def echo(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def note(self, text: str) -> None:
        print(text, file=self.stderr)

    def emit_json(self, data: Any) -> None:
        import json

        json.dump(data, self.stdout, indent=2, sort_keys=False, default=str)
        self.stdout.write("\n")

    def table(self, rows: list[list[str]], headers: list[str]) -> None:
        if not rows:
            return
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
    """Render user text for a terminal: control characters escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


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

    return SiteRegistry.from_settings(app.settings)
