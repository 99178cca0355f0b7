"""The CLI's deferred standard modules (hpcgear/cli/startup.py): cheaper start-up,
same behaviour for code that does use them."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import REPO


def _probe(code: str) -> Any:
    """Run ``code`` after the CLI's stand-ins are installed; its printed JSON."""
    prelude = "import json, sys\nfrom hpcgear.cli.startup import defer_unused_imports\n" \
              "defer_unused_imports()\n"
    res = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                         text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _kind(name: str) -> str:
    return type(sys.modules[name]).__name__


def test_sqlalchemy_and_the_login_node_modules_import_without_them() -> None:
    got = _probe("""
import sqlalchemy, sqlalchemy.dialects.sqlite, sqlalchemy.dialects.postgresql.psycopg2
import hpcgear.jobs.queries, hpcgear.hierarchy.access, hpcgear.hierarchy.uploads
print(json.dumps({"kinds": [type(sys.modules[m]).__name__ for m in ("asyncio",
                  "importlib.metadata")],
                  "loaded": [m for m in ("email", "zipfile", "ssl", "asyncio.events")
                             if m in sys.modules]}))
""")
    assert got == {"kinds": ["_DeferredModule", "_DeferredModule"], "loaded": []}


def test_importlib_metadata_loads_on_first_use() -> None:
    got = _probe("""
import sqlalchemy
from sqlalchemy.util.compat import importlib_metadata      # the stand-in
version = importlib_metadata.version("sqlalchemy")         # first use: the real one loads
import importlib.metadata
print(json.dumps({"version": version == sqlalchemy.__version__,
                  "kind": type(sys.modules["importlib.metadata"]).__name__,
                  "same": importlib_metadata.entry_points is importlib.metadata.entry_points}))
""")
    assert got == {"version": True, "kind": "module", "same": True}


def test_asyncio_stand_in_answers_iscoroutine_and_loads_on_use() -> None:
    got = _probe("""
import sqlalchemy.util.concurrency as conc
async def f():
    return 42
c = f()
early = [conc.iscoroutine(c), conc.iscoroutine(1)]        # forwarded (loads asyncio)
c.close()
import asyncio
print(json.dumps({"early": early, "run": asyncio.run(f()),
                  "kind": type(sys.modules["asyncio"]).__name__}))
""")
    assert got == {"early": [True, False], "run": 42, "kind": "module"}


def test_submodule_import_first_loads_the_real_package() -> None:
    got = _probe("""
import asyncio.subprocess
from asyncio import events
import asyncio
print(json.dumps({"kind": type(sys.modules["asyncio"]).__name__,
                  "events": events is sys.modules["asyncio.events"],
                  "run": asyncio.run(asyncio.sleep(0, "ok"))}))
""")
    assert got == {"kind": "module", "events": True, "run": "ok"}


def test_defer_keeps_an_already_imported_module() -> None:
    import asyncio
    import importlib.metadata

    from hpcgear.cli.startup import defer_unused_imports

    defer_unused_imports()
    assert sys.modules["importlib.metadata"] is importlib.metadata
    assert sys.modules["asyncio"] is asyncio
    assert _kind("asyncio") == "module"


def test_a_standalone_call_exits_as_before_without_the_final_collection() -> None:
    """``main()`` freezes the heap before exiting (no full collection at shutdown):
    the exit status, flushed output and exit hooks are as they were. An in-process
    call (tests, embedding), which goes on living, freezes nothing."""
    code = """
import atexit, gc, sys
atexit.register(lambda: print("exit hook ran", gc.get_freeze_count() > 0))
from hpcgear.cli.main import main
main(["--help"], standalone=False)
print("in-process frozen", gc.get_freeze_count())
main(["--version"])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "hpcgear, version" in res.stdout and "in-process frozen 0" in res.stdout
    assert res.stdout.rstrip().endswith("exit hook ran True")
    bad = subprocess.run([sys.executable, "-c", code.replace("--version", "no-such-cmd")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "No such command" in bad.stderr


def test_a_command_process_collects_less_often_and_a_server_restores_the_default() -> None:
    """``main()`` raises the young-generation threshold of its own process (a
    command's imports and ingest objects are long-lived); an in-process call leaves
    the caller's collector alone, and ``restore_collection`` (``serve``) undoes it."""
    code = """
import gc, json, sys
default = gc.get_threshold()
from hpcgear.cli import startup
from hpcgear.cli.main import main
main(["--help"], standalone=False)
in_process = gc.get_threshold()
try:
    main(["--version"])
except SystemExit:
    pass
command = gc.get_threshold()
startup.restore_collection()
print(json.dumps({"default": default, "in_process": in_process, "command": command,
                  "restored": gc.get_threshold(), "raised": startup.COMMAND_GC_THRESHOLD}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])
    assert got["in_process"] == got["default"] == got["restored"]
    assert got["command"] == [got["raised"], *got["default"][1:]]
