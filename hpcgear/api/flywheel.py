"""The Flywheel-compatible REST subset that ``flywheel-sdk`` calls.

Shapes follow the SDK's models: ids under ``_id``, ``container_type`` on every
container, ``parents``, ``files`` embedded, lists as bare JSON arrays paged with
``limit`` and ``after_id`` (ordered by id), ``filter=`` with Flywheel's
``key=value,key=~regex,key!=value`` syntax. Every route calls the service layer
with the caller's login; the job-key scope is checked in ``access``.
"""

from __future__ import annotations

import datetime as dt
import json
import mimetypes
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from hpcgear import __version__
from hpcgear.api.access import Caller, can_read, check_scope, get_container, require_user_key
from hpcgear.api.app import ApiState, CallerDep, StateDep, retried
from hpcgear.db.models import Container, File, FileVersion, Gear, Job, Role, User
from hpcgear.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from hpcgear.hierarchy.permissions import RoleName, get_actor

router = APIRouter()
# routes with a {collection} parameter: included after the fixed ones so they do not
# shadow /jobs/{id}, /gears/{id}, /users/{id}
generic = APIRouter()

TYPES = ("group", "project", "subject", "session", "acquisition", "analysis")
LEVEL_ORDER = ("group", "project", "subject", "session", "acquisition")
# hpcgear job state -> Flywheel job state
JOB_STATES = {
    "pending": "pending",
    "submitting": "pending",
    "queued": "pending",
    "running": "running",
    "staging": "running",
    "complete": "complete",
    "failed": "failed",
    "cancelled": "cancelled",
}


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()


def collection_type(collection: str) -> str | None:
    """``sessions`` -> ``session``; ``containers`` -> None (any type)."""
    if collection == "containers":
        return None
    if collection == "analyses":
        return "analysis"
    if collection.endswith("s") and collection[:-1] in TYPES:
        return collection[:-1]
    raise NotFoundError(f"no such collection {collection!r}", "see /docs for the routes")


# -------------------------------------------------------------------- shapes


def parents_of(c: Container) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for level in LEVEL_ORDER:
        if level == c.type:
            break
        out[level] = getattr(c, f"{level}_id") if level != "group" else c.group_id
    if c.type == "analysis":
        out = {lvl: (c.group_id if lvl == "group" else getattr(c, f"{lvl}_id"))
               for lvl in LEVEL_ORDER}
    return out


def file_doc(c: Container, f: File, fv: FileVersion | None) -> dict[str, Any]:
    return {
        "_id": f.id,
        "file_id": f.id,
        "name": f.name,
        "version": fv.version if fv else f.current_version,
        "size": fv.size if fv else None,
        "hash": (fv.hash.split(":", 1)[-1] if fv else None),
        "mimetype": mimetypes.guess_type(f.name)[0] or "application/octet-stream",
        "type": f.type,
        "modality": f.modality,
        "classification": f.classification or {},
        "tags": list(f.tags or []),
        "info": f.info or {},
        "origin": {"type": fv.origin_type, "id": fv.origin_id} if fv else None,
        "parent_ref": {"type": c.type, "id": c.id},
        "parents": {**parents_of(c), c.type: c.id},
        "created": iso(fv.created if fv else f.created),
        "modified": iso(f.modified),
    }


def files_of(session: Session, c: Container) -> list[dict[str, Any]]:
    files = session.scalars(
        select(File).where(File.container_id == c.id).order_by(File.name)
    ).all()
    if not files:
        return []
    versions = {
        (fv.file_id, fv.version): fv
        for fv in session.scalars(
            select(FileVersion).where(FileVersion.file_id.in_([f.id for f in files]))
        )
    }
    return [file_doc(c, f, versions.get((f.id, f.current_version))) for f in files]


def container_doc(session: Session, c: Container, *, files: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {
        "_id": c.id,
        "label": c.label,
        "container_type": c.type,
        "info": c.info or {},
        "tags": list(c.tags or []),
        "parents": parents_of(c),
        "created": iso(c.created),
        "modified": iso(c.modified),
    }
    if c.type != "group":
        d["group"] = c.group_id
    if c.type in ("subject", "session", "acquisition"):
        d["project"] = c.project_id
    if c.type == "subject":
        d["code"] = c.label
    if c.type == "session" and c.subject_id:
        subject = session.get(Container, c.subject_id)
        if subject is not None:
            d["subject"] = {
                "_id": subject.id,
                "label": subject.label,
                "code": subject.label,
                "container_type": "subject",
                "parents": parents_of(subject),
            }
    if c.type == "acquisition":
        d["session"] = c.session_id
    if c.type == "analysis":
        parent = session.get(Container, c.parent_id) if c.parent_id else None
        d["parent"] = {"type": parent.type, "id": parent.id} if parent else None
        d["job"] = c.job_id
        job = session.get(Job, c.job_id) if c.job_id else None
        if job is not None:
            gear = session.get(Gear, job.gear_id)
            if gear is not None:
                d["gear_info"] = {
                    "id": str(gear.id),
                    "name": gear.name,
                    "version": gear.version,
                    "category": gear.category,
                }
            d["inputs"] = [
                {"name": i.get("file_name"), "file_id": i.get("file_id"),
                 "version": i.get("version")}
                for i in job.inputs or [] if i.get("base") == "file"
            ]
    if files:
        d["files"] = files_of(session, c)
        if c.type in ("project", "subject", "session", "acquisition"):
            d["analyses"] = [
                container_doc(session, a, files=False)
                for a in session.scalars(
                    select(Container)
                    .where(Container.parent_id == c.id, Container.type == "analysis")
                    .order_by(Container.id)
                )
            ]
    return d


def gear_doc(g: Gear) -> dict[str, Any]:
    return {
        "_id": str(g.id),
        "category": g.category if g.category in ("utility", "analysis", "converter", "qa",
                                                 "classifier") else "utility",
        "gear": g.manifest,
        "created": iso(g.installed),
        "modified": iso(g.installed),
        "disabled": iso(g.installed) if g.disabled else None,
    }


def job_doc(session: Session, job: Job, *, inputs_as_list: bool) -> dict[str, Any]:
    gear = session.get(Gear, job.gear_id)
    files = [i for i in job.inputs or [] if i.get("base") == "file"]
    refs = {
        i["name"]: {"type": i.get("container_type"), "id": i.get("container_id"),
                    "name": i.get("file_name")}
        for i in files
    }
    inputs: Any = (
        [{"input": n, **r} for n, r in refs.items()] if inputs_as_list else refs
    )
    analysis = session.scalar(
        select(Container.id).where(Container.type == "analysis", Container.job_id == job.id)
    )
    dest = (
        {"type": "analysis", "id": analysis}
        if analysis
        else {"type": job.destination_type, "id": job.destination_id}
    )
    return {
        "_id": job.id,
        "gear_id": str(job.gear_id),
        "gear_info": {
            "id": str(job.gear_id),
            "name": gear.name if gear else None,
            "version": gear.version if gear else None,
            "category": gear.category if gear else None,
        },
        "rule_id": str(job.rule_id) if job.rule_id else None,
        "inputs": inputs,
        "destination": dest,
        "tags": list(job.tags or []),
        "priority": job.priority,
        "attempt": job.attempt,
        "previous_job_id": job.previous_id,
        "state": JOB_STATES.get(job.state, "pending"),
        "failure_reason": job.failure_kind,
        "config": {"config": job.config or {}, "inputs": refs,
                   "destination": {"type": job.destination_type, "id": job.destination_id}},
        "origin": {"type": job.origin_type, "id": job.origin_id},
        "parents": {
            lvl: v for lvl, v in (("project", job.project_id),) if v
        },
        "created": iso(job.created),
        "modified": iso(job.modified),
        "hpcgear": {"state": job.state, "site": job.site, "native_id": job.native_id,
                    "failure_message": job.failure_message},
    }


# ------------------------------------------------------------------ filtering


_FILTER_RE = re.compile(r"^([A-Za-z0-9_.]+)(=~|!=|=|<=|>=|<|>)(.*)$")


def parse_filter(text: str | None) -> list[tuple[str, str, str]]:
    if not text:
        return []
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = _FILTER_RE.match(part)
        if m is None:
            raise InvalidInputError(
                f"cannot read filter {part!r}", "write key=value, key!=value or key=~regex"
            )
        key, op, value = m.groups()
        if op == "=~":
            try:
                re.compile(value)
            except re.error:
                raise InvalidInputError(f"bad regex in filter {part!r}", "fix the regex") from None
        out.append((key, op, value.strip('"')))
    return out


def _lookup(doc: Mapping[str, Any], key: str) -> Any:
    node: Any = doc
    for part in key.split("."):
        if part == "id":
            part = "_id"
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def matches(doc: Mapping[str, Any], filters: Sequence[tuple[str, str, str]]) -> bool:
    for key, op, want in filters:
        got = _lookup(doc, key)
        values = [str(v) for v in got] if isinstance(got, list) else [
            "" if got is None else str(got)]
        if op == "=":
            ok = want in values
        elif op == "!=":
            ok = want not in values
        elif op == "=~":
            ok = any(re.search(want, v) for v in values)
        else:
            v0 = values[0] if values else ""
            ok = {"<": v0 < want, ">": v0 > want, "<=": v0 <= want, ">=": v0 >= want}[op]
        if not ok:
            return False
    return True


def page(
    docs: Iterator[dict[str, Any]], filters: Sequence[tuple[str, str, str]], limit: int | None
) -> list[dict[str, Any]]:
    out = []
    for d in docs:
        if matches(d, filters):
            out.append(d)
            if limit is not None and len(out) >= limit:
                break
    return out


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and limit < 0:
        raise InvalidInputError("limit must not be negative", "use limit=N with N >= 0")
    return limit


def visible_scope(session: Session, caller: Caller) -> tuple[bool, set[str]]:
    """(site admin?, container ids the caller holds roles on: groups and projects)."""
    user = get_actor(session, caller.login)
    if user.site_admin and caller.job_id is None:
        return True, set()
    ids = set(session.scalars(select(Role.container_id).where(Role.user_login == user.login)))
    return False, ids


def list_containers(
    session: Session,
    caller: Caller,
    ctype: str,
    *,
    parent_id: str | None = None,
    filter_text: str | None = None,
    limit: int | None = None,
    after_id: str | None = None,
    files: bool = False,
) -> list[dict[str, Any]]:
    filters = parse_filter(filter_text)
    limit = _check_limit(limit)
    admin, ids = visible_scope(session, caller)
    q = select(Container).where(Container.type == ctype).order_by(Container.id)
    if parent_id is not None:
        q = q.where(Container.parent_id == parent_id)
    if after_id:
        q = q.where(Container.id > after_id)
    if caller.job_id is not None:  # a job key lists only what its job may read
        from hpcgear.api.access import job_scope

        q = q.where(Container.id.in_(job_scope(session, caller.job_id)[0]))
    elif not admin:
        if ctype == "group":
            projects = select(Container.group_id).where(Container.id.in_(ids))
            q = q.where(or_(Container.id.in_(ids), Container.id.in_(projects)))
        else:
            q = q.where(or_(Container.group_id.in_(ids), Container.project_id.in_(ids)))

    def docs() -> Iterator[dict[str, Any]]:
        for c in session.scalars(q.execution_options(yield_per=500)):
            if caller.job_id is not None and not can_read(session, caller, c):
                continue
            yield container_doc(session, c, files=files)

    return page(docs(), filters, limit)


# ------------------------------------------------------------------- auth


@router.get("/auth/status")
def auth_status(caller: CallerDep, st: StateDep) -> dict[str, Any]:
    with st.session() as s:
        user = get_actor(s, caller.login)
        return {
            "origin": {"type": "user", "id": caller.login},
            "user_id": caller.login,
            "user_is_admin": bool(user.site_admin) and caller.job_id is None,
            "is_device": False,
            "roles": ["site_admin"] if user.site_admin else [],
        }


def _user_doc(user: User) -> dict[str, Any]:
    return {
        "_id": user.login,
        "user_id": user.login,
        "firstname": user.login,
        "lastname": "",
        "email": f"{user.login}@localhost",
        "root": bool(user.site_admin),
        "roles": ["site_admin"] if user.site_admin else [],
        "disabled": False,
        "created": iso(user.created),
        "modified": iso(user.created),
        "info": {},
    }


@router.get("/users/self")
def users_self(caller: CallerDep, st: StateDep) -> dict[str, Any]:
    with st.session() as s:
        return _user_doc(get_actor(s, caller.login))


@router.get("/users/{user_id}")
def get_user(user_id: str, caller: CallerDep, st: StateDep) -> dict[str, Any]:
    with st.session() as s:
        me = get_actor(s, caller.login)
        if user_id != caller.login and not me.site_admin:
            raise PermissionDeniedError(
                f"reading user {user_id!r} needs the site-admin role", "read /users/self"
            )
        user = s.get(User, user_id)
        if user is None:
            raise NotFoundError(f"user {user_id!r} does not exist", "list users (site admins)")
        return _user_doc(user)


@router.get("/config")
def get_config(st: StateDep) -> dict[str, Any]:
    return {
        "site": {"id": "hpcgear", "name": "hpcgear", "api_url": st.settings.api_url},
        "features": {},
        "signed_url": False,
        "created": None,
        "modified": None,
    }


@router.get("/version")
def get_version() -> dict[str, Any]:
    return {"_id": "version", "release": __version__, "flywheel_release": "hpcgear-" + __version__,
            "database": 0}


# -------------------------------------------------------------- hierarchy


def _list_route(ctype: str, collection: str) -> None:
    def handler(
        caller: CallerDep,
        st: StateDep,
        filter: str | None = None,
        limit: int | None = None,
        after_id: str | None = None,
    ) -> list[dict[str, Any]]:
        with st.session() as s:
            return list_containers(
                s, caller, ctype, filter_text=filter, limit=limit, after_id=after_id
            )

    handler.__name__ = f"list_{collection}"
    router.add_api_route(f"/{collection}", handler, methods=["GET"], name=f"list {collection}")


for _t in ("group", "project", "subject", "session", "acquisition"):
    _list_route(_t, _t + "s")


@router.get("/analyses")
def list_analyses(
    caller: CallerDep,
    st: StateDep,
    filter: str | None = None,
    limit: int | None = None,
    after_id: str | None = None,
) -> list[dict[str, Any]]:
    with st.session() as s:
        return list_containers(
            s, caller, "analysis", filter_text=filter, limit=limit, after_id=after_id, files=True
        )


_CHILD = {"group": "project", "project": "subject", "subject": "session",
          "session": "acquisition"}


@generic.get("/{collection}/{cid}/{children}")
def list_children(
    collection: str,
    cid: str,
    children: str,
    caller: CallerDep,
    st: StateDep,
    filter: str | None = None,
    limit: int | None = None,
    after_id: str | None = None,
) -> list[dict[str, Any]]:
    """``/projects/{id}/subjects``, ``/projects/{id}/sessions``, ``/sessions/{id}/acquisitions``,
    ``/{type}s/{id}/analyses``, ``/{type}s/{id}/files``."""
    ctype = collection_type(collection)
    with st.session() as s:
        group = s.get(Container, cid)
        if group is not None and group.type == "group" and children == "projects":
            _group(s, caller, cid)  # visible through a role on the group or one project
            return list_containers(s, caller, "project", parent_id=cid, filter_text=filter,
                                   limit=limit, after_id=after_id)
        c = get_container(s, caller, cid)
        if ctype is not None and c.type != ctype:
            raise NotFoundError(f"{ctype} {cid!r} does not exist", "check the id")
        if children == "files":
            return files_of(s, c)
        if children == "analyses":
            return list_containers(
                s, caller, "analysis", parent_id=c.id, filter_text=filter, limit=limit,
                after_id=after_id, files=True,
            )
        want = collection_type(children)
        if want is None or want not in _CHILD.values():
            raise NotFoundError(f"no route /{collection}/ID/{children}", "see /docs")
        # sessions of a project skip the subject level (Flywheel allows both)
        level = f"{c.type}_id" if c.type != "group" else "group_id"
        filters = parse_filter(filter)
        q = (
            select(Container)
            .where(Container.type == want, getattr(Container, level) == c.id)
            .order_by(Container.id)
        )
        if after_id:
            q = q.where(Container.id > after_id)
        docs = (
            container_doc(s, x, files=False)
            for x in s.scalars(q)
            if caller.job_id is None or can_read(s, caller, x)
        )
        return page(docs, filters, _check_limit(limit))


@generic.get("/{collection}/{cid}")
def get_one(collection: str, cid: str, caller: CallerDep, st: StateDep) -> dict[str, Any]:
    ctype = collection_type(collection)
    with st.session() as s:
        if ctype == "group":
            return _group(s, caller, cid)
        c = get_container(s, caller, cid)
        if ctype is not None and c.type != ctype:
            raise NotFoundError(f"{ctype} {cid!r} does not exist", "check the id")
        return container_doc(s, c)


def _group(s: Session, caller: Caller, gid: str) -> dict[str, Any]:
    g = s.get(Container, gid)
    if g is None or g.type != "group":
        raise NotFoundError(f"group {gid!r} does not exist", "list groups with GET /groups")
    visible = [d["_id"] for d in list_containers(s, caller, "group", limit=None)]
    if gid not in visible:
        raise PermissionDeniedError(
            f"{caller.login!r} has no role in group {gid!r}", "ask a group admin for a role"
        )
    return container_doc(s, g)


# ------------------------------------------------------------------ lookup


@router.post("/lookup")
@retried
def lookup(caller: CallerDep, st: StateDep, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    path = body.get("path")
    if isinstance(path, str):
        path = [p for p in path.split("/") if p]
    if not isinstance(path, list) or not path or not all(isinstance(p, str) for p in path):
        raise InvalidInputError("lookup needs a path", 'send {"path": ["group", "project", ...]}')
    with st.session() as s:
        node = s.get(Container, path[0])
        if node is None or node.type != "group":
            raise NotFoundError(f"group {path[0]!r} does not exist", "check the path")
        rest = path[1:]
        depth = 1
        while rest:
            part = rest.pop(0)
            if part == "files" and rest:
                name = rest.pop(0)
                if rest:
                    raise NotFoundError("a file has no children", "end the path at the file")
                c = get_container(s, caller, node.id)
                f = s.scalar(select(File).where(File.container_id == c.id, File.name == name))
                if f is None:
                    raise NotFoundError(f"no file {name!r} on {c.type} {c.label!r}",
                                        "check the path")
                fv = s.scalar(select(FileVersion).where(
                    FileVersion.file_id == f.id, FileVersion.version == f.current_version))
                return {**file_doc(c, f, fv), "container_type": "file"}
            if part == "analyses" and rest:
                label = rest.pop(0)
                child = s.scalar(select(Container).where(
                    Container.parent_id == node.id, Container.type == "analysis",
                    or_(Container.label == label, Container.id == label)))
            else:
                if depth >= len(LEVEL_ORDER):
                    raise NotFoundError(f"{path!r} goes below acquisitions", "check the path")
                child = s.scalar(select(Container).where(
                    Container.parent_id == node.id, Container.type == LEVEL_ORDER[depth],
                    Container.label == part))
                depth += 1
            if child is None:
                raise NotFoundError(f"{'/'.join(path)!r}: {part!r} does not exist",
                                    "check the path")
            node = child
        if node.type == "group":
            return _group(s, caller, node.id)
        c = get_container(s, caller, node.id)
        return container_doc(s, c)


# ------------------------------------------------------------------- files


def _file_on(s: Session, c: Container, name: str) -> File:
    f = s.scalar(select(File).where(File.container_id == c.id, File.name == name))
    if f is None:
        raise NotFoundError(f"no file {name!r} on {c.type} {c.label!r}", "list its files")
    return f


@generic.get("/{collection}/{cid}/files/{name}")
def download(
    collection: str,
    cid: str,
    name: str,
    caller: CallerDep,
    st: StateDep,
    version: int | None = None,
    info: bool = False,
) -> Any:
    collection_type(collection)
    with st.session() as s:
        c = get_container(s, caller, cid)
        f = _file_on(s, c, name)
        from hpcgear.hierarchy.service import file_version

        fv = file_version(s, f, version)
        if info:
            return file_doc(c, f, fv)
        digest, size = fv.hash, fv.size
    store = st.store

    def chunks() -> Iterator[bytes]:
        with store.open(digest) as fh:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    break
                yield block

    quoted = name.replace('"', "_").replace("\\", "_")
    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{quoted}"',
        },
    )


@generic.get("/{collection}/{cid}/files/{name}/info")
def file_info(collection: str, cid: str, name: str, caller: CallerDep,
              st: StateDep) -> dict[str, Any]:
    collection_type(collection)
    with st.session() as s:
        c = get_container(s, caller, cid)
        f = _file_on(s, c, name)
        from hpcgear.hierarchy.service import file_version

        return file_doc(c, f, file_version(s, f))


@generic.post("/{collection}/{cid}/files")
async def upload(collection: str, cid: str, request: Request, caller: CallerDep,
                 st: StateDep) -> list[dict[str, Any]]:
    """Multipart upload (field ``file``, optional ``metadata`` JSON). The parser spools
    each file to a temporary file (1 MiB in memory at most); bytes are hashed into the
    object store from there, never held whole in memory."""
    import anyio.to_thread

    collection_type(collection)
    form = await request.form(max_files=100, max_fields=100, max_part_size=8 << 20)
    try:
        uploads = [v for k, v in form.multi_items() if k == "file" and not isinstance(v, str)]
        meta_raw = form.get("metadata")
        if not uploads:
            raise InvalidInputError("no file in the upload", "send multipart field 'file'")
        metadata: dict[str, Any] = {}
        if isinstance(meta_raw, str) and meta_raw.strip():
            try:
                parsed = json.loads(meta_raw)
            except (ValueError, RecursionError):
                raise InvalidInputError("metadata is not JSON", "send a JSON object") from None
            items = parsed if isinstance(parsed, list) else [parsed]
            for item in items:
                if isinstance(item, dict):
                    metadata[str(item.get("name", ""))] = item

        def write(s: Session) -> list[dict[str, Any]]:
            import tempfile
            from pathlib import Path

            from hpcgear.hierarchy.paths import check_file_name
            from hpcgear.hierarchy.service import add_file_version, container_path
            from hpcgear.ingest.upload import spool_for_profile, upload_deidentified

            for u in uploads:  # a retried attempt reads every file again
                u.file.seek(0)
            out = []
            c = get_container(s, caller, cid, RoleName.READ_WRITE)
            # A project with a de-identification profile: clean DICOM first (deid helper).
            with tempfile.TemporaryDirectory(prefix="api-up-", dir=st.store.tmp) as tmp:
                named = [(check_file_name(u.filename or ""), u.file) for u in uploads]
                spooled = spool_for_profile(s, st.store, c.project_id, named, Path(tmp))
                if spooled is not None:
                    meta_by_name = {
                        n: {k: v for k, v in (metadata.get(n) or {}).items()
                            if k in ("type", "modality", "classification", "tags", "info")}
                        for n, _ in named
                    }  # fmt: skip
                    upload_deidentified(
                        s, st.store, caller.login, container_path(s, c), spooled,
                        origin_type="job" if caller.job_id else "user",
                        origin_id=caller.job_id or caller.login, metadata=meta_by_name,
                    )  # fmt: skip
                    for n, _ in named:
                        f = _file_on(s, c, n)
                        fv = s.scalar(select(FileVersion).where(
                            FileVersion.file_id == f.id,
                            FileVersion.version == f.current_version))  # fmt: skip
                        out.append(file_doc(c, f, fv))
                    return out
            for up in uploads:
                name = check_file_name(up.filename or "")
                obj = st.store.put_stream(up.file)
                m = metadata.get(name) or (metadata.get("") if len(uploads) == 1 else None)
                meta = {k: v for k, v in (m or {}).items()
                        if k in ("type", "modality", "classification", "tags", "info")}
                add_file_version(
                    s, c, name, obj.hash, obj.size, caller.login,
                    origin_type="job" if caller.job_id else "user",
                    origin_id=caller.job_id or caller.login, metadata=meta or None,
                )
                f = _file_on(s, c, name)
                fv = s.scalar(select(FileVersion).where(
                    FileVersion.file_id == f.id, FileVersion.version == f.current_version))
                out.append(file_doc(c, f, fv))
            return out

        def store_all() -> list[dict[str, Any]]:
            st.store.ensure()
            return st.db.write(write)  # a race with another writer runs it again

        return await anyio.to_thread.run_sync(store_all)
    finally:
        await form.close()


# ---------------------------------------------------------- info and tags


def _info_update(body: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidInputError("info update must be an object", "send {set|replace|delete}")
    unknown = set(body) - {"set", "replace", "delete"}
    if unknown:
        raise InvalidInputError(
            f"unknown info update key(s) {sorted(unknown)}", "use set, replace or delete"
        )
    delete = body.get("delete") or []
    if not isinstance(delete, list):
        raise InvalidInputError("delete must be a list of keys", 'send {"delete": ["key"]}')
    return {"set": body.get("set"), "replace": body.get("replace"), "delete": delete}


@generic.patch("/{collection}/{cid}/info")
@generic.post("/{collection}/{cid}/info")
@retried
def modify_info(collection: str, cid: str, caller: CallerDep, st: StateDep,
                body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    from hpcgear.hierarchy.records import update_info

    collection_type(collection)
    args = _info_update(body)
    with st.session() as s:
        c = get_container(s, caller, cid, RoleName.READ_WRITE)
        update_info(s, caller.login, c, None, **args)
    return {"modified": 1}


@generic.patch("/{collection}/{cid}/files/{name}/info")
@generic.post("/{collection}/{cid}/files/{name}/info")
@retried
def modify_file_info(collection: str, cid: str, name: str, caller: CallerDep, st: StateDep,
                     body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    from hpcgear.hierarchy.records import update_info

    collection_type(collection)
    args = _info_update(body)
    with st.session() as s:
        c = get_container(s, caller, cid, RoleName.READ_WRITE)
        update_info(s, caller.login, c, _file_on(s, c, name), **args)
    return {"modified": 1}


@generic.patch("/{collection}/{cid}/files/{name}/classification")
@generic.post("/{collection}/{cid}/files/{name}/classification")
@retried
def modify_classification(collection: str, cid: str, name: str, caller: CallerDep,
                          st: StateDep, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    from hpcgear.hierarchy.records import update_file_fields

    collection_type(collection)
    unknown = set(body) - {"add", "replace", "delete", "modality"}
    if unknown:
        raise InvalidInputError(f"unknown classification key(s) {sorted(unknown)}",
                                "use add, replace, delete, modality")
    with st.session() as s:
        c = get_container(s, caller, cid, RoleName.READ_WRITE)
        update_file_fields(
            s, caller.login, c, _file_on(s, c, name), modality=body.get("modality"),
            classification_add=body.get("add"), classification_replace=body.get("replace"),
            classification_delete=body.get("delete"),
        )
    return {"modified": 1}


@generic.put("/{collection}/{cid}/files/{name}")
@retried
def modify_file(collection: str, cid: str, name: str, caller: CallerDep, st: StateDep,
                body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    from hpcgear.hierarchy.records import update_file_fields

    collection_type(collection)
    unknown = set(body) - {"modality", "type"}
    if unknown:
        raise InvalidInputError(f"unknown file field(s) {sorted(unknown)}", "use modality, type")
    with st.session() as s:
        c = get_container(s, caller, cid, RoleName.READ_WRITE)
        update_file_fields(s, caller.login, c, _file_on(s, c, name),
                           modality=body.get("modality"), type=body.get("type"))
    return {"modified": 1}

def _edit_tags(st: ApiState, caller: Caller, collection: str, cid: str, *,
               add: Sequence[str] = (), remove: Sequence[str] = ()) -> None:
    from hpcgear.hierarchy.records import update_tags

    collection_type(collection)
    with st.session() as s:
        c = get_container(s, caller, cid, RoleName.READ_WRITE)
        update_tags(s, caller.login, c, None, add=add, remove=remove)


@generic.post("/{collection}/{cid}/tags")
@retried
def add_tag(collection: str, cid: str, caller: CallerDep, st: StateDep,
            body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    value = body.get("value")
    if not isinstance(value, str):
        raise InvalidInputError("tag value missing", 'send {"value": "TAG"}')
    _edit_tags(st, caller, collection, cid, add=[value])
    return {"modified": 1}


@generic.patch("/{collection}/{cid}/tags")
@retried
def add_tags(collection: str, cid: str, caller: CallerDep, st: StateDep,
             body: list[str] = Body(...)) -> None:
    _edit_tags(st, caller, collection, cid, add=body)


@generic.delete("/{collection}/{cid}/tags/{value}")
@retried
def delete_tag(collection: str, cid: str, value: str, caller: CallerDep,
               st: StateDep) -> dict[str, Any]:
    _edit_tags(st, caller, collection, cid, remove=[value])
    return {"deleted": 1}


@generic.delete("/{collection}/{cid}/tags")
@retried
def delete_tags(collection: str, cid: str, caller: CallerDep, st: StateDep,
                body: list[str] = Body(...)) -> None:
    _edit_tags(st, caller, collection, cid, remove=body)


# ------------------------------------------------------------------- gears


@router.get("/gears")
def list_gears(
    caller: CallerDep,
    st: StateDep,
    filter: str | None = None,
    limit: int | None = None,
    after_id: str | None = None,
    all_versions: bool = False,
) -> list[dict[str, Any]]:
    with st.session() as s:
        get_actor(s, caller.login)
        rows = s.scalars(select(Gear).order_by(Gear.id)).all()
        if not all_versions:  # the latest enabled version of each name
            latest: dict[str, Gear] = {}
            for g in rows:
                if not g.disabled:
                    latest[g.name] = g
            rows = sorted(latest.values(), key=lambda g: g.id)
        if after_id:
            try:
                after = int(after_id)
            except ValueError:
                raise InvalidInputError("after_id of a gear is its numeric id",
                                        "page with the last _id") from None
            rows = [g for g in rows if g.id > after]
        docs = ({**gear_doc(g), "gear_name": g.name} for g in rows)
        filters = [(k.replace("gear_name", "gear.name"), op, v)
                   for k, op, v in parse_filter(filter)]
        return page(docs, filters, _check_limit(limit))


@router.get("/gears/{gear_id}")
def get_gear(gear_id: str, caller: CallerDep, st: StateDep) -> dict[str, Any]:
    with st.session() as s:
        get_actor(s, caller.login)
        return gear_doc(_gear(s, gear_id))


def _gear(s: Session, gear_id: Any) -> Gear:
    try:
        g = s.get(Gear, int(gear_id))
    except (TypeError, ValueError):
        g = None
    if g is None:
        raise NotFoundError(f"gear {gear_id!r} does not exist", "list gears with GET /gears")
    return g


# -------------------------------------------------------------------- jobs


def _input_refs(inputs: Any) -> dict[str, tuple[str, str]]:
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise InvalidInputError("job inputs must be an object", '{"name": {"type","id","name"}}')
    out = {}
    for name, ref in inputs.items():
        if not isinstance(ref, Mapping) or not ref.get("id") or not ref.get("name"):
            raise InvalidInputError(
                f"input {name!r} must reference a file: {{type, id, name}}",
                "pass a file object (or its ref()) as the input",
            )
        out[str(name)] = (str(ref["id"]), str(ref["name"]))
    return out


def _start_job(
    st: Any, caller: Caller, job_body: Mapping[str, Any], destination_id: str,
    analysis_label: str | None,
) -> tuple[str, str | None]:
    from hpcgear.jobs.service import run_gear_by_ids

    require_user_key(caller, "running gears")
    config = job_body.get("config") or {}
    if not isinstance(config, Mapping):
        raise InvalidInputError("job config must be an object", "send config as {key: value}")
    tags = job_body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidInputError("job tags must be a list of strings", 'e.g. ["hpc"]')
    with st.session() as s:
        gear = _gear(s, job_body.get("gear_id"))
        dest = get_container(s, caller, destination_id, RoleName.READ_WRITE)
        job, analysis = run_gear_by_ids(
            s, caller.login, st.sites, gear=gear, destination=dest,
            inputs=_input_refs(job_body.get("inputs")), config=config, tags=tags,
            priority=str(job_body.get("priority") or "medium"), analysis_label=analysis_label,
        )
        return job.id, analysis.id if analysis else None


@router.post("/jobs/add")
@retried
def add_job(caller: CallerDep, st: StateDep,
            body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    dest = body.get("destination") or {}
    if not isinstance(dest, Mapping) or not dest.get("id"):
        raise InvalidInputError("the job has no destination", 'send destination {type, id}')
    job_id, _ = _start_job(st, caller, body, str(dest["id"]), None)
    return {"_id": job_id}


@generic.post("/{collection}/{cid}/analyses")
@retried
def add_analysis(collection: str, cid: str, caller: CallerDep, st: StateDep,
                 body: dict[str, Any] = Body(...), job: bool = Query(False)) -> dict[str, Any]:
    collection_type(collection)
    label = body.get("label")
    if not isinstance(label, str) or not label.strip():
        raise InvalidInputError("an analysis needs a label", 'send {"label": "...", "job": {}}')
    job_body = body.get("job")
    if not isinstance(job_body, Mapping):
        raise InvalidInputError(
            "only analyses made by a gear job are supported",
            "send {label, job: {gear_id, inputs, config, tags}} with ?job=true",
        )
    _job_id, analysis_id = _start_job(st, caller, job_body, cid, label.strip())
    if analysis_id is None:
        raise InvalidInputError(
            "the gear is not an analysis gear", "run utility gears with POST /jobs/add"
        )
    return {"_id": analysis_id}


def _readable_job(s: Session, caller: Caller, job_id: str) -> Job:
    from hpcgear.jobs.service import get_job as svc_get_job

    if caller.job_id is not None and caller.job_id != job_id:
        raise PermissionDeniedError(
            f"the key of job {caller.job_id} may not read job {job_id}", "use a user key"
        )
    return svc_get_job(s, caller.login, job_id)


@router.get("/jobs/{job_id}")
def get_job(job_id: str, caller: CallerDep, st: StateDep) -> dict[str, Any]:
    with st.session() as s:
        return job_doc(s, _readable_job(s, caller, job_id), inputs_as_list=False)


@router.get("/jobs/{job_id}/logs")
def get_job_logs(job_id: str, caller: CallerDep, st: StateDep) -> dict[str, Any]:
    """``fw.get_job_logs(id)``: the job's log so far, as one statement, and its state.

    One read per request: ``hpcgear job logs -f`` with a key polls this from the
    client, so a follower never holds a server thread while the job runs.
    """
    from hpcgear.controller.logs import job_log_text

    with st.session() as s:
        job = _readable_job(s, caller, job_id)
        text = job_log_text(s, st.store, st.settings, job)
        return {"_id": job.id, "state": JOB_STATES.get(job.state, "pending"),
                "hpcgear": {"state": job.state}, "logs": [{"fd": 1, "msg": text}]}


@router.put("/jobs/{job_id}")
def modify_job(job_id: str, caller: CallerDep, st: StateDep,
               body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """``fw.modify_job(id, {"state": "cancelled"})``: cancel a job (the only change allowed)."""
    from hpcgear.errors import StateTransitionError
    from hpcgear.jobs.service import cancel_job
    from hpcgear.states import JobState

    require_user_key(caller, "changing jobs")
    if set(body) != {"state"} or body.get("state") != "cancelled":
        raise InvalidInputError(
            "a job can only be changed to {\"state\": \"cancelled\"}",
            "to run it again, start a new job (or `hpcgear job retry`)",
        )
    with st.session() as s:
        job = _readable_job(s, caller, job_id)
        if JobState(job.state).final:  # a conflict with the job's state, not a bad request
            raise StateTransitionError(
                f"job {job_id} is already {job.state}",
                "only pending, queued or running jobs can be cancelled",
            )
        cancel_job(s, caller.login, job_id)
    return {"modified": 1}


@router.get("/jobs")
def list_jobs(
    caller: CallerDep,
    st: StateDep,
    filter: str | None = None,
    limit: int | None = None,
    after_id: str | None = None,
) -> list[dict[str, Any]]:
    from hpcgear.jobs.service import list_jobs as svc_list_jobs

    require_user_key(caller, "listing jobs")
    filters = parse_filter(filter)
    with st.session() as s:
        jobs = sorted(svc_list_jobs(s, caller.login, limit=100_000), key=lambda j: j.id)
        if after_id:
            jobs = [j for j in jobs if j.id > after_id]
        docs = (job_doc(s, j, inputs_as_list=True) for j in jobs)
        return page(docs, filters, _check_limit(limit))


# ------------------------------------------------------------ files by id


def _file_by_id(
    s: Session, caller: Caller, file_id: str, need: RoleName = RoleName.READ_ONLY
) -> tuple[Container, File]:
    f = s.get(File, file_id)
    if f is None:
        raise NotFoundError(f"file {file_id!r} does not exist", "check the file id")
    return get_container(s, caller, f.container_id, need), f


@router.get("/files/{file_id}")
def get_file(file_id: str, caller: CallerDep, st: StateDep,
             version: int | None = None) -> dict[str, Any]:
    from hpcgear.hierarchy.service import file_version

    with st.session() as s:
        c, f = _file_by_id(s, caller, file_id)
        return file_doc(c, f, file_version(s, f, version))


@router.get("/files/{file_id}/info")
def get_file_info(file_id: str, caller: CallerDep, st: StateDep) -> dict[str, Any]:
    with st.session() as s:
        _c, f = _file_by_id(s, caller, file_id)
        return dict(f.info or {})


@router.patch("/files/{file_id}/info")
@retried
def patch_file_info(file_id: str, caller: CallerDep, st: StateDep,
                    body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    from hpcgear.hierarchy.records import update_info

    args = _info_update(body)
    with st.session() as s:
        c, f = _file_by_id(s, caller, file_id, RoleName.READ_WRITE)
        update_info(s, caller.login, c, f, **args)
    return {"modified": 1}


@router.put("/files/{file_id}/info")
@retried
def put_file_info(file_id: str, caller: CallerDep, st: StateDep,
                  body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    from hpcgear.hierarchy.records import update_info

    with st.session() as s:
        c, f = _file_by_id(s, caller, file_id, RoleName.READ_WRITE)
        return update_info(s, caller.login, c, f, replace=body)


@router.get("/files/{file_id}/tags")
def get_file_tags(file_id: str, caller: CallerDep, st: StateDep) -> list[str]:
    with st.session() as s:
        _c, f = _file_by_id(s, caller, file_id)
        return list(f.tags or [])


@router.patch("/files/{file_id}/tags")
@retried
def add_file_tags(file_id: str, caller: CallerDep, st: StateDep,
                  body: list[str] = Body(...)) -> list[str]:
    from hpcgear.hierarchy.records import update_tags

    with st.session() as s:
        c, f = _file_by_id(s, caller, file_id, RoleName.READ_WRITE)
        return update_tags(s, caller.login, c, f, add=body)


@router.put("/files/{file_id}/tags")
@retried
def set_file_tags(file_id: str, caller: CallerDep, st: StateDep,
                  body: list[str] = Body(...)) -> dict[str, Any]:
    from hpcgear.hierarchy.records import update_tags

    with st.session() as s:
        c, f = _file_by_id(s, caller, file_id, RoleName.READ_WRITE)
        current = list(f.tags or [])
        update_tags(s, caller.login, c, f, add=body,
                    remove=[t for t in current if t not in body])
    return {"modified": 1}


@router.delete("/files/{file_id}/tags")
@retried
def delete_file_tags(file_id: str, caller: CallerDep, st: StateDep,
                     body: list[str] = Body(...)) -> None:
    from hpcgear.hierarchy.records import update_tags

    with st.session() as s:
        c, f = _file_by_id(s, caller, file_id, RoleName.READ_WRITE)
        update_tags(s, caller.login, c, f, remove=body)


@router.put("/files/{file_id}/classification")
@retried
def put_file_classification(file_id: str, caller: CallerDep, st: StateDep,
                            body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    from hpcgear.hierarchy.records import update_file_fields

    unknown = set(body) - {"add", "replace", "delete", "modality"}
    if unknown:
        raise InvalidInputError(f"unknown classification key(s) {sorted(unknown)}",
                                "use add, replace, delete, modality")
    with st.session() as s:
        c, f = _file_by_id(s, caller, file_id, RoleName.READ_WRITE)
        update_file_fields(
            s, caller.login, c, f, modality=body.get("modality"),
            classification_add=body.get("add"), classification_replace=body.get("replace"),
            classification_delete=body.get("delete"),
        )
    return {"modified": 1}


__all__ = ["JOB_STATES", "check_scope", "generic", "router"]
