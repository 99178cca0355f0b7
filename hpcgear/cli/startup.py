"""Start-up cost of a CLI call: standard modules a dependency imports but rarely uses.

SQLAlchemy imports two heavy standard packages when it is imported, and a
login-node command (``jobs``, ``job show``, ``whoami``, ``upload``) uses neither:

* ``importlib.metadata`` (``sqlalchemy.util.compat``), used only to look up
  third-party dialect plugins by entry point; it pulls in ``email``, ``zipfile``,
  ``csv``, ``tempfile``, ``bz2``/``lzma`` ... (about 30 ms of CPU per call here);
* ``asyncio`` (``sqlalchemy.util.compat`` and ``.concurrency``), used only by the
  asyncio extension and async drivers; it pulls in ``ssl``, ``socket``,
  ``subprocess``, ``concurrent.futures`` ... (about 20 ms). SQLAlchemy reads one
  attribute of it at import time, ``asyncio.iscoroutine``; the stand-in answers that
  one with a function that forwards to the real one.

:func:`defer_unused_imports` puts a stand-in for each in ``sys.modules`` that imports
the real module the first time anything reads another of its attributes (or imports
one of its submodules), so code that does use them sees no difference
(``hpcgear serve`` loads asyncio as usual). Only the CLI process
(:func:`hpcgear.cli.main.main`) installs them; the library never does.
``tests/unit/test_cli_startup.py`` checks both that the stand-ins behave like the real
modules and that ``hpcgear jobs`` leaves them unloaded (a SQLAlchemy release that
starts using one at import time shows up there, not as a silent slowdown).
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = [
    "COMMAND_GC_THRESHOLD",
    "DEFERRED",
    "collect_less_often",
    "defer_unused_imports",
    "restore_collection",
]

_lock = threading.RLock()


class _DeferredModule(types.ModuleType):
    """Stands in ``sys.modules`` for a module until one of its attributes is read.

    On that first read the real module is imported (it replaces the stand-in in
    ``sys.modules``) and its namespace is copied into the stand-in, so a module that
    bound the stand-in (``import asyncio``) sees the real functions and classes from
    then on.
    """

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def _load(self) -> types.ModuleType:
        name = self.__name__
        with _lock:
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            self.__dict__.update(real.__dict__)
        return real


def _forwarding(stand_in: _DeferredModule, attr: str) -> Callable[..., Any]:
    """A function that calls the real module's ``attr`` (loading it first)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return getattr(stand_in._load(), attr)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = attr
    return forward


#: Module -> the attributes its stand-in answers without loading it (functions only,
#: each forwarding to the real one).
DEFERRED: dict[str, tuple[str, ...]] = {
    "importlib.metadata": (),
    "asyncio": ("iscoroutine",),
}


def defer_unused_imports() -> None:
    """Install the stand-ins of :data:`DEFERRED` (for modules not imported yet)."""
    for name, early in DEFERRED.items():
        if name in sys.modules:
            continue
        stand_in = _DeferredModule(name)
        for attr in early:
            setattr(stand_in, attr, _forwarding(stand_in, attr))
        sys.modules[name] = stand_in


#: Allocations between two young-generation collections in a CLI command (CPython's
#: default is 700).
COMMAND_GC_THRESHOLD = 100_000

_default_threshold: tuple[int, int, int] | None = None


def collect_less_often() -> None:
    """Run the cyclic garbage collector less often in this short-lived CLI process.

    A command builds a large, long-lived heap at start-up (SQLAlchemy's modules,
    the models and their mappers, click) and then, for an ingest, thousands of
    long-lived objects (one per DICOM file and its header values). With CPython's
    default thresholds the collector ran about 180 times during ``hpcgear ingest
    dicom`` of 2,000 files, once over the whole heap in the middle of the imports:
    about 40 ms of a 0.85 s command, for almost no garbage (the objects are alive).
    It still runs, every :data:`COMMAND_GC_THRESHOLD` allocations; cycles are
    still freed, only later (mypy tunes its process the same way). Only
    :func:`hpcgear.cli.main.main` calls this, for its own process; a command
    that runs for long (``serve``) calls :func:`restore_collection`, and the
    controller daemon sets its own thresholds.
    """
    import gc

    global _default_threshold
    if _default_threshold is None:
        _default_threshold = gc.get_threshold()
    _young, older, oldest = _default_threshold
    gc.set_threshold(COMMAND_GC_THRESHOLD, older, oldest)


def restore_collection() -> None:
    """Undo :func:`collect_less_often` (for a long-running command)."""
    import gc

    if _default_threshold is not None:
        gc.set_threshold(*_default_threshold)
