"""Start-up cost of a CLI call: standard modules a dependency imports but rarely uses.

SQLAlchemy imports ``importlib.metadata`` when it is imported (``sqlalchemy.util.compat``),
and uses it only to look up third-party dialect plugins by entry point, which the
built-in SQLite and PostgreSQL dialects never need. Importing it pulls in ``email``,
``zipfile``, ``csv``, ``tempfile``, ``bz2``/``lzma`` and more: about 30 ms of CPU of
every CLI call on a login node (``python -X importtime -m hpcgear jobs`` shows it), a
tenth of what ``hpcgear jobs`` costs. :func:`defer_unused_imports` puts a stand-in in
``sys.modules`` that imports the real module the first time anything reads one of its
attributes, so nothing changes for code that does use it; only the CLI process
(:func:`hpcgear.cli.main.main`) installs it, the library never does.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

__all__ = ["DEFERRED", "defer_unused_imports"]

#: Modules replaced by a stand-in until first used (each must be one that no module
#: hpcgear's login-node commands import reads an attribute of at import time, or the
#: stand-in only costs a step: the test checks both).
DEFERRED = ("importlib.metadata",)

_lock = threading.Lock()


class _DeferredModule(types.ModuleType):
    """Stands in ``sys.modules`` for a module until one of its attributes is read.

    On that first read the real module is imported, replaces the stand-in in
    ``sys.modules`` and its namespace is copied into the stand-in, so a module that
    bound the stand-in (``from importlib import metadata``) sees every function and
    class of the real one from then on.
    """

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        with _lock:
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def defer_unused_imports() -> None:
    """Install the stand-ins of :data:`DEFERRED` (those not imported yet)."""
    for name in DEFERRED:
        if name not in sys.modules:
            sys.modules[name] = _DeferredModule(name)
