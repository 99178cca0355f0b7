"""Shared fixtures and the test-tier rules.

Tiers: tests under tests/unit are marked ``unit``; tests needing real services
carry ``integration`` plus ``postgres``/``slurm``/``apptainer``/``ssh``. When
``HPCGEAR_REQUIRE_INTEGRATION=1`` (set by dev/test.sh, hence CI) a skipped
integration test is reported as a failure, so a tier can never be silently
skipped.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# A bare URL: psycopg2 when installed (what users are told to write), else psycopg 3.
PG_URL = os.environ.get("HPCGEAR_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_INTEGRATION = os.environ.get("HPCGEAR_REQUIRE_INTEGRATION") == "1"


def modules_loaded_by(probe: str, argv: Sequence[str]) -> list[str]:
    """Run ``probe`` (code that calls ``hpcgear.cli.main.main`` and prints
    ``{"code": ..., "loaded": [...]}`` as its last stderr line) with ``argv`` in a fresh
    interpreter; the modules it reports loaded. The command must succeed."""
    import json
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), res.stderr
    return list(report["loaded"])
SERVICE_MARKERS = ("postgres", "slurm", "apptainer", "ssh")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "unit" in path.parts and not any(item.get_closest_marker(m) for m in SERVICE_MARKERS):
            item.add_marker(pytest.mark.unit)
        if any(item.get_closest_marker(m) for m in SERVICE_MARKERS) or "integration" in path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        REQUIRE_INTEGRATION
        and report.skipped
        and item.get_closest_marker("integration") is not None
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"integration test skipped while HPCGEAR_REQUIRE_INTEGRATION=1: {reason}"


# ------------------------------------------------------------------ database


def _pg_create() -> tuple[str, str]:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    name = f"hpcgear_t_{secrets.token_hex(6)}"
    dsn = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    return url.set(database=name).render_as_string(hide_password=False), name


def _pg_drop(name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    dsn = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hpcgear.db'}"
        return
    url, name = _pg_create()
    try:
        yield url
    finally:
        _pg_drop(name)


@pytest.fixture
def db(db_url: str) -> Iterator[Any]:
    """A migrated Database on SQLite and PostgreSQL."""
    from hpcgear.db.session import Database, create_db_engine, upgrade

    engine = create_db_engine(db_url, create_dirs=True)
    upgrade(engine)
    database = Database(engine)
    yield database
    database.dispose()


# ----------------------------------------------------------------------- CLI


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        import json

        return json.loads(self.out)


@dataclass
class CliEnv:
    """An isolated instance driven through the real CLI entry point, in-process."""

    home: Path
    config: Path

    def run(self, *args: str) -> CliResult:
        from hpcgear.cli.main import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--config", str(self.config), *args], standalone=False)
        return CliResult(code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> CliResult:
        res = self.run(*args)
        assert res.code == 0, f"hpcgear {' '.join(args)} failed ({res.code}): {res.err}"
        return res


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> CliEnv:
    """A fresh, initialised instance (SQLite and PostgreSQL); the OS user is site admin."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("HPCGEAR_DATABASE_URL", raising=False)
    monkeypatch.delenv("HPCGEAR_STORAGE_ROOT", raising=False)
    env = CliEnv(home=tmp_path, config=tmp_path / "cfg" / "hpcgear" / "config.yaml")
    env.ok("init", "--db", db_url)
    return env
