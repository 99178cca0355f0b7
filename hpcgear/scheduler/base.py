"""The scheduler interface every backend (SLURM CLI, local) implements, and its values.

Ids: ``native_id`` is the scheduler's id (``"123"``, array task ``"123_4"``,
local ``"local-4711"``); hpcgear's own job id only appears in job *names*
(``hpcgear-<job-id>``) and comments (``hpcgear:<job-id>:<attempt>``).

Contract shared by all backends:

* ``submit`` returns the native id or raises. ``SubmitRejectedError`` means the
  scheduler definitely refused (no job exists); ``SchedulerUnavailableError`` with
  ``ambiguous=True`` means the job *may* exist: look it up by name before retrying.
* ``poll`` returns only what the scheduler knows: an id missing from the result
  is "not in the queue (any more)"; resolve it with ``accounting`` or the job's
  exit record. A failed query raises; it never returns a made-up state.
* For an array's base id, ``poll``/``accounting`` return one entry per task,
  keyed by the task id (``"123_4"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath
from typing import Protocol, runtime_checkable

from hpcgear.errors import SchedulerError
from hpcgear.scheduler.slurm_tables import (
    Outlook,
    StateCategory,
    describe_reason,
    describe_state,
    reason_code,
)
from hpcgear.states import FailureKind, SchedulerState

# ----------------------------------------------------------------------------- errors


class SubmitRejectedError(SchedulerError):
    """The scheduler definitely refused a request (bad partition, over a limit...).

    Nothing was created; retrying unchanged fails the same way. ``failure_kind``
    is ``FailureKind.REJECTED``; ``slurm_message`` holds the scheduler's own words.
    """

    failure_kind = FailureKind.REJECTED

    def __init__(self, message: str, hint: str | None = None, *, slurm_message: str = "",
                 argv: Sequence[str] = (), returncode: int | None = None, stdout: str = "",
                 stderr: str = "") -> None:
        super().__init__(message, hint, argv=tuple(argv), returncode=returncode, stdout=stdout,
                         stderr=stderr, transient=False)
        self.slurm_message = slurm_message


class ReleaseRefusedError(SchedulerError):
    """``scontrol release`` definitely refused some held jobs (they would never start).

    ``refused`` maps each refused SLURM id to the scheduler's own words, e.g.
    ``Requested partition configuration not available now``.
    """

    def __init__(self, message: str, hint: str | None = None, *,
                 refused: dict[str, str] | None = None, argv: Sequence[str] = (),
                 returncode: int | None = None, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message, hint, argv=tuple(argv), returncode=returncode, stdout=stdout,
                         stderr=stderr, transient=False)
        self.refused = dict(refused or {})


class SchedulerUnavailableError(SchedulerError):
    """The scheduler could not be asked or did not answer in time (transient).

    ``ambiguous`` is True when the request may have taken effect anyway (an
    ``sbatch`` that timed out may have created the job): look it up by name
    before repeating it.
    """

    def __init__(self, message: str, hint: str | None = None, *, ambiguous: bool = False,
                 argv: Sequence[str] = (), returncode: int | None = None, stdout: str = "",
                 stderr: str = "") -> None:
        super().__init__(message, hint, argv=tuple(argv), returncode=returncode, stdout=stdout,
                         stderr=stderr, transient=True)
        self.ambiguous = ambiguous


# ------------------------------------------------------------------------------ ids

_NATIVE_RE = re.compile(r"^(?P<base>[A-Za-z0-9][A-Za-z0-9.-]*)(?:_(?P<task>\d+))?$")


def split_native_id(native_id: str) -> tuple[str, int | None]:
    """``"123_4"`` -> ``("123", 4)``; ``"123"`` -> ``("123", None)``; ``local-9_2`` likewise."""
    m = _NATIVE_RE.fullmatch(native_id.strip())
    if not m:
        raise ValueError(f"not a scheduler job id: {native_id!r}")
    task = m.group("task")
    return m.group("base"), int(task) if task is not None else None


def base_native_id(native_id: str) -> str:
    return split_native_id(native_id)[0]


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class SchedulerStatus:
    """One job (or array task) as the scheduler's queue shows it right now."""

    native_id: str  # "123" or array task "123_4"
    state: SchedulerState
    name: str = ""
    array_job_id: str | None = None  # "123" for "123_4"
    array_task_id: int | None = None
    reason: str | None = None  # raw reason text, e.g. "Priority"; None when SLURM says None
    nodes: str | None = None  # node list, e.g. "c[1-2]"
    partition: str | None = None
    elapsed_seconds: int | None = None
    time_limit_seconds: int | None = None  # None: unlimited / not set
    submit_time: datetime | None = None
    start_time: datetime | None = None
    comment: str | None = None
    qos: str | None = None
    account: str | None = None
    cpus: int | None = None

    @property
    def category(self) -> StateCategory:
        return describe_state(self.state).category

    @property
    def final(self) -> bool:
        return self.category.final

    @property
    def failure_kind(self) -> FailureKind | None:
        return describe_state(self.state).failure_kind

    @property
    def reason_code(self) -> str | None:
        return reason_code(self.reason)

    @property
    def outlook(self) -> Outlook | None:
        """For waiting jobs: what the pending reason says about starting (else None)."""
        if self.category is not StateCategory.WAITING:
            return None
        return describe_reason(self.reason).outlook

    @property
    def never_starts(self) -> bool:
        """True when SLURM's reason says this pending job cannot start as submitted."""
        return self.outlook is Outlook.NEVER

    @property
    def explanation(self) -> str:
        """State and (for waiting jobs) reason in plain words."""
        text = describe_state(self.state).sentence
        if self.category is StateCategory.WAITING and self.reason:
            text = f"{text} {describe_reason(self.reason).sentence}"
        return text


@dataclass(frozen=True, slots=True)
class Accounting:
    """What the scheduler recorded about a job (or array task) that ran or ended."""

    native_id: str
    state: SchedulerState
    state_text: str = ""  # verbatim, e.g. "CANCELLED by 1000"
    name: str = ""
    exit_code: int | None = None  # the batch script's exit status
    exit_signal: int | None = None  # signal that ended it (0: none)
    cancelled_by_uid: int | None = None
    elapsed_seconds: int | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    nodes: str | None = None
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    alloc_cpus: int | None = None
    req_mem: str | None = None  # as SLURM prints it, e.g. "2G" / "1000Mc"
    time_limit_seconds: int | None = None
    max_rss_bytes: int | None = None  # max over steps; None if not recorded
    total_cpu_seconds: float | None = None  # max over steps (the batch step holds the job's)
    reason: str | None = None
    source: str = "sacct"  # "sacct", "sacct -c", "scontrol", "local"

    @property
    def category(self) -> StateCategory:
        return describe_state(self.state).category

    @property
    def failure_kind(self) -> FailureKind | None:
        return describe_state(self.state).failure_kind


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """Controller-wide facts (``scontrol show config``)."""

    version: str
    max_array_size: int  # array indices must be < this
    min_job_age_seconds: int  # finished jobs stay visible in squeue this long
    cluster_name: str | None = None
    max_job_count: int | None = None
    kill_wait_seconds: int | None = None
    accounting_storage: str | None = None  # e.g. "accounting_storage/slurmdbd", "…/none"
    job_comp: str | None = None  # JobCompType, e.g. "jobcomp/filetxt"

    @property
    def accounting_enabled(self) -> bool:
        return bool(self.accounting_storage) and not str(self.accounting_storage).endswith(
            "/none"
        )


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """Limits of one partition (``scontrol show partition -o`` + ``sinfo``).

    ``None`` means unlimited / not set. Memory in MiB, times in minutes.
    """

    name: str
    state: str = "UP"
    default: bool = False
    max_time_minutes: int | None = None
    default_time_minutes: int | None = None
    max_nodes: int | None = None
    max_mem_per_node_mb: int | None = None
    max_mem_per_cpu_mb: int | None = None
    def_mem_per_cpu_mb: int | None = None
    def_mem_per_node_mb: int | None = None
    max_cpus_per_node: int | None = None
    total_cpus: int | None = None
    total_nodes: int | None = None
    nodes: str | None = None
    qos: str | None = None  # partition QOS
    allow_accounts: tuple[str, ...] | None = None  # None: all
    deny_accounts: tuple[str, ...] = ()
    allow_qos: tuple[str, ...] | None = None  # None: all
    node_cpus_max: int | None = None  # largest node, from sinfo
    node_mem_max_mb: int | None = None  # largest node RealMemory, from sinfo
    gres: tuple[str, ...] = ()  # from sinfo, e.g. ("gpu:a100:4",)

    @property
    def up(self) -> bool:
        return self.state.upper() == "UP"


@dataclass(frozen=True, slots=True)
class PreflightResult:
    """``sbatch --test-only``: SLURM accepted the script and estimates a start."""

    accepted: bool
    message: str  # SLURM's line, e.g. "Job 12 to start at ... on nodes n1 in partition debug"
    estimated_start: datetime | None = None
    partition: str | None = None


# -------------------------------------------------------------------------- protocol


@runtime_checkable
class SchedulerBackend(Protocol):
    """What the controller needs from a scheduler. See the module docstring."""

    def submit(self, script_path: str | PurePath, *, hold: bool = True) -> str:
        """Submit the batch script at ``script_path``; return its native id."""
        ...

    def release(self, native_ids: Sequence[str]) -> None:
        """Release held jobs. Idempotent: released, finished or unknown jobs are not
        errors (unknown ones are logged; poll/accounting say what became of them)."""
        ...

    def poll(self, native_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        """Queue state of the given jobs in one query; missing = not in the queue."""
        ...

    def accounting(self, native_ids: Sequence[str]) -> dict[str, Accounting]:
        """Accounting of (finished) jobs; missing = the scheduler has no record."""
        ...

    def cancel(self, native_ids: Sequence[str]) -> None:
        """Cancel jobs; jobs that already ended are not an error."""
        ...

    def lookup_by_name(self, name: str) -> list[str]:
        """Native ids (array base ids, not tasks) of jobs submitted with ``name``."""
        ...

    def cluster_info(self) -> ClusterInfo:
        ...

    def partitions(self) -> list[PartitionInfo]:
        ...

    def preflight(self, script_path: str | PurePath) -> PreflightResult:
        """Ask the scheduler whether it would accept the script, without submitting."""
        ...
