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


class FactsBuilder:
    """Facts for many files of a batch, building each container's facts once."""

    def __init__(self, containers: Mapping[str, Container]) -> None:
        self.containers = containers
        self._facts: dict[str, ContainerFacts] = {}
        self._levels: dict[str, dict[str, ContainerFacts]] = {}

    def container(self, cid: str) -> ContainerFacts:
        cached = self._facts.get(cid)
        if cached is None:
            cached = self._facts[cid] = container_facts(self.containers[cid])
        return cached

    def levels(self, cid: str) -> dict[str, ContainerFacts]:
        cached = self._levels.get(cid)
        if cached is None:
            c = self.containers[cid]
            cached = {}
            for level in LEVELS:
                aid = getattr(c, f"{level}_id")
                if aid and aid in self.containers:
                    cached[level] = self.container(aid)
            self._levels[cid] = cached
        return cached

    def for_file(self, container_id: str, file: FileFacts) -> Facts:
        return Facts(
            container=self.container(container_id), levels=self.levels(container_id), file=file
        )


def file_facts_from_row(
    *,
    name: str,
    version: int,
    type: str | None,
    modality: str | None,
    origin: str,
    classification: Mapping[str, Any] | None,
    tags: Iterable[str] | None,
    info: Mapping[str, Any] | None,
) -> FileFacts:
    return FileFacts(
        name=name,
        version=version,
        type=type,
        modality=modality,
        origin=origin,
        classification=_classification(classification),
        tags=tuple(tags or ()),
        info=info or {},
    )
