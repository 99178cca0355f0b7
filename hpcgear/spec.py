"""JobSpec, Resources, InputSpec: boundary objects between the database side and adapters.

The controller resolves a job row into a ``JobSpec``; ``render``, ``runtimes``,
``scheduler`` and ``staging`` only ever see these frozen values, never ORM rows.
This module sits below every package that uses them (it imports nothing of
hpcgear), so ``gears``, ``runtimes`` and ``jobs`` need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Resources:
    """What one job asks of the scheduler, already normalised.

    ``mem_mb`` is memory per node (``--mem``), ``time_minutes`` the wall-time limit.
    """

    cpus: int = 1
    mem_mb: int = 2048
    time_minutes: int = 60
    gpus: int = 0
    gres: str | None = None
    nodes: int = 1
    ntasks: int = 1
    partition: str | None = None
    qos: str | None = None
    account: str | None = None


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One gear input, pinned to an exact file version."""

    name: str  # manifest input name
    base: str  # "file", "api-key" or "context"
    file_id: str | None = None
    version: int | None = None
    file_name: str | None = None
    sha256: str | None = None  # "sha256:<hex>"
    size: int | None = None
    container_type: str | None = None
    container_id: str | None = None
    object: dict[str, Any] = field(default_factory=dict)  # Flywheel file object
    value: Any = None  # for context inputs


@dataclass(frozen=True, slots=True)
class GearRef:
    name: str
    version: str
    manifest_sha256: str
    image_ref: str  # e.g. sif path or reference string as installed
    image_digest: str  # "sha256:<hex>" of the SIF
    sif_path: str  # path of the cached SIF the job runs
    command: str | None  # manifest "command" (None: /flywheel/v0/run, as Flywheel)
    environment: tuple[tuple[str, str], ...] = ()
    category: str = "utility"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything needed to stage, render, submit and run one job attempt."""

    job_id: str
    attempt: int
    gear: GearRef
    config: dict[str, Any]
    inputs: tuple[InputSpec, ...]
    destination_type: str
    destination_id: str
    resources: Resources
    site: str
    user: str
    tags: tuple[str, ...] = ()
    priority: str = "medium"
    # Runtime switches (reserved keys singularity-writable / singularity-debug):
    # None = the site's runtime.writable_tmpfs.
    writable_tmpfs: bool | None = None
    runtime_debug: bool = False

    @property
    def slurm_name(self) -> str:
        return f"hpcgear-{self.job_id}"

    @property
    def slurm_comment(self) -> str:
        return f"hpcgear:{self.job_id}:{self.attempt}"
