"""Move, rename and delete files, containers and analyses; the trash; versions.

Every function takes the session and the acting user's login, checks roles and
raises before writing anything. Roles:

* ``mv`` and ``rename``: read-write on the source and on the destination project.
* ``rm`` of a file: read-write (in an analysis: admin); of a subject, session,
  acquisition or analysis: admin of its project (or group). Groups and projects
  are not deleted here.
* ``trash list|restore|purge``: site admin.

Deleting is soft: the rows of the file or the container subtree (containers,
files, file versions) move into one ``trash`` row as JSON and leave the live
tables, so every reader sees them gone without a filter; restore re-inserts
the same rows with the same ids. Purge drops the trash row and reports which
content-addressed objects nothing references any more (no file version, no
provenance record, no job's inputs, no other trash row); only those may be
removed from storage (``delete_objects``, after the commit). Provenance
records are never edited: they keep the ids, names and hashes of what a job
used, and the bytes they name stay in storage.

Every move, rename, delete, restore and purge appends a ``hierarchy_events``
row: who, when, what, from where and to where.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import DateTime, Text, cast, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpcgear.db.models import (
    Base,
    ChangeLog,
    Container,
    File,
    FileVersion,
    HierarchyEvent,
    Job,
    ProvenanceRecord,
    RuleMatch,
    TrashEntry,
)
from hpcgear.db.session import lock_for_update
from hpcgear.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from hpcgear.hierarchy.changelog import log_meta_change
from hpcgear.hierarchy.paths import LEVELS, check_file_name, check_label
from hpcgear.hierarchy.permissions import RoleName, require_role, require_site_admin
from hpcgear.hierarchy.service import (
    Target,
    container_path,
    new_id,
    resolve_container,
    resolve_target,
)
from hpcgear.states import JobState
from hpcgear.storage.objects import ObjectStore

logger = logging.getLogger(__name__)

# What each kind of container may be moved into.
MOVE_PARENTS: dict[str, tuple[str, ...]] = {
    "subject": ("project",),
    "session": ("subject",),
    "acquisition": ("session",),
    "analysis": ("project", "subject", "session", "acquisition"),
}
DEPTH = {name: i for i, name in enumerate(LEVELS)} | {"analysis": len(LEVELS)}


@dataclass(frozen=True, slots=True)
class MoveResult:
    kind: str
    id: str
    from_path: str
    to_path: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "from": self.from_path, "to": self.to_path}


def _a(word: str) -> str:
    """``an acquisition``, ``a session``."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _flush_or_conflict(session: Session, what: str) -> None:
    """Flush; a unique-constraint race (someone took the name meanwhile) is a clear error."""
    try:
        session.flush()
    except IntegrityError as exc:
        raise AlreadyExistsError(
            f"{what}: the name or study was taken by another change at the same time",
            "look again with `hpcgear ls` and retry",
        ) from exc


def _record(
    session: Session,
    action: str,
    kind: str,
    item_id: str,
    actor: str,
    from_path: str | None,
    to_path: str | None,
    **detail: Any,
) -> None:
    session.add(
        HierarchyEvent(
            action=action,
            kind=kind,
            item_id=item_id,
            from_path=from_path,
            to_path=to_path,
            actor=actor,
            detail=detail,
        )
    )


def _file_path(session: Session, container: Container, f: File) -> str:
    return f"{container_path(session, container)}/{f.name}"


def _movable(target: Target, verb: str) -> None:
    if target.file is None and target.container.type in ("group", "project"):
        raise InvalidInputError(
            f"{target.container.type} {target.container.label!r} cannot be {verb} here",
            "move, rename or delete files, subjects, sessions, acquisitions and analyses",
        )


def _sibling_label_taken(
    session: Session, parent_id: str, label: str, exclude: str | None = None
) -> bool:
    q = select(Container.id).where(
        Container.parent_id == parent_id,
        Container.label_key == label,
        Container.type != "analysis",
    )
    if exclude:
        q = q.where(Container.id != exclude)
    return session.scalar(q) is not None


def _file_name_taken(session: Session, container_id: str, name: str) -> bool:
    return (
        session.scalar(select(File.id).where(File.container_id == container_id, File.name == name))
        is not None
    )


def _subtree(session: Session, node: Container) -> list[Container]:
    """The container and everything below it, parents before children."""
    if node.type == "analysis":
        rows = [node]
    else:
        col = getattr(Container, f"{node.type}_id")
        rows = list(session.scalars(select(Container).where(col == node.id)))
    return sorted(rows, key=lambda c: (DEPTH[c.type], c.id))


def _chunks(ids: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """Bounded IN lists (SQLite and PostgreSQL cap bound parameters)."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _files_in(session: Session, container_ids: Sequence[str]) -> list[File]:
    return [
        f
        for chunk in _chunks(container_ids)
        for f in session.scalars(select(File).where(File.container_id.in_(chunk)))
    ]


def _set_ancestors(row: Container, parent: Container) -> None:
    row.group_id = parent.group_id
    for level in ("project", "subject", "session", "acquisition"):
        setattr(row, f"{level}_id", getattr(parent, f"{level}_id"))
    if row.type in ("project", "subject", "session", "acquisition"):
        setattr(row, f"{row.type}_id", row.id)


# ----------------------------------------------------------------------- move


def move(session: Session, actor: str, source: str, destination: str) -> MoveResult:
    """Move a file into another container, or a container under another parent.

    Labels, ids, versions, tags, info and provenance stay; ancestor ids of the
    whole subtree follow the move. A name taken at the destination is refused.
    """
    target = resolve_target(session, source)
    _movable(target, "moved")
    dest = resolve_container(session, destination, min_depth=2)
    require_role(session, actor, target.container, RoleName.READ_WRITE, "moving data")
    require_role(session, actor, dest, RoleName.READ_WRITE, "moving data into it")
    lock_for_update(session, target.file or target.container)
    if target.file is not None:
        f = target.file
        from_path = _file_path(session, target.container, f)
        if dest.type == "analysis":
            raise InvalidInputError(
                f"{container_path(session, dest)} is an analysis: it holds one job's outputs",
                "move the file into a project, subject, session or acquisition",
            )
        if dest.id == f.container_id:
            raise InvalidInputError(f"{from_path} is already there", "name another container")
        if _file_name_taken(session, dest.id, f.name):
            raise AlreadyExistsError(
                f"{container_path(session, dest)} already has a file {f.name!r}",
                "rename one of them first with `hpcgear rename PATH/FILE NEWNAME`",
            )
        f.container_id = dest.id
        f.project_id = dest.project_id
        _flush_or_conflict(session, f"moving {from_path}")
        to_path = _file_path(session, dest, f)
        _record(session, "move", "file", f.id, actor, from_path, to_path)
        log_meta_change(session, actor, dest.id, f)
        session.flush()
        return MoveResult("file", f.id, from_path, to_path)
    node = target.container
    allowed = MOVE_PARENTS[node.type]
    if dest.type not in allowed:
        raise InvalidInputError(
            f"a {node.type} cannot go into a {dest.type} ({container_path(session, dest)})",
            f"move a {node.type} into a {' or '.join(allowed)}",
        )
    from_path = container_path(session, node)
    if node.parent_id == dest.id:
        raise InvalidInputError(f"{from_path} is already there", "name another parent")
    if node.type != "analysis" and _sibling_label_taken(session, dest.id, node.label):
        raise AlreadyExistsError(
            f"{container_path(session, dest)} already has {_a(node.type)} {node.label!r}",
            f"rename one of them first with `hpcgear rename {from_path} NEWLABEL`",
        )
    rows = _subtree(session, node)
    if dest.project_id != node.project_id:
        keys = [c.natural_key for c in rows if c.natural_key]
        if keys:
            clash = session.scalar(
                select(Container).where(
                    Container.project_id == dest.project_id, Container.natural_key.in_(keys)
                )
            )
            if clash is not None:
                raise AlreadyExistsError(
                    f"the destination project already holds {clash.type} "
                    f"{container_path(session, clash)} of the same study/series "
                    f"(natural key {clash.natural_key})",
                    "the data is already there: delete one copy (`hpcgear rm`) instead of moving",
                )
    old_project = node.project_id
    node.parent_id = dest.id
    by_id = {c.id: c for c in rows}
    for row in rows:
        parent = dest if row.id == node.id else by_id[row.parent_id or ""]
        _set_ancestors(row, parent)
    ids = [c.id for c in rows]
    new_project = dest.project_id != old_project
    for f in _files_in(session, ids):
        f.project_id = by_id[f.container_id].project_id
        if new_project:
            # The destination project's gear rules see the files as if they had
            # been routed there (a subject rescued from Unsorted gets converted).
            log_meta_change(session, actor, f.container_id, f)
    _flush_or_conflict(session, f"moving {from_path}")
    to_path = container_path(session, node)
    _record(session, "move", node.type, node.id, actor, from_path, to_path, containers=len(ids))
    session.flush()
    logger.info("moved %s %s: %s -> %s by %s", node.type, node.id, from_path, to_path, actor)
    return MoveResult(node.type, node.id, from_path, to_path)


def rename(session: Session, actor: str, path: str, new_name: str) -> MoveResult:
    """Rename a file, or relabel a subject, session, acquisition or analysis."""
    target = resolve_target(session, path)
    _movable(target, "renamed")
    require_role(session, actor, target.container, RoleName.READ_WRITE, "renaming")
    lock_for_update(session, target.file or target.container)
    if target.file is not None:
        f = target.file
        check_file_name(new_name)
        from_path = _file_path(session, target.container, f)
        if new_name == f.name:
            raise InvalidInputError(f"{from_path} already has that name", "give a new name")
        if _file_name_taken(session, f.container_id, new_name):
            raise AlreadyExistsError(
                f"{container_path(session, target.container)} already has a file {new_name!r}",
                "pick another name, or delete that file first",
            )
        f.name = new_name
        _flush_or_conflict(session, f"renaming {from_path}")
        to_path = _file_path(session, target.container, f)
        _record(session, "rename", "file", f.id, actor, from_path, to_path)
        log_meta_change(session, actor, f.container_id, f)
        session.flush()
        return MoveResult("file", f.id, from_path, to_path)
    node = target.container
    check_label(new_name, what=f"{node.type} label")
    from_path = container_path(session, node)
    if new_name == node.label:
        raise InvalidInputError(f"{from_path} already has that label", "give a new label")
    if node.type != "analysis":
        if _sibling_label_taken(session, node.parent_id or "", new_name, exclude=node.id):
            raise AlreadyExistsError(
                f"a {node.type} {new_name!r} already exists next to {from_path}",
                "pick another label, or move the data into the existing one",
            )
        node.label_key = new_name
    node.label = new_name
    _flush_or_conflict(session, f"renaming {from_path}")
    to_path = container_path(session, node)
    _record(session, "rename", node.type, node.id, actor, from_path, to_path)
    session.add(ChangeLog(kind="container.meta", container_id=node.id, actor=actor))
    session.flush()
    return MoveResult(node.type, node.id, from_path, to_path)


# ---------------------------------------------------------------------- trash


def _encode(row: Base) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in row.__table__.columns:
        value = getattr(row, col.key)
        out[col.key] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out


def _decode(model: type[Base], data: dict[str, Any]) -> Base:
    values = dict(data)
    for col in model.__table__.columns:
        if isinstance(col.type, DateTime) and isinstance(values.get(col.key), str):
            values[col.key] = dt.datetime.fromisoformat(values[col.key])
    return model(**values)


@dataclass(frozen=True, slots=True)
class TrashItem:
    id: str
    kind: str
    label: str
    path: str
    files: int
    size: int
    deleted_by: str
    deleted: dt.datetime
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "trash_id": self.id,
            "kind": self.kind,
            "label": self.label,
            "path": self.path,
            "files": self.files,
            "size": self.size,
            "deleted_by": self.deleted_by,
            "deleted": self.deleted.isoformat(),
            "dry_run": self.dry_run,
        }


def _item(e: TrashEntry, *, dry_run: bool = False) -> TrashItem:
    return TrashItem(
        e.id, e.kind, e.label, e.path, e.files, e.size, e.deleted_by, e.deleted, dry_run
    )


def remove(session: Session, actor: str, path: str, *, dry_run: bool = False) -> TrashItem:
    """Soft-delete a file or a subject/session/acquisition/analysis subtree into the trash.

    Refused while a job that is not finished writes into the subtree.
    """
    target = resolve_target(session, path)
    _movable(target, "deleted")
    if target.file is not None:
        in_analysis = target.container.type == "analysis"
        require_role(
            session,
            actor,
            target.container,
            RoleName.ADMIN if in_analysis else RoleName.READ_WRITE,
            "deleting an analysis' files" if in_analysis else "deleting files",
        )
        containers: list[Container] = []
        files = [target.file]
        kind, item_id, label = "file", target.file.id, target.file.name
        where = _file_path(session, target.container, target.file)
        parent_id = target.container.id
    else:
        node = target.container
        require_role(session, actor, node, RoleName.ADMIN, f"deleting a {node.type}")
        containers = _subtree(session, node)
        ids = [c.id for c in containers]
        live = [s.value for s in JobState if not s.final]
        busy = session.scalars(
            select(Job.id).where(Job.destination_id.in_(ids), Job.state.in_(live)).limit(5)
        ).all()
        if busy:
            raise InvalidInputError(
                f"{len(busy)} unfinished job(s) write into {container_path(session, node)} "
                f"({', '.join(busy)})",
                "wait for them, or cancel them with `hpcgear job cancel ID`, then delete",
            )
        files = _files_in(session, ids)
        kind, item_id, label = node.type, node.id, node.label
        where = container_path(session, node)
        parent_id = node.parent_id or ""
    file_ids = [f.id for f in files]
    versions = [
        v
        for chunk in _chunks(file_ids)
        for v in session.scalars(select(FileVersion).where(FileVersion.file_id.in_(chunk)))
    ]
    hashes = sorted({v.hash for v in versions})
    current = {f.id: f.current_version for f in files}
    size = sum(v.size for v in versions if v.version == current.get(v.file_id))
    entry = TrashEntry(
        id=new_id(),
        kind=kind,
        item_id=item_id,
        label=label,
        path=where,
        parent_id=parent_id,
        group_id=target.container.group_id,
        project_id=target.container.project_id,
        rows={
            "containers": [_encode(c) for c in containers],
            "files": [_encode(f) for f in files],
            "file_versions": [_encode(v) for v in versions],
        },
        hashes=hashes,
        files=len(files),
        size=size,
        deleted_by=actor,
        deleted=dt.datetime.now(dt.UTC),
    )
    if dry_run:
        return _item(entry, dry_run=True)
    session.add(entry)
    if file_ids:
        for chunk in _chunks(file_ids):
            session.execute(delete(RuleMatch).where(RuleMatch.file_id.in_(chunk)))
            session.execute(delete(FileVersion).where(FileVersion.file_id.in_(chunk)))
            session.execute(delete(File).where(File.id.in_(chunk)))
    for c in sorted(containers, key=lambda c: -DEPTH[c.type]):
        session.execute(delete(Container).where(Container.id == c.id))
    for obj in [*versions, *files, *containers]:
        session.expunge(obj)  # Core deletes above; keep the identity map honest
    _record(
        session, "delete", kind, item_id, actor, where, None, trash_id=entry.id, files=len(files)
    )
    session.flush()
    logger.info("deleted %s %s (%s) into trash %s by %s", kind, item_id, where, entry.id, actor)
    return _item(entry)


def list_trash(session: Session, actor: str, group: str | None = None) -> list[TrashItem]:
    require_site_admin(session, actor, "listing the trash")
    q = select(TrashEntry).order_by(TrashEntry.deleted.desc(), TrashEntry.id)
    if group:
        q = q.where(TrashEntry.group_id == group)
    return [_item(e) for e in session.scalars(q)]


def _trash_entry(session: Session, trash_id: str) -> TrashEntry:
    rows = (
        session.scalars(
            select(TrashEntry).where(TrashEntry.id.startswith(trash_id, autoescape=True)).limit(2)
        ).all()
        if len(trash_id) >= 6
        else []
    )
    if len(rows) != 1:
        raise NotFoundError(
            f"no trash entry {trash_id!r}" if not rows else f"trash id {trash_id!r} is ambiguous",
            "list the trash with `hpcgear trash list` and give a full TRASH_ID",
        )
    return rows[0]


def restore(session: Session, actor: str, trash_id: str) -> TrashItem:
    """Put a trash entry back where it was (same ids); refused if its place is taken."""
    require_site_admin(session, actor, "restoring from the trash")
    e = _trash_entry(session, trash_id)
    parent = session.get(Container, e.parent_id)
    if parent is None:
        raise NotFoundError(
            f"{e.path} cannot be restored: the container it was in no longer exists",
            "restore that container first (`hpcgear trash list` shows it)",
        )
    rows = e.rows
    if e.kind == "file":
        name = rows["files"][0]["name"]
        if _file_name_taken(session, parent.id, name):
            raise AlreadyExistsError(
                f"{container_path(session, parent)} has a new file {name!r}",
                "rename or delete that file first, then restore",
            )
    else:
        top = rows["containers"][0]
        if top["type"] != "analysis" and _sibling_label_taken(session, parent.id, top["label"]):
            raise AlreadyExistsError(
                f"{container_path(session, parent)} has a new {top['type']} {top['label']!r}",
                "rename that one first (`hpcgear rename`), then restore",
            )
        keys = [c["natural_key"] for c in rows["containers"] if c.get("natural_key")]
        if keys and session.scalar(
            select(Container.id).where(
                Container.project_id == parent.project_id, Container.natural_key.in_(keys)
            )
        ):
            raise AlreadyExistsError(
                f"{e.path} cannot be restored: the same study/series was ingested again",
                "delete the newer copy first, then restore",
            )
    # Parents come before children (as stored); ancestor ids are re-derived, since
    # the parent may have moved while its child was in the trash.
    placed: dict[str, Container] = {}
    for data in rows["containers"]:
        c = _decode(Container, data)
        assert isinstance(c, Container)
        if c.id == e.item_id:
            c.parent_id = parent.id
        _set_ancestors(c, placed.get(c.parent_id or "", parent))
        placed[c.id] = c
        session.add(c)
        session.flush()
    for f in rows["files"]:
        row = _decode(File, f)
        assert isinstance(row, File)
        row.project_id = parent.project_id
        session.add(row)
    session.flush()
    for v in rows["file_versions"]:
        session.add(_decode(FileVersion, v))
    session.flush()
    item = _item(e)
    session.delete(e)
    target = session.get(Container, e.item_id) if e.kind != "file" else parent
    to_path = container_path(session, target) if target is not None else e.path
    if e.kind == "file":
        to_path = f"{to_path}/{rows['files'][0]['name']}"
    _record(session, "restore", e.kind, e.item_id, actor, None, to_path, trash_id=e.id)
    session.flush()
    return item


@dataclass(frozen=True, slots=True)
class PurgeResult:
    purged: list[TrashItem]
    unreferenced: list[str]  # hashes nothing references: remove with delete_objects
    kept: dict[str, str]  # hash -> why it stays (provenance, another version, ...)

    def as_dict(self) -> dict[str, Any]:
        return {
            "purged": [p.as_dict() for p in self.purged],
            "objects_removed": len(self.unreferenced),
            "objects_kept": self.kept,
        }


def hash_references(session: Session, digest: str, *, skip_trash: Iterable[str] = ()) -> str | None:
    """Why ``digest`` must stay in storage, or None when nothing references it."""
    if session.scalar(select(FileVersion.id).where(FileVersion.hash == digest).limit(1)):
        return "a file version"
    hexpart = digest.split(":", 1)[-1]
    if session.scalar(
        select(ProvenanceRecord.job_id)
        .where(cast(ProvenanceRecord.record, Text).contains(hexpart))
        .limit(1)
    ):
        return "a provenance record"
    if session.scalar(select(Job.id).where(cast(Job.inputs, Text).contains(hexpart)).limit(1)):
        return "a job's inputs"
    q = select(TrashEntry.id).where(cast(TrashEntry.hashes, Text).contains(hexpart))
    skip = list(skip_trash)
    if skip:
        q = q.where(TrashEntry.id.not_in(skip))
    if session.scalar(q.limit(1)):
        return "another trash entry"
    return None


def purge(
    session: Session,
    actor: str,
    trash_ids: Sequence[str] = (),
    *,
    older_than: dt.timedelta | None = None,
    dry_run: bool = False,
) -> PurgeResult:
    """Drop trash entries for good; bytes referenced by provenance stay in storage."""
    require_site_admin(session, actor, "purging the trash")
    if not trash_ids and older_than is None:
        raise InvalidInputError(
            "nothing to purge was named", "give TRASH_IDs, or --older-than DAYS (0 for all)"
        )
    entries = [_trash_entry(session, t) for t in trash_ids]
    if older_than is not None:
        cutoff = dt.datetime.now(dt.UTC) - older_than
        known = {e.id for e in entries}
        entries += [
            e
            for e in session.scalars(select(TrashEntry).order_by(TrashEntry.deleted))
            if e.id not in known and _aware(e.deleted) <= cutoff
        ]
    ids = [e.id for e in entries]
    unreferenced: list[str] = []
    kept: dict[str, str] = {}
    for digest in sorted({h for e in entries for h in e.hashes}):
        why = hash_references(session, digest, skip_trash=ids)
        if why is None:
            unreferenced.append(digest)
        else:
            kept[digest] = why
    items = [_item(e, dry_run=dry_run) for e in entries]
    if not dry_run:
        for e in entries:
            _record(
                session,
                "purge",
                e.kind,
                e.item_id,
                actor,
                e.path,
                None,
                trash_id=e.id,
                objects_kept=len([h for h in e.hashes if h in kept]),
            )
            session.delete(e)
        session.flush()
    return PurgeResult(items, unreferenced, kept)


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def delete_objects(store: ObjectStore, digests: Iterable[str]) -> int:
    """Remove purged objects from storage; call only after the purge committed."""
    return sum(1 for d in digests if store.delete(d))


def history(
    session: Session, actor: str, path: str | None = None, *, item_id: str | None = None
) -> list[dict[str, Any]]:
    """Move/rename/delete/restore/purge events (of one item; all or by id: site admins)."""
    q = select(HierarchyEvent).order_by(HierarchyEvent.seq)
    if item_id:
        require_site_admin(session, actor, "reading the history of an item by id")
        q = q.where(HierarchyEvent.item_id == item_id)
    elif path:
        target = resolve_target(session, path)
        require_role(session, actor, target.container, RoleName.READ_ONLY, "reading history")
        item = target.file.id if target.file is not None else target.container.id
        q = q.where(HierarchyEvent.item_id == item)
    else:
        require_site_admin(session, actor, "reading the whole data history")
    return [
        {
            "seq": e.seq,
            "action": e.action,
            "kind": e.kind,
            "id": e.item_id,
            "from": e.from_path,
            "to": e.to_path,
            "actor": e.actor,
            "ts": e.ts.isoformat() if e.ts else None,
            "detail": e.detail or {},
        }
        for e in session.scalars(q)
    ]


# ------------------------------------------------------------------ versions


def list_versions(session: Session, actor: str, path: str) -> list[dict[str, Any]]:
    """Every stored version of a file, oldest first."""
    target = resolve_target(session, path)
    if target.file is None:
        raise InvalidInputError(f"{path!r} is a container, not a file", "give PATH/FILE")
    require_role(session, actor, target.container, RoleName.READ_ONLY, "reading files")
    f = target.file
    rows = session.scalars(
        select(FileVersion).where(FileVersion.file_id == f.id).order_by(FileVersion.version)
    ).all()
    return [
        {
            "version": v.version,
            "current": v.version == f.current_version,
            "hash": v.hash,
            "size": v.size,
            "origin": {"type": v.origin_type, "id": v.origin_id},
            "created": v.created.isoformat() if v.created else None,
        }
        for v in rows
    ]


def version_count(session: Session, file_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(FileVersion).where(FileVersion.file_id == file_id)
        )
        or 0
    )


__all__ = [
    "MoveResult",
    "PurgeResult",
    "TrashItem",
    "delete_objects",
    "hash_references",
    "history",
    "list_trash",
    "list_versions",
    "move",
    "purge",
    "remove",
    "rename",
    "restore",
]
