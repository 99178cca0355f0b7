"""``hpcgear usage`` over many ended jobs: one GROUP BY over indexed columns.

    .venv/bin/python bench/bench_usage.py [--jobs 100000] [--db URL] [--json]

Bulk-loads N ended jobs (usage columns filled, as the controller leaves them)
across 20 projects, 30 users and 5 gears into a fresh database (SQLite by
default), then times ``usage_report`` for every ``--by`` key, whole-site and
for one project, against the floor of one plain ``SELECT count(*)`` over the
same rows. The target is under a second for 100,000 jobs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load(db: Any, n: int) -> None:
    from sqlalchemy import insert

    from hpcgear.db.models import Container, Gear, Job, User

    rnd = random.Random(7)
    now = dt.datetime.now(dt.UTC)
    with db.session() as s:
        s.add(User(login="admin", site_admin=True))
        s.add(Container(id="g", type="group", label="g", label_key="g", group_id="g"))
        for p in range(20):
            s.add(Container(id=f"p{p}", type="project", label=f"p{p}", label_key=f"p{p}",
                            parent_id="g", group_id="g", project_id=f"p{p}"))
        for g in range(5):
            s.add(Gear(id=g + 1, name=f"gear{g}", version="1", manifest={},
                       manifest_sha256="x", installed_by="admin"))
    rows = []
    states = ["complete"] * 8 + ["failed", "cancelled"]
    for i in range(n):
        finished = now - dt.timedelta(minutes=rnd.randrange(0, 525_600))
        wall = rnd.randrange(60, 36_000)
        rows.append({
            "id": f"{i:024x}", "gear_id": rnd.randrange(1, 6), "state": rnd.choice(states),
            "site": "hpc", "destination_type": "session", "destination_id": "x",
            "project_id": f"p{rnd.randrange(20)}", "origin_type": "user",
            "origin_id": f"user{rnd.randrange(30)}", "created": finished, "modified": finished,
            "finished": finished, "wall_seconds": wall, "wait_seconds": rnd.randrange(0, 7200),
            "core_hours": wall * 4 / 3600, "gpu_hours": 0.0, "config": {}, "inputs": [],
            "resources": {}, "tags": [], "scheduler_info": {}, "attempt": 1, "state_seq": 3,
            "priority": "medium",
        })
    with db.session() as s:
        for k in range(0, n, 10_000):
            s.execute(insert(Job), rows[k: k + 10_000])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--db", help="SQLAlchemy URL of an EMPTY database (default: temp SQLite)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from sqlalchemy import text

    from hpcgear.db.session import Database, create_db_engine, upgrade
    from hpcgear.jobs.usage import BY_KEYS, usage_report

    tmp = Path(tempfile.mkdtemp(prefix="hpcgear-bench-usage-"))
    url = args.db or f"sqlite:///{tmp / 'bench.db'}"
    engine = create_db_engine(url, create_dirs=True)
    upgrade(engine)
    db = Database(engine)
    t0 = time.perf_counter()
    load(db, args.jobs)
    results: dict[str, Any] = {"jobs": args.jobs, "load_seconds": time.perf_counter() - t0}
    with db.session() as s:
        t0 = time.perf_counter()
        s.execute(text("SELECT count(*) FROM jobs")).scalar()
        results["floor_count_seconds"] = time.perf_counter() - t0
        for by in BY_KEYS:
            t0 = time.perf_counter()
            rep = usage_report(s, "admin", by=by)
            results[f"by_{by}_seconds"] = time.perf_counter() - t0
            assert rep.total["jobs"] == args.jobs
        t0 = time.perf_counter()
        usage_report(s, "admin", project="g/p3", by="month")
        results["one_project_by_month_seconds"] = time.perf_counter() - t0
    worst = max(v for k, v in results.items() if k.startswith("by_"))
    results["worst_seconds"] = worst
    results["under_one_second"] = worst < 1.0
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for k, v in results.items():
            print(f"{k:34} {v:.3f}" if isinstance(v, float) else f"{k:34} {v}")
    db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
