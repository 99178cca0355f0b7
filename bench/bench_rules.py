"""Gear rule evaluation: throughput of a full pass, and cost of an incremental one.

    .venv/bin/python bench/bench_rules.py [--files 100000] [--db URL] [--json]

Bulk-loads N files (file, version and change_log rows, as uploads write them)
into a fresh database (SQLite by default; ``--db postgresql+psycopg://...``
for an existing empty PostgreSQL database), then times:

- full: the first ``rules evaluate`` over all N changes (two rules enabled),
  against the floor of reading the same columns with one plain SELECT and
  touching each row in Python (ratio = full / floor);
- incremental: evaluating 10 new uploads afterwards, which should cost the
  same whether N is 1k or 1M (reported with the statements it issued).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--db", help="SQLAlchemy URL of an EMPTY database (default: temp SQLite)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from sqlalchemy import event, text

    from hpcgear.db.session import Database, create_db_engine, upgrade
    from tests.unit.rules_support import make_world
    from tests.unit.test_rules_scale import RULES, bulk_files

    tmp = Path(tempfile.mkdtemp(prefix="hpcgear-bench-rules-"))
    url = args.db or f"sqlite:///{tmp / 'bench.db'}"
    engine = create_db_engine(url, create_dirs=True)
    upgrade(engine)
    db = Database(engine)
    w = make_world(db, tmp)
    w.apply(RULES)
    t0 = time.perf_counter()
    bulk_files(w, args.files)
    insert_s = time.perf_counter() - t0
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # what autovacuum does after a bulk load
            conn.execute(text("ANALYZE"))

    t0 = time.perf_counter()
    with engine.connect() as conn:
        n = 0
        for row in conn.execute(
            text(
                "SELECT f.id, f.type, f.tags, v.version, v.origin_type FROM files f "
                "JOIN file_versions v ON v.file_id = f.id AND v.version = f.current_version"
            )
        ):
            n += row[1] == "dicom"
    floor_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    full = w.evaluate()
    full_s = time.perf_counter() - t0

    for i in range(10):
        w.upload(f"lab/p1/new/ses{i % 2}/acq", f"new{i}.dicom.zip", f"new {i}")
    statements: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    t0 = time.perf_counter()
    inc = w.evaluate()
    inc_s = time.perf_counter() - t0
    event.remove(engine, "before_cursor_execute", count)
    db.dispose()

    result = {
        "database": engine.dialect.name,
        "files": args.files,
        "bulk_insert_s": round(insert_s, 3),
        "full_s": round(full_s, 3),
        "full_files_per_s": round(full.files_evaluated / full_s) if full_s else None,
        "floor_s": round(floor_s, 3),
        "full_vs_floor": round(full_s / floor_s, 1) if floor_s else None,
        "incremental_s": round(inc_s, 4),
        "incremental_changes_read": inc.changes_read,
        "incremental_jobs": inc.jobs_created,
        "incremental_statements": len(statements),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:26} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
