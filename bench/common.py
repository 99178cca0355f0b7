"""Shared pieces of the benchmarks: timing, statistics, instances, profiles."""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HG = str(BIN / "hpcgear")


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max) of timing samples, in the samples' unit."""
    xs = sorted(samples)
    return {
        "median": round(statistics.median(xs), 4),
        "min": round(xs[0], 4),
        "max": round(xs[-1], 4),
        "n": len(xs),
    }


def timed(
    fn: Callable[[], object], repeat: int, warmup: int = 1, cpu: list[float] | None = None
) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``fn`` (after ``warmup``).

    With ``cpu`` (a list), also appends the CPU seconds (user + system) the
    subprocesses ``fn`` waited for used in each call: on a shared, loaded machine
    that is the steadier figure, and the gap to wall time is time spent waiting.
    """
    import resource

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cpu is not None:
            cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return samples


def run(argv: Sequence[str], env: dict[str, str] | None = None, **kw: Any) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, env=env, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def profile_call(fn: Callable[[], object], top: int = 15) -> list[str]:
    """Run ``fn`` under cProfile; the ``top`` entries by cumulative time, one line each."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    return profile_lines(pstats.Stats(prof), top)


def profile_lines(stats: pstats.Stats, top: int = 15) -> list[str]:
    entries = []
    for (filename, lineno, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{filename}:{lineno}({func})"
        # hide the harness and the interpreter's import machinery
        if (
            "<frozen" in filename
            or "/bench/" in filename
            or filename == "~"
            or "/click/" in filename
            or filename.endswith(("bin/hpcgear", "cli/main.py"))
        ):
            continue
        entries.append((ct, nc, where))
    entries.sort(reverse=True)
    return [f"{ct:8.3f}s cum {nc:>9} calls  {_short(w)}" for ct, nc, w in entries[:top]]


def profile_file(path: Path, top: int = 15) -> list[str]:
    return profile_lines(pstats.Stats(str(path)), top)


def _short(where: str) -> str:
    for marker in ("site-packages/", "/hpcgear/", "/lib/python3"):
        if marker in where:
            _, _, tail = where.partition(marker)
            return (marker.strip("/") + "/" if marker == "/hpcgear/" else "") + tail
    return where


def importtime_top(
    argv: Sequence[str], env: dict[str, str] | None = None, top: int = 12
) -> list[str]:
    """``python -X importtime``: the modules with the largest cumulative import time."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env
    )
    rows = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.replace("import time:", "").split("|")
        rows.append((int(cum_us), int(self_us), name.strip()))
    rows.sort(reverse=True)
    return [
        f"{cum / 1000:7.1f}ms cum {self_ / 1000:6.1f}ms self  {name}"
        for cum, self_, name in rows[:top]
    ]


@dataclass
class Instance:
    """An hpcgear instance in a temp dir, driven through the real ``hpcgear`` command."""

    root: Path
    db_url: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, root: Path, db_url: str | None = None, *, sites: Sequence[Path] = ()
    ) -> Instance:
        root.mkdir(parents=True, exist_ok=True)
        url = db_url or f"sqlite:///{root / 'hpcgear.db'}"
        env = {
            **os.environ,
            "HPCGEAR_CONFIG": str(root / "config.yaml"),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_CONFIG_HOME": str(root / "cfg"),
        }
        inst = cls(root, url, env)
        inst.hg(
            "init",
            "--db",
            url,
            "--storage",
            str(root / "storage"),
            "--scratch",
            str(root / "scratch"),
        )
        if sites:
            with (root / "config.yaml").open("a") as fh:
                fh.write(f"sites: [{', '.join(str(s) for s in sites)}]\n")
        inst.hg("group", "create", "bench")
        inst.hg("project", "create", "bench/p")
        return inst

    def hg(self, *args: str) -> str:
        return run([HG, *args], env=self.env)

    def argv(self, *args: str) -> list[str]:
        return [HG, *args]

    def database(self) -> Any:
        from hpcgear.db.session import Database

        return Database.open(self.db_url)


def pg_database(base_url: str, name: str) -> str:
    """Create (fresh) database ``name`` on the server of ``base_url``; return its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    dsn = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def pg_drop(base_url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    dsn = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def insert_rows(conn: Any, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """Driver-level executemany: the fastest way to put many rows in, on either database."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    for start in range(0, len(rows), 20_000):
        conn.exec_driver_sql(sql, rows[start : start + 20_000])


def stored(conn: Any, model: Any, column: str, value: Any) -> Any:
    """``value`` as SQLAlchemy would store it in ``model.column`` (JSON text, timestamps)."""
    dialect = conn.dialect
    col = model.__table__.c[column]
    process = col.type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process else value
