"""Metadata changes on a container or file already looked up by id (the HTTP API).

The same role checks and change-log rows as the path-based functions in
``service.py``; Flywheel's update forms: ``set`` (deep merge), ``replace`` (whole
document) and ``delete`` (keys) for info, add/remove for tags, and
classification by measurement key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from hpcgear.db.models import Container, File
from hpcgear.db.session import lock_for_update
from hpcgear.errors import InvalidInputError
from hpcgear.hierarchy.changelog import log_meta_change
from hpcgear.hierarchy.paths import check_tag
from hpcgear.hierarchy.permissions import RoleName, require_role


def _check_info_keys(doc: Mapping[str, Any], where: str = "") -> None:
    for k, v in doc.items():
        if not isinstance(k, str) or not k or k.startswith("$") or "." in k:
            raise InvalidInputError(
                f"bad info key {where + str(k)!r}", "keys are names without '.' or a leading '$'"
            )
        if isinstance(v, Mapping):
            _check_info_keys(v, f"{where}{k}.")


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _log(session: Session, actor: str, container: Container, file: File | None) -> None:
    log_meta_change(session, actor, container.id, file)
    session.flush()


def update_info(
    session: Session,
    actor: str,
    container: Container,
    file: File | None = None,
    *,
    set: Mapping[str, Any] | None = None,
    replace: Mapping[str, Any] | None = None,
    delete: Sequence[str] = (),
) -> dict[str, Any]:
    """Change ``info`` of a container (or of ``file`` on it); returns the new info."""
    if replace is not None and (set or delete):
        raise InvalidInputError(
            "info update mixes 'replace' with 'set'/'delete'", "send either replace or set/delete"
        )
    if replace is None and not set and not delete:
        raise InvalidInputError("empty info update", "send set, replace or delete")
    for doc in (set, replace):
        if doc is not None:
            if not isinstance(doc, Mapping):
                raise InvalidInputError("info must be a JSON object", "send {\"key\": value}")
            _check_info_keys(doc)
    require_role(session, actor, container, RoleName.READ_WRITE, "setting info")
    obj: Container | File = file if file is not None else container
    lock_for_update(session, obj)  # concurrent writers merge, none is lost
    info: dict[str, Any] = dict(obj.info or {})
    if replace is not None:
        info = dict(replace)
    if set:
        info = _deep_merge(info, set)
    for key in delete:
        info.pop(str(key), None)
    obj.info = info
    _log(session, actor, container, file)
    return info


def update_tags(
    session: Session,
    actor: str,
    container: Container,
    file: File | None = None,
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
) -> list[str]:
    """Add and remove tags (adding a present tag or removing an absent one is a no-op)."""
    for t in [*add, *remove]:
        check_tag(t)
    require_role(session, actor, container, RoleName.READ_WRITE, "changing tags")
    obj: Container | File = file if file is not None else container
    lock_for_update(session, obj)  # concurrent tag changes must not overwrite each other
    current = list(obj.tags or [])
    new = [t for t in current if t not in remove] + [
        t for t in dict.fromkeys(add) if t not in current
    ]
    obj.tags = new
    _log(session, actor, container, file)
    return new


def update_file_fields(
    session: Session,
    actor: str,
    container: Container,
    file: File,
    *,
    modality: str | None = None,
    type: str | None = None,
    classification_add: Mapping[str, Sequence[str]] | None = None,
    classification_replace: Mapping[str, Sequence[str]] | None = None,
    classification_delete: Mapping[str, Sequence[str]] | None = None,
) -> File:
    """A file's modality, type and classification (Flywheel's add/replace/delete forms)."""
    require_role(session, actor, container, RoleName.READ_WRITE, "classifying a file")
    lock_for_update(session, file)  # read-modify-write of the classification

    def norm(doc: Mapping[str, Any] | None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in (doc or {}).items():
            vals = [v] if isinstance(v, str) else v
            if not isinstance(k, str) or not isinstance(vals, list | tuple) or not all(
                isinstance(x, str) for x in vals
            ):
                raise InvalidInputError(
                    f"classification {k!r} must be a list of strings",
                    'send e.g. {"Intent": ["Structural"]}',
                )
            out[k] = list(vals)
        return out

    cls: dict[str, list[str]] = {k: list(v) for k, v in (file.classification or {}).items()}
    if classification_replace is not None:
        cls = norm(classification_replace)
    for k, vals in norm(classification_add).items():
        cls[k] = list(dict.fromkeys([*cls.get(k, []), *vals]))
    for k, vals in norm(classification_delete).items():
        if k in cls:
            cls[k] = [v for v in cls[k] if v not in vals]
    file.classification = cls
    if modality is not None:
        file.modality = modality
    if type is not None:
        file.type = type
    _log(session, actor, container, file)
    return file
