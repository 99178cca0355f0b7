"""Former home of every controller step; kept so older imports keep working.

Each step now lives in its own module (see :mod:`hpcgear.controller.context`).
Import from those; this module only re-exports the names it used to define.
"""

from __future__ import annotations

from .cancel import cancel_requested
from .claim import claim_jobs
from .context import ControllerContext, CycleReport, utcnow
from .cycle import run_cycle
from .facts import ours, slurm_name
from .finish import stage_out_jobs
from .poll import LOST_GRACE, classify_end, poll_jobs
from .resolve import attempt_paths, config_json_for, resolve_spec
from .retry import schedule_retries
from .submit import submit_job

__all__ = [
    "LOST_GRACE",
    "ControllerContext",
    "CycleReport",
    "attempt_paths",
    "cancel_requested",
    "claim_jobs",
    "classify_end",
    "config_json_for",
    "ours",
    "poll_jobs",
    "resolve_spec",
    "run_cycle",
    "schedule_retries",
    "slurm_name",
    "stage_out_jobs",
    "submit_job",
    "utcnow",
]
