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


# BIDS datatype folders (BIDS specification, appendix "Entity table").
BIDS_DATATYPES = (
    "anat", "beh", "dwi", "eeg", "fmap", "func", "ieeg", "meg", "micr", "motion", "mrs",
    "nirs", "perf", "pet",
)


@dataclass(frozen=True, slots=True)
class BidsViewRequest:
    """A gear's ask for a BIDS view of its destination (manifest ``custom.hpcgear.bids-view``).

    ``dir`` is where the tree goes below ``/flywheel/v0`` (``work/bids`` by
    default: Flywheel's BIDS-app toolkit reads ``<work>/bids`` and skips its own
    download when the tree is there); ``data_types`` limits the datatype folders
    (``anat``, ``func``...; empty: all).
    """

    dir: str = "work/bids"
    data_types: tuple[str, ...] = ()


def safe_relpath(rel: str) -> bool:
    """True for a relative POSIX path that stays below its root (no ``..``, no ``/x``)."""
    parts = rel.split("/")
    return bool(rel) and all(p not in ("", ".", "..") and "\0" not in p for p in parts)


@dataclass(frozen=True, slots=True)
class TreeFile:
    """One file of a tree written somewhere (a BIDS export or a staged BIDS view).

    Exactly one of ``sha256`` (copy this stored object) or ``text`` (write this
    generated text) is set. ``path`` is relative and POSIX (``sub-01/anat/x.nii``).
    ``file_id``/``version`` name the hierarchy file copied, for provenance.
    """

    path: str
    sha256: str | None = None
    size: int = 0
    text: str | None = None
    file_id: str | None = None
    version: int | None = None
    container_type: str | None = None
    container_id: str | None = None
    name: str | None = None  # the copied file's name on its container

    def as_dict(self) -> dict[str, Any]:
        if self.text is not None:
            return {"path": self.path, "text": self.text}
        return {"path": self.path, "hash": self.sha256, "size": self.size,
                "file_id": self.file_id, "version": self.version,
                "container_id": self.container_id, "name": self.name}


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
    # The manifest's custom.hpcgear.bids-view (None: the gear asks for none).
    bids_view: BidsViewRequest | None = None

    @property
    def slurm_name(self) -> str:
        return f"hpcgear-{self.job_id}"

    @property
    def slurm_comment(self) -> str:
        return f"hpcgear:{self.job_id}:{self.attempt}"
