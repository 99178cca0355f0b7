"""hpcgear benchmarks: ratios against baselines measured in the same run.

    .venv/bin/python bench/run.py [--quick] [--json]

Each benchmark times hpcgear and a baseline doing the same work on this
machine, now, and reports the ratio (hpcgear / baseline). Absolute seconds
depend on the machine; the ratios are what to compare between commits.

- cli-startup: ``hpcgear --help`` vs ``python -c pass`` (the interpreter floor).
  A login-node command should stay well under 200 ms.
- store-put: storing a 256 MiB file in the object store (hash, fsync, verify,
  rename) vs ``cp`` + ``sha256sum`` of the same file (the physical floor: one
  read + one write + one hash).
- upload-many: ``hpcgear upload`` of 500 small files vs ``cp`` of the same
  files (per-file database and fsync overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timeit(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def run(argv: list[str], **kw: object) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def bench_cli_startup(repeat: int) -> dict[str, float]:
    hg = str(BIN / "hpcgear")
    ours = timeit(lambda: run([hg, "--help"]), repeat)
    base = timeit(lambda: run([sys.executable, "-c", "pass"]), repeat)
    return {"hpcgear_s": ours, "baseline_s": base, "ratio": ours / base}


def bench_store_put(tmp: Path, size_mb: int, repeat: int) -> dict[str, float]:
    from hpcgear.storage.objects import ObjectStore

    src = tmp / "big.bin"
    with src.open("wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(1024 * 1024))

    def ours() -> None:
        root = tmp / "store"
        shutil.rmtree(root, ignore_errors=True)
        ObjectStore(root).put_file(src)

    def base() -> None:
        dst = tmp / "copy.bin"
        dst.unlink(missing_ok=True)
        run(["cp", str(src), str(dst)])
        run(["sha256sum", str(dst)])

    o, b = timeit(ours, repeat), timeit(base, repeat)
    return {"hpcgear_s": o, "baseline_s": b, "ratio": o / b, "mb": size_mb,
            "hpcgear_mb_s": size_mb / o}


def bench_upload_many(tmp: Path, n: int) -> dict[str, float]:
    files = tmp / "many"
    files.mkdir()
    for i in range(n):
        (files / f"f{i:05d}.txt").write_text(f"file {i}\n" * 20)
    env = {**os.environ, "HPCGEAR_CONFIG": str(tmp / "cfg.yaml")}
    hg = str(BIN / "hpcgear")
    run([hg, "init", "--db", f"sqlite:///{tmp / 'db.sqlite'}", "--storage", str(tmp / "st"),
         "--scratch", str(tmp / "scr")], env=env)
    run([hg, "group", "create", "bench"], env=env)
    run([hg, "project", "create", "bench/p"], env=env)
    names = sorted(str(p) for p in files.iterdir())
    t0 = time.perf_counter()
    run([hg, "upload", "bench/p/s/ses/acq", *names], env=env)
    ours = time.perf_counter() - t0
    out = tmp / "cpdest"
    out.mkdir()
    t0 = time.perf_counter()
    run(["cp", *names, str(out)])
    base = time.perf_counter() - t0
    return {"hpcgear_s": ours, "baseline_s": base, "ratio": ours / base, "files": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args()
    repeat = 3 if args.quick else 7
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="hpcgear-bench-") as d:
        tmp = Path(d)
        results["cli-startup"] = bench_cli_startup(repeat)
        results["store-put"] = bench_store_put(tmp, 32 if args.quick else 256, 3)
        results["upload-many"] = bench_upload_many(tmp, 100 if args.quick else 500)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'benchmark':14} {'hpcgear':>10} {'baseline':>10} {'ratio':>7}")
    for name, r in results.items():
        print(f"{name:14} {r['hpcgear_s']*1000:9.1f}ms {r['baseline_s']*1000:9.1f}ms "
              f"{r['ratio']:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
