"""Data views (a project's metadata as a table) and search.

A view is a list of columns, a level (one row per file, acquisition, session
or subject) and filters. Columns are ``LEVEL.FIELD[.KEY...]``:

* LEVEL: ``project``, ``subject``, ``session``, ``acquisition`` or ``file``
  (and ``analysis`` at file level, for files of analyses).
* FIELD: ``label``, ``id``, ``tags``, ``created``, ``info.KEY...``; files also
  ``name``, ``type``, ``modality``, ``size``, ``hash``, ``version``,
  ``classification.KEY`` and ``info.KEY...``.

Filters are ``COLUMN OP VALUE`` with OP one of ``=``, ``!=``, ``<``, ``<=``,
``>``, ``>=`` or ``=~`` (regular expression search). VALUE parses as JSON when
it can (``2``, ``true``), else it is text. On a list (tags, classification
values) ``=`` means "contains". A row missing the column fails every filter
except ``!=``. All filters must hold.

At file level the rows are the files of every project, subject, session and
acquisition container (a file on a session has an empty ``acquisition.*``, one on
the project empty ``subject.*`` too), plus the files of every analysis of the
project when an ``analysis.*`` column is asked for (columns of levels an analysis
is not below are empty).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File, FileVersion, Role, SavedView
from hpcgear.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from hpcgear.hierarchy.export import subtree_paths
from hpcgear.hierarchy.permissions import (
    RoleName,
    effective_role,
    get_actor,
    require_role,
)
from hpcgear.hierarchy.service import resolve_container
from hpcgear.text import json_or_text

VIEW_LEVELS = ("subject", "session", "acquisition", "file")
# Whose files a file-level view lists (analyses only when an analysis.* column asks).
FILE_HOLDERS = ("project", "subject", "session", "acquisition")
COLUMN_LEVELS = ("project", "subject", "session", "acquisition", "analysis", "file")
CONTAINER_FIELDS = ("label", "id", "tags", "created", "info", "path")
FILE_FIELDS = (
    "name",
    "id",
    "type",
    "modality",
    "size",
    "hash",
    "version",
    "tags",
    "created",
    "classification",
    "info",
    "path",
)
FORMATS = ("csv", "tsv", "json")
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=~": lambda a, b: re.search(str(b), str(a)) is not None,
    "<=": operator.le,
    ">=": operator.ge,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
FILTER_RE = re.compile(r"^\s*([A-Za-z_][\w.\- ]*?)\s*(=~|<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")
VIEW_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Column:
    text: str
    level: str
    field: str
    keys: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Column:
        parts = text.strip().split(".")
        if len(parts) < 2 or parts[0] not in COLUMN_LEVELS:
            raise InvalidInputError(
                f"column {text!r} is not LEVEL.FIELD",
                f"levels: {', '.join(COLUMN_LEVELS)}; e.g. session.label, file.info.EchoTime",
            )
        level, fld, keys = parts[0], parts[1], tuple(parts[2:])
        valid = FILE_FIELDS if level == "file" else CONTAINER_FIELDS
        if (
            fld not in valid
            or (keys and fld not in ("info", "classification"))
            or any(not k for k in keys)
        ):
            raise InvalidInputError(
                f"column {text!r}: unknown field {'.'.join(parts[1:])!r} of {level}",
                f"{level} fields: {', '.join(valid)} (info.KEY and classification.KEY nest)",
            )
        return cls(text.strip(), level, fld, keys)


@dataclass(frozen=True, slots=True)
class Filter:
    column: Column
    op: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> Filter:
        m = FILTER_RE.match(text or "")
        if not m or not m.group(3):
            raise InvalidInputError(
                f"filter {text!r} is not COLUMN OP VALUE",
                "e.g. --filter 'file.type=nifti' --filter 'file.info.RepetitionTime>2' "
                "(OP: = != < <= > >= =~)",
            )
        raw = m.group(3)
        value: Any = json_or_text(raw, "the filter value")
        if m.group(2) == "=~":
            try:
                re.compile(str(value))
            except re.error as exc:
                raise InvalidInputError(
                    f"filter {text!r}: bad regular expression: {exc}", "fix the pattern"
                ) from None
        return cls(Column.parse(m.group(1)), m.group(2), value)

    def holds(self, actual: Any) -> bool:
        if actual is None:
            return self.op == "!="
        if isinstance(actual, list) and self.op in ("=", "=="):
            return self.value in actual or str(self.value) in [str(a) for a in actual]
        if isinstance(actual, list) and self.op == "!=":
            return self.value not in actual
        a, b = actual, self.value
        if isinstance(a, (int, float)) != isinstance(b, (int, float)) or isinstance(a, bool):
            a, b = str(a), str(b)
        try:
            return bool(OPS[self.op](a, b))
        except TypeError:
            return False


@dataclass(frozen=True, slots=True)
class ViewSpec:
    columns: tuple[str, ...]
    level: str | None = None
    filters: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "level": self.level, "filters": list(self.filters)}


@dataclass(frozen=True, slots=True)
class ViewResult:
    columns: list[str]
    rows: list[list[Any]]
    level: str

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(self.records(), indent=2, default=str) + "\n"
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
        writer.writerow(self.columns)
        for r in self.rows:
            writer.writerow([_cell(v) for v in r])
        return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _dig(value: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        if not isinstance(value, Mapping) or k not in value:
            return None
        value = value[k]
    return value


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}", f"formats: {', '.join(FORMATS)}")
    return fmt


def _level_of(spec: ViewSpec, columns: Sequence[Column]) -> str:
    if spec.level is not None:
        if spec.level not in VIEW_LEVELS:
            raise InvalidInputError(
                f"unknown level {spec.level!r}", f"levels: {', '.join(VIEW_LEVELS)}"
            )
        return spec.level
    for lvl in ("file", "acquisition", "session", "subject"):
        if any(c.level in (lvl, "analysis" if lvl == "file" else lvl) for c in columns):
            return lvl
    return "subject"


def run_view(session: Session, actor: str, project_path: str, spec: ViewSpec) -> ViewResult:
    """One row per container (or file) of ``level`` in the project, filtered."""
    if not spec.columns:
        raise InvalidInputError("a view needs columns", "give --columns subject.label,...")
    columns = [Column.parse(c) for c in spec.columns]
    filters = [Filter.parse(f) for f in spec.filters]
    level = _level_of(spec, columns)
    depth = VIEW_LEVELS.index(level)
    for c in [*columns, *(f.column for f in filters)]:
        if c.level in ("file", "analysis") and level != "file":
            raise InvalidInputError(
                f"column {c.text!r} needs --level file (the view is at {level} level)",
                "drop the column or use --level file",
            )
        if c.level in VIEW_LEVELS and VIEW_LEVELS.index(c.level) > depth:
            raise InvalidInputError(
                f"column {c.text!r} is below the view's {level} level",
                f"use --level {c.level}, or drop the column",
            )
    project = resolve_container(session, project_path, min_depth=2, max_depth=2)
    require_role(session, actor, project, RoleName.READ_ONLY, "viewing data")
    rows = list(session.scalars(select(Container).where(Container.project_id == project.id)))
    path_of = subtree_paths(session, project, rows)
    by_id = {c.id: c for c in rows}
    want_analyses = any(c.level == "analysis" for c in [*columns, *(f.column for f in filters)])

    def container_value(c: Container | None, col: Column) -> Any:
        if c is None:
            return None
        if col.field == "info":
            return _dig(c.info or {}, col.keys) if col.keys else (c.info or {})
        if col.field == "path":
            return path_of(c)
        if col.field == "created":
            return c.created.isoformat() if c.created else None
        return getattr(c, col.field)

    records: list[tuple[dict[str, Container | None], tuple[File, FileVersion] | None]] = []
    if level == "file":
        holders = [c for c in rows if c.type in FILE_HOLDERS]
        if want_analyses:
            holders += [c for c in rows if c.type == "analysis"]
        ids = [c.id for c in holders]
        for start in range(0, len(ids), 500):
            q = (
                select(File, FileVersion)
                .join(
                    FileVersion,
                    (FileVersion.file_id == File.id)
                    & (FileVersion.version == File.current_version),
                )
                .where(File.container_id.in_(ids[start : start + 500]))
            )
            for f, fv in session.execute(q):
                holder = by_id[f.container_id]
                ctx = _chain(holder, by_id)
                records.append((ctx, (f, fv)))
    else:
        for row in rows:
            if row.type == level:
                records.append((_chain(row, by_id), None))

    def value(ctx: Mapping[str, Container | None], fobj: Any, col: Column) -> Any:
        if col.level == "project":
            return container_value(project, col)
        if col.level != "file":
            return container_value(ctx.get(col.level), col)
        f, fv = fobj
        if col.field in ("info", "classification"):
            data = getattr(f, col.field) or {}
            return _dig(data, col.keys) if col.keys else data
        if col.field in ("size", "hash", "version"):
            return getattr(fv, col.field)
        if col.field == "path":
            return f"{path_of(by_id[f.container_id])}/{f.name}"
        if col.field == "created":
            return f.created.isoformat() if f.created else None
        return getattr(f, col.field)

    out: list[list[Any]] = []
    for ctx, fobj in records:
        if all(flt.holds(value(ctx, fobj, flt.column)) for flt in filters):
            out.append([value(ctx, fobj, c) for c in columns])
    out.sort(key=lambda r: [_cell(v) for v in r])
    return ViewResult([c.text for c in columns], out, level)


def _chain(c: Container, by_id: Mapping[str, Container]) -> dict[str, Container | None]:
    ctx: dict[str, Container | None] = {}
    node: Container | None = c
    while node is not None and node.type != "project":
        ctx.setdefault(node.type, node)
        node = by_id.get(node.parent_id or "")
    return ctx


# -------------------------------------------------------------- saved views


def save_view(
    session: Session,
    actor: str,
    project_path: str,
    name: str,
    spec: ViewSpec,
    *,
    replace: bool = False,
) -> SavedView:
    if not VIEW_NAME_RE.match(name or ""):
        raise InvalidInputError(
            f"view name {name!r} is not valid", "use letters, digits, '.', '-' and '_'"
        )
    # validate now, so a saved view always runs
    [Column.parse(c) for c in spec.columns]
    [Filter.parse(f) for f in spec.filters]
    if not spec.columns:
        raise InvalidInputError("a view needs columns", "give --columns subject.label,...")
    project = resolve_container(session, project_path, min_depth=2, max_depth=2)
    require_role(session, actor, project, RoleName.READ_WRITE, "saving a view")
    row = session.scalar(
        select(SavedView).where(SavedView.project_id == project.id, SavedView.name == name)
    )
    if row is not None and not replace:
        raise AlreadyExistsError(
            f"project {project_path} already has a view {name!r}", "pass --replace to overwrite it"
        )
    if row is None:
        row = SavedView(project_id=project.id, name=name, spec=spec.as_dict(), created_by=actor)
        session.add(row)
    else:
        row.spec = spec.as_dict()
        row.created_by = actor
    session.flush()
    return row


def list_views(session: Session, actor: str, project_path: str) -> list[dict[str, Any]]:
    project = resolve_container(session, project_path, min_depth=2, max_depth=2)
    require_role(session, actor, project, RoleName.READ_ONLY, "listing views")
    rows = session.scalars(
        select(SavedView).where(SavedView.project_id == project.id).order_by(SavedView.name)
    )
    return [{"name": r.name, "created_by": r.created_by, **r.spec} for r in rows]


def get_view(session: Session, actor: str, project_path: str, name: str) -> ViewSpec:
    project = resolve_container(session, project_path, min_depth=2, max_depth=2)
    require_role(session, actor, project, RoleName.READ_ONLY, "running a view")
    row = session.scalar(
        select(SavedView).where(SavedView.project_id == project.id, SavedView.name == name)
    )
    if row is None:
        raise NotFoundError(
            f"project {project_path} has no view {name!r}",
            f"list views with `hpcgear view list {project_path}`",
        )
    spec = row.spec
    return ViewSpec(tuple(spec["columns"]), spec.get("level"), tuple(spec.get("filters") or ()))


def delete_view(session: Session, actor: str, project_path: str, name: str) -> None:
    project = resolve_container(session, project_path, min_depth=2, max_depth=2)
    require_role(session, actor, project, RoleName.READ_WRITE, "deleting a view")
    row = session.scalar(
        select(SavedView).where(SavedView.project_id == project.id, SavedView.name == name)
    )
    if row is None:
        raise NotFoundError(f"project {project_path} has no view {name!r}", "check the name")
    session.delete(row)
    session.flush()


# ---------------------------------------------------------------------- find


@dataclass(frozen=True, slots=True)
class FindQuery:
    label: str | None = None  # glob over labels and file names
    tags: tuple[str, ...] = ()
    file_type: str | None = None
    kind: str | None = None  # file | subject | session | acquisition | analysis
    classification: tuple[str, ...] = ()  # KEY=VALUE
    info: tuple[str, ...] = ()  # KEY=VALUE (dots nest)


FIND_KINDS = ("subject", "session", "acquisition", "analysis", "file")


def _pairs(items: Sequence[str], what: str) -> list[tuple[list[str], Any]]:
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--{what} {item!r} is not KEY=VALUE", f"write --{what} K=V")
        value: Any = json_or_text(raw, f"--{what} value of {key!r}")
        out.append((key.split("."), value))
    return out


def find(
    session: Session, actor: str, query: FindQuery, scope: str = "", *, limit: int = 1000
) -> list[dict[str, Any]]:
    """Containers and files matching every given criterion, in the projects the actor can read."""
    if query.kind is not None and query.kind not in FIND_KINDS:
        raise InvalidInputError(f"unknown kind {query.kind!r}", f"kinds: {', '.join(FIND_KINDS)}")
    if not any(
        (query.label, query.tags, query.file_type, query.kind, query.classification, query.info)
    ):
        raise InvalidInputError(
            "no search criterion given",
            "give --label, --tag, --type, --kind, --classification or --info",
        )
    cls_pairs = _pairs(query.classification, "classification")
    info_pairs = _pairs(query.info, "info")
    user = get_actor(session, actor)
    if (scope or "").strip("/"):
        root = resolve_container(session, scope, max_depth=2)
        projects = (
            [root]
            if root.type == "project"
            else list(session.scalars(select(Container).where(Container.parent_id == root.id)))
        )
        if root.type == "project":
            require_role(session, actor, root, RoleName.READ_ONLY, "searching")
    else:
        projects = list(session.scalars(select(Container).where(Container.type == "project")))
    if not user.site_admin:
        granted = set(session.scalars(select(Role.container_id).where(Role.user_login == actor)))
        projects = [
            p
            for p in projects
            if p.id in granted
            or p.group_id in granted
            or effective_role(session, user, p) is not None
        ]
    hits: list[dict[str, Any]] = []
    files_wanted = query.kind in (None, "file")
    containers_wanted = query.kind != "file" and not query.file_type and not cls_pairs

    def info_ok(info: Mapping[str, Any]) -> bool:
        for keys, value in info_pairs:
            got = _dig(info, keys)
            if got != value and str(got) != str(value):
                return False
        return True

    for project in sorted(projects, key=lambda p: (p.group_id, p.label)):
        rows = list(
            session.scalars(
                select(Container).where(
                    Container.project_id == project.id, Container.type != "project"
                )
            )
        )
        path_of = subtree_paths(session, project, [*rows, project])
        by_id = {c.id: c for c in rows} | {project.id: project}
        if containers_wanted:
            for c in rows:
                if query.kind and c.type != query.kind:
                    continue
                if query.label and not fnmatch.fnmatchcase(c.label, query.label):
                    continue
                if any(t not in (c.tags or []) for t in query.tags) or not info_ok(c.info or {}):
                    continue
                hits.append({"kind": c.type, "id": c.id, "label": c.label, "path": path_of(c)})
        if files_wanted:
            ids = list(by_id)
            for start in range(0, len(ids), 500):
                for f in session.scalars(
                    select(File).where(File.container_id.in_(ids[start : start + 500]))
                ):
                    if query.label and not fnmatch.fnmatchcase(f.name, query.label):
                        continue
                    if query.file_type and (f.type or "").lower() != query.file_type.lower():
                        continue
                    if any(t not in (f.tags or []) for t in query.tags):
                        continue
                    cls = f.classification or {}
                    if any(value not in (cls.get(keys[0]) or []) for keys, value in cls_pairs):
                        continue
                    if not info_ok(f.info or {}):
                        continue
                    hits.append(
                        {
                            "kind": "file",
                            "id": f.id,
                            "label": f.name,
                            "type": f.type,
                            "path": f"{path_of(by_id[f.container_id])}/{f.name}",
                        }
                    )
        if len(hits) >= limit:
            break
    hits.sort(key=lambda h: h["path"])
    return hits[:limit]
