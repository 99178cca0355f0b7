"""procs: worker processes forked from this one (ingest's header reads, the
controller's array preparation)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

logger = logging.getLogger(__name__)

#: ``prctl`` option: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


def process_pool(jobs: int, initializer: Callable[[], None] | None = None) -> ProcessPoolExecutor:
    """``jobs`` worker processes, forked where the platform can (they then start
    with what this process imported and cached, and all at the first submit).

    The workers ignore SIGINT: Ctrl-C reaches the whole process group, and this
    process, which owns the pool, stops it (work not started is cancelled);
    a worker interrupted on its own would only print a traceback. On Linux a
    worker is killed when this process dies (SIGKILL included), so none outlives
    it to finish work nobody will collect.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=ctx,
        initializer=functools.partial(_start_worker, initializer),
    )


def _start_worker(initializer: Callable[[], None] | None) -> None:
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            logger.debug("worker %s: cannot ask to die with its parent", __name__)
    if initializer is not None:
        initializer()
