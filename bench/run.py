"""hpcgear benchmarks: every target of issue 10, against its baseline, in one run.

    source /var/lib/hpcgear-dev/env.sh      # the dev cluster (bash dev/cluster.sh up)
    .venv/bin/pip install -e '.[bench]'    # comparators (submitit)
    .venv/bin/python bench/run.py [--quick] [--only NAME ...] [--no-cluster]

Scenarios (full size; ``--quick`` is a small smoke run whose "met" is not judged):

- submit: N=10,000 pending jobs of a trivial gear until all are queued in SLURM,
  vs a per-job ``sbatch`` loop, submitit ``map_array`` and bare ``sbatch --array``
  (the floor). Jobs are held (``--begin`` a day ahead) and cancelled afterwards,
  only the bench's own; the bench waits for SLURM to forget them between runs.
- poll: scheduler queries per controller cycle and the cycle's time and RSS with
  the N jobs queued; and with a handful of finished jobs.
- latency: an upload a rule matches -> sbatch; SLURM end -> ``complete``; the
  daemon runs with default settings.
- cli: ``--help``; ``jobs``, ``job show`` and ``whoami`` with 100,000 jobs on SQLite and
  PostgreSQL; ``upload`` of one small file; ``upload DIR`` files/s.
- ingest: ``hpcgear ingest dicom`` vs a bare ``pydicom.dcmread(stop_before_pixels=True)``
  loop, with ``--jobs 1`` and ``--jobs <cores>``.
- store: object-store put vs ``cp`` + ``sha256sum``.
- rules: 1,000 new files against 100,000 files x 50 rules (and 1/10 the base, to
  show the cost follows the new files only).

Prints a table and writes bench/results/latest.json: per scenario its figures
(median, min, max of the repetitions), the target, ``"met": true|false`` (null in
``--quick``) and, for a missed target, a profile naming where the time goes.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import local
from common import REPO

SCENARIOS = ("cli", "ingest", "store", "rules", "submit", "latency")
CLUSTER = {"submit", "latency"}


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {
            "reps": 3,
            "cli_reps": 3,
            "jobs_db": 2000,
            "upload_dir": 50,
            "dicoms": 100,
            "store_mb": 16,
            "rules_base": 2000,
            "rules_new": 100,
            "rules_n": 5,
            "submit": 50,
            "submit_reps": 1,
            "latency_reps": 1,
            "submit_timeout": 180,
        }
    return {
        "reps": 5,
        "cli_reps": 10,
        "jobs_db": 100_000,
        "upload_dir": 1000,
        "dicoms": 2000,
        "store_mb": 256,
        "rules_base": 100_000,
        "rules_new": 1000,
        "rules_n": 50,
        "submit": 10_000,
        "submit_reps": 3,
        "latency_reps": 3,
        "submit_timeout": 600,
    }


def run_scenarios(names: list[str], quick: bool, tmp: Path) -> dict[str, Any]:
    sz = sizes(quick)
    out: dict[str, Any] = {}
    pg = os.environ.get("HPCGEAR_PG_URL")

    def step(name: str, fn: Any) -> None:
        t0 = time.perf_counter()
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            out.update(fn())
        except Exception as exc:  # one broken scenario must not hide the others
            out[f"{name}.error"] = {
                "figures": {},
                "headline": f"{type(exc).__name__}: {exc}"[:300],
                "target": "runs",
                "met": False,
            }
        print(f"    {name}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    if "cli" in names:
        step("cli.help", lambda: {"cli.help": local.bench_help(tmp, sz["cli_reps"])})
        step(
            "cli.jobs",
            lambda: local.bench_jobs_listing(tmp / "jobs", sz["jobs_db"], sz["cli_reps"], pg),
        )
        step("cli.upload", lambda: local.bench_upload(tmp / "up", sz["cli_reps"], sz["upload_dir"]))
    if "ingest" in names:
        step("ingest", lambda: local.bench_ingest(tmp / "ingest", sz["dicoms"], sz["reps"] // 2))
    if "store" in names:
        step("store", lambda: local.bench_store(tmp / "store", sz["store_mb"], 3))
    if "rules" in names:
        step(
            "rules",
            lambda: local.bench_rules(
                tmp / "rules", sz["rules_base"], sz["rules_new"], sz["rules_n"]
            ),
        )
    if "submit" in names:
        import cluster

        step(
            "submit",
            lambda: cluster.bench_submission(
                tmp / "submit", sz["submit"], sz["submit_reps"], sz["submit_timeout"]
            ),
        )
    if "latency" in names:
        import cluster

        step("latency", lambda: cluster.bench_latency(tmp / "latency", sz["latency_reps"], 180))
    if quick:
        for entry in out.values():
            entry["met_at_full_size"] = entry.get("met")
            entry["met"] = None
    return out


def table(results: dict[str, Any]) -> str:
    rows = [("scenario", "result", "target", "met")]
    for name, r in results.items():
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        rows.append((name, r.get("headline", ""), r.get("target", ""), met))
    widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(
            f"| {r[0]:<{widths[0]}} | {r[1]:<{widths[1]}} | {r[2]:<{widths[2]}} | {r[3]} |"
        )
        if i == 0:
            lines.append(
                f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 2)}|-----|"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    ap.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    ap.add_argument("--no-cluster", action="store_true", help="skip the SLURM scenarios")
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "latest.json",
        help="where to write the results (default bench/results/latest.json)",
    )
    args = ap.parse_args()
    names = list(args.only or SCENARIOS)
    if args.no_cluster:
        names = [n for n in names if n not in CLUSTER]
    if any(n in CLUSTER for n in names) and not os.environ.get("HPCGEAR_DEV_ROOT"):
        print("error: the SLURM scenarios need the dev cluster", file=sys.stderr)
        print("hint: source /var/lib/hpcgear-dev/env.sh, or pass --no-cluster", file=sys.stderr)
        return 2
    # An installed package has its bytecode compiled (pip does it); an editable checkout
    # run with PYTHONDONTWRITEBYTECODE has none and would time compiling hpcgear on every
    # command. Compile it once, as an install would, so the figures are a deployment's.
    compileall.compile_dir(str(REPO / "hpcgear"), quiet=1)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="hpcgear-bench-") as d:
        results = run_scenarios(names, args.quick, Path(d))
    doc = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "scenarios": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(results))
    for name, r in results.items():
        if r.get("profile"):
            print(f"\n{name}: where the time goes (cProfile, cumulative)")
            for line in r["profile"][:12]:
                print(f"  {line}")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
