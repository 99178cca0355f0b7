"""Job states, failure kinds and the allowed-transition table.

hpcgear's own state is kept apart from SLURM's (``SchedulerState``): a SLURM
``COMPLETED`` moves a job to ``staging``, never straight to ``complete``.
"""

from __future__ import annotations

import enum

from hpcgear.errors import StateTransitionError


class JobState(enum.StrEnum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    QUEUED = "queued"
    RUNNING = "running"
    STAGING = "staging"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED})


class FailureKind(enum.StrEnum):
    GEAR_ERROR = "gear_error"
    OOM = "oom"
    TIMEOUT = "timeout"
    NODE_FAILURE = "node_failure"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    BOOT_FAILURE = "boot_failure"
    INPUT_STAGING = "input_staging"
    OUTPUT_STAGING = "output_staging"
    INVALID_METADATA = "invalid_metadata"
    REJECTED = "rejected"
    LOST = "lost"

    @property
    def infrastructure(self) -> bool:
        """Failures not caused by the gear or its resources; safe to retry as is."""
        return self in {
            FailureKind.NODE_FAILURE,
            FailureKind.BOOT_FAILURE,
            FailureKind.PREEMPTED,
            FailureKind.LOST,
            FailureKind.INPUT_STAGING,
            FailureKind.OUTPUT_STAGING,
        }

    @property
    def resource(self) -> bool:
        """Failures that may succeed with more memory or time."""
        return self in {FailureKind.OOM, FailureKind.TIMEOUT}


class SchedulerState(enum.StrEnum):
    """SLURM's job state codes (squeue/sacct base names), kept beside JobState."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    REQUEUE_FED = "REQUEUE_FED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    RESIZING = "RESIZING"
    REVOKED = "REVOKED"
    SIGNALING = "SIGNALING"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    STAGE_OUT = "STAGE_OUT"
    STOPPED = "STOPPED"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    UNKNOWN = "UNKNOWN"


ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SUBMITTING, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUBMITTING: frozenset(
        {JobState.QUEUED, JobState.PENDING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.QUEUED: frozenset(
        {JobState.RUNNING, JobState.STAGING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.RUNNING: frozenset({JobState.STAGING, JobState.FAILED, JobState.CANCELLED}),
    JobState.STAGING: frozenset({JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED}),
    JobState.COMPLETE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def check_transition(old: JobState, new: JobState) -> None:
    """Raise ``StateTransitionError`` unless ``old -> new`` is allowed."""
    if new not in ALLOWED_TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[old])) or "none"
        raise StateTransitionError(
            f"job state cannot move from {old.value} to {new.value}",
            f"allowed from {old.value}: {allowed}; a finished job is retried as a new attempt",
        )
