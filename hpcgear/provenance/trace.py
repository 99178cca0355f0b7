"""Walk back from a file version to the raw inputs it was made from (database side).

A file version whose origin is a job was produced by that job; the job's
pinned inputs (file id + version, from its snapshot) were produced by earlier
jobs or uploaded/ingested. :func:`trace` follows that chain to the end and
returns a tree; :func:`raw_inputs` lists its leaves (versions not made by a
job). Cycles cannot happen with immutable versions, but a visited set guards
against damaged rows anyway, and depth is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, FileVersion, Gear, Job, ProvenanceRecord
from hpcgear.errors import NotFoundError
from hpcgear.provenance.record import file_urn, job_urn

MAX_DEPTH = 100


@dataclass(frozen=True, slots=True)
class TraceStep:
    """The job that produced a file version, and where its inputs came from."""

    job_id: str
    gear: str  # name@version
    state: str
    recorded: bool  # a provenance record exists
    inputs: tuple[TraceNode, ...]


@dataclass(frozen=True, slots=True)
class TraceNode:
    file_id: str
    version: int
    name: str
    sha256: str | None
    container_type: str | None
    container_id: str | None
    origin_type: str | None  # user | ingest | job; None when the version is missing
    origin_id: str | None
    produced_by: TraceStep | None = None
    note: str | None = None  # e.g. "version no longer exists"

    @property
    def urn(self) -> str:
        return file_urn(self.file_id, self.version)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.urn, "file_id": self.file_id, "version": self.version,
            "name": self.name, "sha256": self.sha256,
            "container": {"type": self.container_type, "id": self.container_id},
            "origin": {"type": self.origin_type, "id": self.origin_id},
        }
        if self.note:
            out["note"] = self.note
        if self.produced_by is not None:
            step = self.produced_by
            out["produced_by"] = {"id": job_urn(step.job_id), "job_id": step.job_id,
                                  "gear": step.gear, "state": step.state,
                                  "recorded": step.recorded,
                                  "inputs": [i.as_dict() for i in step.inputs]}
        return out


def trace(session: Session, file_id: str, version: int | None = None) -> TraceNode:
    """The provenance tree of ``file_id`` at ``version`` (default: current)."""
    row = session.get(File, file_id)
    if row is None:
        raise NotFoundError(f"file {file_id!r} does not exist", "check the file id or path")
    return _node(session, file_id, version if version is not None else row.current_version,
                 set(), 0)


def _node(session: Session, file_id: str, version: int, active: set[tuple[str, int]],
          depth: int) -> TraceNode:
    row = session.get(File, file_id)
    fv = session.scalar(select(FileVersion).where(FileVersion.file_id == file_id,
                                                  FileVersion.version == version))
    container = session.get(Container, row.container_id) if row is not None else None
    node = TraceNode(file_id, version, row.name if row else "", fv.hash if fv else None,
                     container.type if container else None,
                     container.id if container else None,
                     fv.origin_type if fv else None, fv.origin_id if fv else None)
    if fv is None:
        return replace(node, note="this file version no longer exists")
    if fv.origin_type != "job":
        return node
    key = (file_id, version)
    if key in active or depth >= MAX_DEPTH:
        return replace(node, note="trace stopped (cycle or depth limit)")
    job = session.get(Job, fv.origin_id)
    if job is None:
        return replace(node, note=f"job {fv.origin_id} no longer exists")
    gear = session.get(Gear, job.gear_id)
    recorded = session.scalar(select(ProvenanceRecord.id).where(
        ProvenanceRecord.job_id == job.id)) is not None
    active.add(key)
    try:
        inputs = tuple(
            _node(session, str(i["file_id"]), int(i["version"]), active, depth + 1)
            for i in (job.inputs or [])
            if i.get("base") == "file" and i.get("file_id") and i.get("version") is not None
        )
    finally:
        active.discard(key)
    step = TraceStep(job.id, f"{gear.name}@{gear.version}" if gear else str(job.gear_id),
                     job.state, recorded, inputs)
    return replace(node, produced_by=step)


def raw_inputs(node: TraceNode) -> list[TraceNode]:
    """The leaves of a trace: versions that no job produced (uploads, ingests), in order."""
    if node.produced_by is None:
        return [node]
    out: list[TraceNode] = []
    seen: set[tuple[str, int]] = set()
    for child in node.produced_by.inputs:
        for leaf in raw_inputs(child):
            if (leaf.file_id, leaf.version) not in seen:
                seen.add((leaf.file_id, leaf.version))
                out.append(leaf)
    return out


def jobs_in(node: TraceNode) -> list[str]:
    """Every job id in a trace, outermost first."""
    if node.produced_by is None:
        return []
    out = [node.produced_by.job_id]
    for child in node.produced_by.inputs:
        out += [j for j in jobs_in(child) if j not in out]
    return out
