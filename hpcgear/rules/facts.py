"""Build the pure facts rules look at from database rows (a few batched queries)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, FileVersion
from hpcgear.rules.predicates import LEVELS, ContainerFacts, Facts, FileFacts


def container_facts(c: Container) -> ContainerFacts:
    return ContainerFacts(
        type=c.type, label=c.label, tags=tuple(c.tags or ()), info=dict(c.info or {})
    )


def _classification(raw: Mapping[str, Any] | None) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for key, value in (raw or {}).items():
        if isinstance(value, list | tuple):
            out[str(key)] = tuple(str(v) for v in value)
        elif value is not None:
            out[str(key)] = (str(value),)
    return out


def file_facts(f: File, fv: FileVersion | None) -> FileFacts:
    return FileFacts(
        name=f.name,
        version=fv.version if fv is not None else f.current_version,
        type=f.type,
        modality=f.modality,
        origin=fv.origin_type if fv is not None else "user",
        classification=_classification(f.classification),
        tags=tuple(f.tags or ()),
        info=dict(f.info or {}),
    )


def ancestor_ids(c: Container) -> list[str]:
    return [
        i
        for i in (c.project_id, c.subject_id, c.session_id, c.acquisition_id)
        if i is not None and i != c.id
    ]


def load_containers(session: Session, ids: Iterable[str]) -> dict[str, Container]:
    """Containers by id, plus all their ancestors (two queries at most)."""
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    found = {c.id: c for c in session.scalars(select(Container).where(Container.id.in_(wanted)))}
    more = {a for c in found.values() for a in ancestor_ids(c)} - set(found)
    if more:
        found.update(
            {c.id: c for c in session.scalars(select(Container).where(Container.id.in_(more)))}
        )
    return found


def levels_of(c: Container, containers: Mapping[str, Container]) -> dict[str, ContainerFacts]:
    out: dict[str, ContainerFacts] = {}
    for level in LEVELS:
        cid = getattr(c, f"{level}_id")
        node = containers.get(cid) if cid else None
        if node is not None:
            out[level] = container_facts(node)
    return out


def facts_for_file(f: File, fv: FileVersion | None, containers: Mapping[str, Container]) -> Facts:
    c = containers[f.container_id]
    return Facts(
        container=container_facts(c), levels=levels_of(c, containers), file=file_facts(f, fv)
    )


def facts_for_container(c: Container, containers: Mapping[str, Container]) -> Facts:
    return Facts(container=container_facts(c), levels=levels_of(c, containers))


def current_versions(session: Session, files: Iterable[File]) -> dict[str, FileVersion]:
    """The current FileVersion of each file, by file id (one query)."""
    rows = list(files)
    if not rows:
        return {}
    want = {f.id: f.current_version for f in rows}
    out: dict[str, FileVersion] = {}
    for fv in session.scalars(select(FileVersion).where(FileVersion.file_id.in_(list(want)))):
        if want.get(fv.file_id) == fv.version:
            out[fv.file_id] = fv
    return out
