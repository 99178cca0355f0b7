"""The CLI's deferred standard modules (hpcgear/cli/startup.py): cheaper start-up,
same behaviour for code that does use them."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

_PROBE = """
import json, sys
from hpcgear.cli.startup import defer_unused_imports
defer_unused_imports()
import sqlalchemy
from sqlalchemy.util.compat import importlib_metadata
before = {"stand_in": type(sys.modules["importlib.metadata"]).__name__,
          "email": "email" in sys.modules}
version = importlib_metadata.version("sqlalchemy")      # first use: the real module loads
import importlib.metadata
print(json.dumps({**before, "version": version == sqlalchemy.__version__,
                  "real_in_sys_modules": type(sys.modules["importlib.metadata"]).__name__,
                  "same_functions": importlib_metadata.version is importlib.metadata.version,
                  "entry_points": len(importlib_metadata.entry_points(group="console_scripts"))
                  >= 0}))
"""


def test_importlib_metadata_is_deferred_until_first_use() -> None:
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=True)  # fmt: skip
    got = json.loads(res.stdout)
    # SQLAlchemy imported without it (nor email, zipfile ... that it pulls in)
    assert got["stand_in"] == "_DeferredModule"
    assert got["email"] is False
    # and whoever uses it gets the real thing
    assert got["version"] is True
    assert got["real_in_sys_modules"] == "module"
    assert got["same_functions"] is True
    assert got["entry_points"] is True


def test_defer_keeps_an_already_imported_module() -> None:
    import importlib.metadata

    from hpcgear.cli.startup import defer_unused_imports

    defer_unused_imports()
    assert sys.modules["importlib.metadata"] is importlib.metadata
