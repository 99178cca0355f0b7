"""What an ingest did (or, with dry-run, would do): sessions, files, skipped files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hpcgear.ingest.dicom import SkippedFile


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """A session the ingest used. status: new | existing (dry-run: what would happen)."""

    path: str
    status: str
    natural_key: str | None = None
    unsorted_reason: str | None = None
    routing: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "natural_key": self.natural_key,
            "unsorted_reason": self.unsorted_reason,
            "routing": dict(self.routing),
        }


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """One stored file. status: new | new_version | unchanged | planned (dry-run)."""

    container: str  # group/project/subject/session/acquisition
    name: str
    status: str
    type: str | None
    version: int | None = None
    hash: str | None = None
    size: int | None = None
    members: int | None = None  # DICOM instances in a series zip
    modality: str | None = None
    classification: dict[str, list[str]] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # input files (relative), for NIfTI and dry-run output

    @classmethod
    def unchanged(
        cls, container: str, row: Any, current: Any, members: int | None = None
    ) -> FileOutcome:
        """A file whose current version already holds these bytes (``row``: a file
        row with name, type, modality and classification; ``current``: its version
        row with version, hash and size; ORM objects or Core rows)."""
        return cls(
            container=container,
            name=row.name,
            status="unchanged",
            type=row.type,
            version=current.version,
            hash=current.hash,
            size=current.size,
            members=members,
            modality=row.modality,
            classification=dict(row.classification or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": f"{self.container}/{self.name}",
            "container": self.container,
            "name": self.name,
            "status": self.status,
            "type": self.type,
            "version": self.version,
            "hash": self.hash,
            "size": self.size,
            "members": self.members,
            "modality": self.modality,
            "classification": self.classification,
        }
        if self.sources:
            out["sources"] = list(self.sources)
        return out


@dataclass(slots=True)
class IngestReport:
    """The outcome of ``ingest_dicom`` / ``ingest_nifti`` (machine-readable via to_dict)."""

    kind: str  # dicom | nifti
    group: str
    dry_run: bool
    files_seen: int = 0
    sessions: list[SessionOutcome] = field(default_factory=list)
    files: list[FileOutcome] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created_containers: int = 0

    def summary(self) -> dict[str, int]:
        status = Counter(f.status for f in self.files)
        return {
            "files_seen": self.files_seen,
            "sessions": len(self.sessions),
            "new_sessions": sum(1 for s in self.sessions if s.status == "new"),
            "unsorted_sessions": sum(1 for s in self.sessions if s.unsorted_reason),
            "files": len(self.files),
            "new": status["new"],
            "new_version": status["new_version"],
            "unchanged": status["unchanged"],
            "planned": status["planned"],
            "skipped": len(self.skipped),
            "created_containers": self.created_containers,
        }

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "group": self.group,
            "dry_run": self.dry_run,
            "summary": self.summary(),
            "skipped_by_reason": self.skipped_by_reason(),
            "sessions": [s.to_dict() for s in self.sessions],
            "files": [f.to_dict() for f in self.files],
            "skipped": [
                {"path": s.path, "reason": s.reason, "detail": s.detail} for s in self.skipped
            ],
            "notes": list(self.notes),
        }
