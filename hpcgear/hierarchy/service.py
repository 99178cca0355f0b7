"""Hierarchy services: users, roles, groups, projects, uploads, info and tags.

Every function takes the SQLAlchemy session and the acting user's login, checks
the role the action needs, and raises before writing anything when it is not
allowed or the input is bad. Callers own the transaction (``Database.session``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpcgear.db.models import (
    ChangeLog,
    Container,
    File,
    FileVersion,
    ProjectDeidProfile,
    Role,
    User,
)
from hpcgear.db.session import lock_for_update
from hpcgear.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from hpcgear.hierarchy.changelog import log_meta_change
from hpcgear.hierarchy.paths import (
    LEVELS,
    HierarchyPath,
    check_file_name,
    check_group_id,
    check_label,
    check_login,
    check_tag,
)
from hpcgear.hierarchy.permissions import (
    RoleName,
    effective_role,
    get_actor,
    require_role,
    require_site_admin,
)
from hpcgear.hierarchy.uploads import UploadResult as UploadResult
from hpcgear.hierarchy.uploads import check_sources, looks_like_dicom
from hpcgear.hierarchy.uploads import expand_directories as expand_directories
from hpcgear.hierarchy.uploads import guess_file_type as guess_file_type
from hpcgear.hierarchy.uploads import new_id as new_id
from hpcgear.storage.objects import ObjectStore
from hpcgear.text import check_identifier, check_storable, json_or_text

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------- users


def add_user(session: Session, actor: str | None, login: str, *, site_admin: bool = False) -> User:
    """Register a user. ``actor`` None is only for bootstrapping the first admin."""
    check_login(login)
    if actor is not None:
        require_site_admin(session, actor, "adding a user")
    elif session.scalar(select(func.count()).select_from(User)):
        raise InvalidInputError("the first user already exists", "pass the acting user")
    if session.get(User, login) is not None:
        raise AlreadyExistsError(
            f"user {login!r} already exists", "use `hpcgear role grant` to give them access"
        )
    user = User(login=login, site_admin=site_admin)
    session.add(user)
    session.flush()
    return user


def list_users(session: Session, actor: str) -> list[User]:
    get_actor(session, actor)
    return list(session.scalars(select(User).order_by(User.login)))


def grant_role(session: Session, actor: str, login: str, path: str, role: str) -> Role:
    role_name = RoleName.parse(role)
    target = resolve_container(session, path, max_depth=2)
    require_role(session, actor, target, RoleName.ADMIN, "granting a role")
    if session.get(User, login) is None:
        raise NotFoundError(
            f"user {login!r} does not exist",
            f"a site admin can add them: `hpcgear user add {login}`",
        )
    existing = session.scalar(
        select(Role).where(Role.user_login == login, Role.container_id == target.id)
    )
    if existing is not None:
        existing.role = role_name.value
        existing.granted_by = actor
        session.flush()
        return existing
    row = Role(user_login=login, container_id=target.id, role=role_name.value, granted_by=actor)
    session.add(row)
    session.flush()
    return row


def revoke_role(session: Session, actor: str, login: str, path: str) -> bool:
    target = resolve_container(session, path, max_depth=2)
    require_role(session, actor, target, RoleName.ADMIN, "revoking a role")
    row = session.scalar(
        select(Role).where(Role.user_login == login, Role.container_id == target.id)
    )
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def list_roles(session: Session, actor: str, path: str = "") -> list[dict[str, Any]]:
    """Roles on a group/project (its admins may look), or all roles (site admins)."""
    user = get_actor(session, actor)
    q = select(Role, Container).join(Container, Container.id == Role.container_id)
    if (path or "").strip().strip("/"):
        target = resolve_container(session, path, max_depth=2)
        require_role(session, actor, target, RoleName.ADMIN, "listing roles")
        scope = [target.id] if target.type == "group" else [target.group_id, target.id]
        q = q.where(Role.container_id.in_(scope))
    elif not user.site_admin:
        q = q.where(Role.user_login == actor)
    rows = session.execute(q.order_by(Container.group_id, Container.label, Role.user_login))
    return [
        {
            "user": r.user_login,
            "role": r.role,
            "path": container_path(session, c),
            "level": c.type,
            "granted_by": r.granted_by,
        }
        for r, c in rows
    ]


# ---------------------------------------------------------------- containers


def create_group(
    session: Session, actor: str, group_id: str, label: str | None = None
) -> Container:
    check_group_id(group_id)
    label = check_label(label or group_id, what="group label")
    require_site_admin(session, actor, "creating a group")
    if session.get(Container, group_id) is not None:
        raise AlreadyExistsError(f"group {group_id!r} already exists", "pick another group id")
    group = Container(
        id=group_id,
        type="group",
        label=label,
        label_key=group_id,
        parent_id=None,
        group_id=group_id,
        created_by=actor,
        info={},
        tags=[],
    )
    session.add(group)
    session.flush()
    return group


def create_project(session: Session, actor: str, path: str) -> Container:
    hp = HierarchyPath.parse(path, min_depth=2, max_depth=2)
    group_id, label = hp.parts
    check_label(label, what="project label")
    group = _get_group(session, group_id)
    require_role(session, actor, group, RoleName.ADMIN, "creating a project")
    if _child(session, group, label) is not None:
        raise AlreadyExistsError(
            f"project {path!r} already exists",
            "pick another label, or upload into the existing project",
        )
    return create_child(session, group, "project", label, actor)


def _get_group(session: Session, group_id: str) -> Container:
    group = session.get(Container, group_id)
    if group is None or group.type != "group":
        raise NotFoundError(
            f"group {group_id!r} does not exist",
            "list groups with `hpcgear ls`; a site admin creates them with `hpcgear group create`",
        )
    return group


def _child(session: Session, parent: Container, label: str) -> Container | None:
    return session.scalar(
        select(Container).where(
            Container.parent_id == parent.id,
            Container.label_key == label,
            Container.type != "analysis",
        )
    )


def create_child(
    session: Session,
    parent: Container,
    ctype: str,
    label: str,
    actor: str,
    *,
    natural_key: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> Container:
    cid = new_id()
    row = Container(
        id=cid,
        type=ctype,
        label=label,
        label_key=cid if ctype == "analysis" else label,
        parent_id=parent.id,
        group_id=parent.group_id,
        project_id=parent.project_id,
        subject_id=parent.subject_id,
        session_id=parent.session_id,
        acquisition_id=parent.acquisition_id,
        natural_key=natural_key,
        info=dict(info or {}),
        tags=[],
        created_by=actor,
    )
    if ctype in ("project", "subject", "session", "acquisition"):
        setattr(row, f"{ctype}_id", cid)
    session.add(row)
    session.flush()
    return row


def resolve_container(
    session: Session, path: str, *, min_depth: int = 1, max_depth: int = len(LEVELS)
) -> Container:
    """Walk ``group/project/...`` by labels; NotFoundError names the missing level.

    Below a project, a segment that names no subject/session/acquisition may
    name an analysis (its label or ``@ID``, see ``hierarchy.analyses``); an
    analysis is always the last container of a path.
    """
    from hpcgear.hierarchy.analyses import find_analysis

    extra = 1 if max_depth >= len(LEVELS) else 0  # an analysis below an acquisition
    hp = HierarchyPath.parse(path, min_depth=min_depth, max_depth=max_depth + extra)
    node = _get_group(session, hp.parts[0])
    for depth, label in enumerate(hp.parts[1:], start=1):
        parent = "/".join(hp.parts[:depth])
        if node.type == "analysis":
            raise NotFoundError(
                f"{label!r} does not exist in {parent}: analysis {node.label!r} holds files only",
                f"list its files with `hpcgear ls {parent}`",
            )
        child = _child(session, node, label) if depth < len(LEVELS) else None
        if child is None and depth >= 2 and max_depth > 2:
            child = find_analysis(session, node, label)
        if child is None:
            what = LEVELS[depth] if depth < len(LEVELS) else "analysis"
            if 2 <= depth < len(LEVELS):
                what += " or analysis"
            raise NotFoundError(
                f"{what} {label!r} does not exist in {parent}",
                f"list what exists with `hpcgear ls {parent}`",
            )
        node = child
    return node


def ensure_path(session: Session, actor: str, path: str) -> Container:
    """Resolve a path, creating missing subject/session/acquisition levels.

    Groups and projects are never created here (they need admin roles).
    """
    hp = HierarchyPath.parse(path, min_depth=2)
    for label in hp.parts[1:]:
        check_label(label)
    project = resolve_container(session, "/".join(hp.parts[:2]))
    require_role(session, actor, project, RoleName.READ_WRITE, "uploading")
    from hpcgear.hierarchy.analyses import find_analysis

    node = project
    for depth, label in enumerate(hp.parts[2:], start=2):
        child = _child(session, node, label)
        if child is None:
            if find_analysis(session, node, label) is not None:
                raise InvalidInputError(
                    f"{'/'.join(hp.parts[: depth + 1])} is an analysis: it holds one job's "
                    "outputs and takes no uploads",
                    "upload into a project, subject, session or acquisition",
                )
            child = create_child(session, node, LEVELS[depth], label, actor)
        node = child
    return node


def container_path(session: Session, container: Container) -> str:
    """Human path of a container (labels; group id first; analyses as ``analysis_segment``)."""
    from hpcgear.hierarchy.analyses import analysis_segment

    parts: list[str] = []
    node: Container | None = container
    while node is not None:
        if node.type == "analysis":
            parts.append(analysis_segment(session, node))
        else:
            parts.append(node.id if node.type == "group" else node.label)
        node = session.get(Container, node.parent_id) if node.parent_id else None
    return "/".join(reversed(parts))


# --------------------------------------------------------------------- files


def upload_files(
    session: Session,
    store: ObjectStore,
    actor: str,
    path: str,
    files: Sequence[Path],
    *,
    origin_type: str = "user",
    origin_id: str | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    deidentified: bool = False,
) -> list[UploadResult]:
    """Upload local files to a container, creating missing levels below the project.

    All sources are checked before anything is stored. Bytes go to the object
    store first (content addressed, so an interrupted upload leaves at most an
    unreferenced object); rows are added in the caller's transaction.
    Re-uploading identical bytes under the same name is a no-op; different
    bytes make a new version. ``hpcgear upload`` runs the Core twin,
    :func:`hpcgear.hierarchy.uploads.store_upload`.
    """
    names = check_sources(expand_directories([Path(f) for f in files]))
    target = ensure_path(session, actor, path)
    if not deidentified:
        _refuse_identifying_upload(session, target, names)
    objects = store.put_files(list(names.values()))
    return add_file_versions(
        session,
        target,
        [
            (name, obj.hash, obj.size, (metadata or {}).get(name))
            for name, obj in zip(names, objects, strict=True)
        ],
        actor,
        origin_type=origin_type,
        origin_id=origin_id or actor,
    )


def _refuse_identifying_upload(
    session: Session, target: Container, names: Mapping[str, Path]
) -> None:
    """A project with a de-identification profile takes DICOM only de-identified.

    The de-identifying upload is ``hpcgear.ingest.upload.upload_deidentified``
    (what ``hpcgear upload`` calls); this guard keeps any other caller from
    storing identifying DICOM there.
    """
    if target.project_id is None or session.get(ProjectDeidProfile, target.project_id) is None:
        return
    dicom = sorted(n for n, p in names.items() if looks_like_dicom(p))
    if dicom:
        raise PermissionDeniedError(
            f"project has a de-identification profile; {', '.join(dicom)} would be stored "
            "without it",
            "upload with `hpcgear upload` (it de-identifies), not through this call",
        )


def add_file_version(
    session: Session,
    container: Container,
    name: str,
    digest: str,
    size: int,
    actor: str,
    *,
    origin_type: str,
    origin_id: str,
    metadata: Mapping[str, Any] | None = None,
) -> UploadResult:
    """Attach stored bytes to ``container`` as file ``name`` (a new version if changed)."""
    return add_file_versions(
        session,
        container,
        [(name, digest, size, metadata)],
        actor,
        origin_type=origin_type,
        origin_id=origin_id,
    )[0]


def add_file_versions(
    session: Session,
    container: Container,
    items: Sequence[tuple[str, str, int, Mapping[str, Any] | None]],
    actor: str,
    *,
    origin_type: str,
    origin_id: str,
) -> list[UploadResult]:
    """``add_file_version`` for many ``(name, digest, size, metadata)`` at once.

    The container's existing files and their current versions are read in a
    few queries and everything is written in one flush, so an upload of a
    thousand files costs a handful of statements rather than four per file.
    """
    for name, *_ in items:
        check_file_name(name)
    names = [name for name, *_ in items]
    rows: dict[str, File] = {}
    for start in range(0, len(names), 500):
        rows.update(
            (f.name, f)
            for f in session.scalars(
                select(File).where(
                    File.container_id == container.id, File.name.in_(names[start : start + 500])
                )
            )
        )
    current_hash: dict[str, str] = {}
    files = list(rows.values())
    for start in range(0, len(files), 500):
        chunk_ids = [f.id for f in files[start : start + 500]]
        current_hash.update(
            session.execute(
                select(FileVersion.file_id, FileVersion.hash)
                .join(
                    File,
                    (File.id == FileVersion.file_id)
                    & (File.current_version == FileVersion.version),
                )
                .where(File.id.in_(chunk_ids))
            ).all()
        )
    results: list[UploadResult] = []
    changed = False
    for name, digest, size, metadata in items:
        row = rows.get(name)
        if row is not None:
            if current_hash.get(row.id) == digest:
                if metadata:
                    apply_file_metadata(session, row, metadata, actor)
                results.append(
                    UploadResult(name, row.id, row.current_version, digest, size, created=False)
                )
                continue
            row.current_version += 1
        else:
            row = File(
                id=new_id(),
                container_id=container.id,
                project_id=container.project_id,
                name=name,
                current_version=1,
                classification={},
                tags=[],
                info={},
                type=guess_file_type(name),
            )
            session.add(row)
            rows[name] = row
        current_hash[row.id] = digest
        if metadata:
            _apply_metadata_fields(row, metadata)
        session.add(
            FileVersion(
                file_id=row.id,
                version=row.current_version,
                hash=digest,
                size=size,
                origin_type=origin_type,
                origin_id=origin_id,
            )
        )
        session.add(
            ChangeLog(
                kind="file.version",
                container_id=container.id,
                file_id=row.id,
                file_version=row.current_version,
                actor=actor,
            )
        )
        changed = True
        results.append(UploadResult(name, row.id, row.current_version, digest, size, created=True))
    if changed:
        container.modified = dt.datetime.now(dt.UTC)
    session.flush()
    return results


_META_KEYS = ("type", "modality", "classification", "tags", "info")


def _apply_metadata_fields(row: File, metadata: Mapping[str, Any]) -> None:
    unknown = set(metadata) - set(_META_KEYS)
    if unknown:
        raise InvalidInputError(
            f"unknown file metadata keys {sorted(unknown)}", f"valid keys: {', '.join(_META_KEYS)}"
        )
    if "type" in metadata:
        row.type = metadata["type"]
    if "modality" in metadata:
        row.modality = metadata["modality"]
    if "classification" in metadata:
        row.classification = dict(metadata["classification"] or {})
    if "tags" in metadata:
        row.tags = sorted({check_tag(t) for t in metadata["tags"]})
    if "info" in metadata:
        check_storable(metadata["info"], "file info")
        row.info = {**(row.info or {}), **dict(metadata["info"])}


def apply_file_metadata(
    session: Session, row: File, metadata: Mapping[str, Any], actor: str
) -> None:
    _apply_metadata_fields(row, metadata)
    log_meta_change(session, actor, row.container_id, row)
    session.flush()


def find_file(session: Session, container: Container, name: str) -> File:
    row = session.scalar(select(File).where(File.container_id == container.id, File.name == name))
    if row is None:
        raise NotFoundError(
            f"no file {name!r} on {container.type} {container.label!r}",
            "list files with `hpcgear ls PATH`",
        )
    return row


def file_version(session: Session, row: File, version: int | None = None) -> FileVersion:
    v = row.current_version if version is None else version
    fv = session.scalar(
        select(FileVersion).where(FileVersion.file_id == row.id, FileVersion.version == v)
    )
    if fv is None:
        raise NotFoundError(
            f"file {row.name!r} has no version {v}", f"versions are 1..{row.current_version}"
        )
    return fv


def resolve_file(
    session: Session, actor: str, path: str, needed: RoleName
) -> tuple[Container, File]:
    """``group/project/.../NAME`` -> (container, file), checking ``needed`` on it."""
    HierarchyPath.parse(path, max_depth=len(LEVELS) + 1)  # refuses surrounding whitespace
    text = (path or "").strip("/")
    if "/" not in text:
        raise InvalidInputError(
            f"{path!r} is not a file path", "write group/project[/subject/session/acquisition]/FILE"
        )
    parent, name = text.rsplit("/", 1)
    container = resolve_container(session, parent, min_depth=2)
    require_role(
        session, actor, container, needed, "reading files" if needed.rank == 1 else "changing files"
    )
    return container, find_file(session, container, name)


def download_file(
    session: Session,
    store: ObjectStore,
    actor: str,
    path: str,
    out_dir: Path,
    *,
    version: int | None = None,
) -> tuple[Path, FileVersion]:
    _container, row = resolve_file(session, actor, path, RoleName.READ_ONLY)
    fv = file_version(session, row, version)
    dest = Path(out_dir) / row.name
    store.copy_to(fv.hash, dest)
    return dest, fv


def delete_file_version(
    session: Session, store: ObjectStore, actor: str, path: str, version: int
) -> bool:
    """Delete one version; its bytes go only if no other version shares them."""
    _container, row = resolve_file(session, actor, path, RoleName.READ_WRITE)
    fv = file_version(session, row, version)
    digest = fv.hash
    session.delete(fv)
    session.flush()
    remaining = session.scalars(
        select(FileVersion.version)
        .where(FileVersion.file_id == row.id)
        .order_by(FileVersion.version)
    ).all()
    if not remaining:
        session.delete(row)
    elif version == row.current_version:
        row.current_version = remaining[-1]
    session.flush()
    from hpcgear.hierarchy.manage import hash_references

    # Bytes stay while a version, a provenance record, a job or the trash names them.
    if hash_references(session, digest) is None:
        # Deleting the object after the row: a crash in between leaves an orphan
        # object (harmless), never a row pointing at missing bytes.
        store.delete(digest)
        return True
    return False


# --------------------------------------------------------------- info, tags


def parse_key_values(pairs: Iterable[str]) -> dict[str, Any]:
    """``a.b=1`` -> {"a": {"b": 1}}; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidInputError(f"{pair!r} is not key=value", "write e.g. scanner=prisma")
        key, raw = pair.split("=", 1)
        keys = key.split(".")
        if any(not k or k.startswith("$") or k != k.strip() for k in keys):
            raise InvalidInputError(
                f"bad info key {key!r}", "keys are dot-separated names without spaces or '$'"
            )
        check_identifier(key, "info key")
        value: Any = json_or_text(raw, f"info value of {key!r}")
        check_storable(value, f"info value of {key!r}")
        node = out
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise InvalidInputError(
                    f"info key {key!r} conflicts with another key",
                    "set nested keys in one form only",
                )
            node = nxt
        node[keys[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass(slots=True)
class Target:
    """A container or a file addressed by a path."""

    container: Container
    file: File | None = None
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_target(session: Session, path: str) -> Target:
    """A path to a container, or to a file when the last part names one."""
    hp = HierarchyPath.parse(path, min_depth=1, max_depth=len(LEVELS) + 2)
    if hp.depth <= len(LEVELS) + 1:
        try:
            return Target(resolve_container(session, path), path=path)
        except NotFoundError:
            if hp.depth < 3:
                raise
    parent = "/".join(hp.parts[:-1])
    container = resolve_container(session, parent, min_depth=2)
    row = session.scalar(
        select(File).where(File.container_id == container.id, File.name == hp.parts[-1])
    )
    if row is None:
        raise NotFoundError(
            f"{path!r} is neither a container nor a file",
            f"list what exists with `hpcgear ls {parent}`",
        )
    return Target(container, row, path=path)


def set_info(session: Session, actor: str, path: str, pairs: Sequence[str]) -> dict[str, Any]:
    values = parse_key_values(pairs)
    if not values:
        raise InvalidInputError("nothing to set", "give at least one key=value")
    target = resolve_target(session, path)
    require_role(session, actor, target.container, RoleName.READ_WRITE, "setting info")
    # Read-modify-write of a JSON column: lock the row so concurrent setters merge.
    lock_for_update(session, target.file if target.file is not None else target.container)
    if target.file is not None:
        target.file.info = _deep_merge(target.file.info or {}, values)
        log_meta_change(session, actor, target.container.id, target.file)
        session.flush()
        return target.file.info
    target.container.info = _deep_merge(target.container.info or {}, values)
    session.add(ChangeLog(kind="container.meta", container_id=target.container.id, actor=actor))
    session.flush()
    return target.container.info


def change_tags(
    session: Session, actor: str, path: str, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> list[str]:
    for t in [*add, *remove]:
        check_tag(t)
    target = resolve_target(session, path)
    require_role(session, actor, target.container, RoleName.READ_WRITE, "changing tags")
    obj: Container | File = target.file if target.file is not None else target.container
    lock_for_update(session, obj)  # concurrent tag changes must not overwrite each other
    current = list(obj.tags or [])
    missing = [t for t in remove if t not in current]
    if missing:
        raise NotFoundError(
            f"tag(s) {', '.join(map(repr, missing))} not on {path}",
            f"current tags: {', '.join(current) or 'none'}",
        )
    new = [t for t in current if t not in remove] + [t for t in add if t not in current]
    obj.tags = new
    kind = "file.meta" if target.file is not None else "container.meta"
    session.add(
        ChangeLog(
            kind=kind,
            container_id=target.container.id,
            file_id=target.file.id if target.file else None,
            file_version=target.file.current_version if target.file else None,
            actor=actor,
        )
    )
    session.flush()
    return new


# ------------------------------------------------------------------- listing


def _container_entry(c: Container, role: RoleName | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": c.type,
        "id": c.id,
        "label": c.label,
        "tags": list(c.tags or []),
        "info": c.info or {},
        "created": c.created.isoformat() if c.created else None,
    }
    if c.natural_key:
        entry["natural_key"] = c.natural_key
    if c.job_id:
        entry["job_id"] = c.job_id
    if role is not None:
        entry["role"] = role.value
    return entry


def _file_entry(f: File, fv: FileVersion | None) -> dict[str, Any]:
    return {
        "kind": "file",
        "id": f.id,
        "name": f.name,
        "version": f.current_version,
        "size": fv.size if fv else None,
        "hash": fv.hash if fv else None,
        "origin": {"type": fv.origin_type, "id": fv.origin_id} if fv else None,
        "type": f.type,
        "modality": f.modality,
        "classification": f.classification or {},
        "tags": list(f.tags or []),
        "info": f.info or {},
    }


def list_path(session: Session, actor: str, path: str = "") -> list[dict[str, Any]]:
    """Children and files of a container (or the groups the actor can see)."""
    user = get_actor(session, actor)
    if not (path or "").strip().strip("/"):
        groups = session.scalars(
            select(Container).where(Container.type == "group").order_by(Container.id)
        ).all()
        out = []
        for g in groups:
            role = effective_role(session, user, g)
            visible = role is not None or bool(_visible_projects(session, user, g))
            if visible:
                out.append(_container_entry(g, role))
        return out
    node = resolve_container(session, path)
    if node.type == "group":
        role = effective_role(session, user, node)
        projects = session.scalars(
            select(Container).where(Container.parent_id == node.id).order_by(Container.label)
        ).all()
        if role is None:
            allowed = _visible_projects(session, user, node)
            if not allowed:
                require_role(session, actor, node, RoleName.READ_ONLY, "listing")
            projects = [p for p in projects if p.id in allowed]
        return [_container_entry(p) for p in projects]
    require_role(session, actor, node, RoleName.READ_ONLY, "listing")
    children = session.scalars(
        select(Container)
        .where(Container.parent_id == node.id)
        .order_by(Container.type, Container.label)
    ).all()
    files = session.scalars(
        select(File).where(File.container_id == node.id).order_by(File.name)
    ).all()
    versions = (
        {
            (fv.file_id, fv.version): fv
            for fv in session.scalars(
                select(FileVersion).where(FileVersion.file_id.in_([f.id for f in files]))
            )
        }
        if files
        else {}
    )
    return [_container_entry(c) for c in children] + [
        _file_entry(f, versions.get((f.id, f.current_version))) for f in files
    ]


def _visible_projects(session: Session, user: User, group: Container) -> set[str]:
    rows = session.scalars(
        select(Role.container_id)
        .join(Container, Container.id == Role.container_id)
        .where(Role.user_login == user.login, Container.parent_id == group.id)
    ).all()
    return set(rows)
