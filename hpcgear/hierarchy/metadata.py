"""Metadata edits beyond set/tag: unset info keys, hand-edited classification, notes.

Same rules as ``hierarchy.service``: the acting user needs read-write on the
container (or the file's container); every change appends a ``change_log`` row
so gear rules see it; bad input raises before anything is written.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File
from hpcgear.db.session import lock_for_update
from hpcgear.errors import InvalidInputError, NotFoundError
from hpcgear.hierarchy.changelog import log_meta_change
from hpcgear.hierarchy.paths import check_tag
from hpcgear.hierarchy.permissions import RoleName, require_role
from hpcgear.hierarchy.service import Target, resolve_target

MAX_NOTE = 10_000


def _locked(session: Session, obj: Container | File) -> Container | File:
    """Re-read the row under a lock, so a read-modify-write of its JSON cannot lose a
    concurrent change (a row lock on PostgreSQL; the write lock on SQLite, whose
    reads otherwise run outside any transaction)."""
    lock_for_update(session, obj)
    return obj


def _log(session: Session, target: Target, actor: str) -> None:
    log_meta_change(session, actor, target.container.id, target.file)
    session.flush()


def unset_info(session: Session, actor: str, path: str, keys: Sequence[str]) -> dict[str, Any]:
    """Remove dotted info keys (``scanner.model``); all must exist, or nothing changes."""
    if not keys:
        raise InvalidInputError("no info keys to unset", "give at least one KEY (dots nest)")
    target = resolve_target(session, path)
    require_role(session, actor, target.container, RoleName.READ_WRITE, "unsetting info")
    obj = _locked(session, target.file if target.file is not None else target.container)
    info = copy.deepcopy(obj.info or {})
    missing = []
    for key in keys:
        parts = key.split(".")
        node: Any = info
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            missing.append(key)
            continue
        del node[parts[-1]]
    if missing:
        raise NotFoundError(
            f"info key(s) {', '.join(map(repr, missing))} not set on {path}",
            f"set keys are: {', '.join(sorted(_flat_keys(obj.info or {}))) or 'none'}",
        )
    obj.info = info
    _log(session, target, actor)
    return info


def _flat_keys(info: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in info.items():
        out.append(prefix + k)
        if isinstance(v, Mapping):
            out.extend(_flat_keys(v, f"{prefix}{k}."))
    return out[:40]


def parse_classification(pairs: Sequence[str], *, values_required: bool) -> dict[str, list[str]]:
    """``Measurement=T1,T2`` -> {"Measurement": ["T1", "T2"]}."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not key or (values_required and not sep):
            raise InvalidInputError(
                f"{pair!r} is not KEY=VALUE[,VALUE...]",
                "write e.g. Measurement=T1 Intent=Structural",
            )
        check_tag(key)
        values = [v.strip() for v in raw.split(",")] if sep else []
        for v in values:
            check_tag(v)
        out.setdefault(key, [])
        out[key] += [v for v in values if v not in out[key]]
    if not out:
        raise InvalidInputError("no classification given", "write e.g. Measurement=T1")
    return out


def _file_target(session: Session, actor: str, path: str) -> tuple[Target, File]:
    target = resolve_target(session, path)
    if target.file is None:
        raise InvalidInputError(
            f"{path!r} is a container; classification is a file's", "give PATH/FILE"
        )
    require_role(session, actor, target.container, RoleName.READ_WRITE, "classifying files")
    _locked(session, target.file)
    return target, target.file


def set_classification(
    session: Session, actor: str, path: str, pairs: Sequence[str]
) -> dict[str, list[str]]:
    """Replace a file's classification with the given keys and values."""
    new = parse_classification(pairs, values_required=True)
    target, f = _file_target(session, actor, path)
    f.classification = new
    _log(session, target, actor)
    return new


def add_classification(
    session: Session, actor: str, path: str, pairs: Sequence[str]
) -> dict[str, list[str]]:
    """Add values to a file's classification keys (kept in order, no duplicates)."""
    extra = parse_classification(pairs, values_required=True)
    target, f = _file_target(session, actor, path)
    cls = {k: list(v) for k, v in (f.classification or {}).items()}
    for k, values in extra.items():
        cls.setdefault(k, [])
        cls[k] += [v for v in values if v not in cls[k]]
    f.classification = cls
    _log(session, target, actor)
    return cls


def remove_classification(
    session: Session, actor: str, path: str, pairs: Sequence[str]
) -> dict[str, list[str]]:
    """Remove values (``KEY=VALUE``) or whole keys (``KEY``); each must be present."""
    gone = parse_classification(pairs, values_required=False)
    target, f = _file_target(session, actor, path)
    cls = {k: list(v) for k, v in (f.classification or {}).items()}
    missing = []
    for k, values in gone.items():
        if k not in cls:
            missing.append(k)
        elif not values:
            del cls[k]
        else:
            missing += [f"{k}={v}" for v in values if v not in cls[k]]
            cls[k] = [v for v in cls[k] if v not in values]
    if missing:
        raise NotFoundError(
            f"not in the classification of {path}: {', '.join(missing)}",
            f"it is {f.classification or {}}",
        )
    f.classification = cls
    _log(session, target, actor)
    return cls


def add_note(session: Session, actor: str, path: str, text: str) -> list[dict[str, Any]]:
    """Append a note (Flywheel's container notes) to a container or analysis."""
    text = (text or "").strip()
    if not text or len(text) > MAX_NOTE:
        raise InvalidInputError(
            f"a note must be 1-{MAX_NOTE} characters", "write the note as one argument"
        )
    target = resolve_target(session, path)
    if target.file is not None:
        raise InvalidInputError("notes belong to containers, not files", "give a container path")
    require_role(session, actor, target.container, RoleName.READ_WRITE, "adding notes")
    c = target.container
    _locked(session, c)
    notes = list(c.notes or [])
    notes.append({"text": text, "user": actor, "created": dt.datetime.now(dt.UTC).isoformat()})
    c.notes = notes
    _log(session, target, actor)
    return notes


def list_notes(session: Session, actor: str, path: str) -> list[dict[str, Any]]:
    target = resolve_target(session, path)
    require_role(session, actor, target.container, RoleName.READ_ONLY, "reading notes")
    return list(target.container.notes or []) if target.file is None else []
