"""One typed schema from frozen dataclasses: YAML validation and JSON Schema export.

A document type is a tree of frozen dataclasses whose fields are declared with
:func:`setting` (a description, optionally a YAML key name, a parser and a JSON
Schema fragment). :func:`build` turns a :mod:`hpcgear.config.yamlload` tree into
those dataclasses, and every problem it finds is a :class:`SchemaError` whose
message starts ``file:line: dotted.key:``; unknown keys list the valid ones.
:func:`json_schema` walks the same dataclasses, so validation, help text and the
editor schema cannot drift apart.

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``X | None``,
``Literal[...]``, ``tuple[X, ...]``, ``Mapping[str, X]`` and nested dataclasses.
A dataclass may define ``schema_problems(self)`` returning :class:`Problem` s for
checks that span fields; they are reported at the line of the key they name.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

from hpcgear.config.yamlload import LineMap, LineSeq
from hpcgear.errors import HpcgearError, SchemaError

T = TypeVar("T")

_META = "hpcgear_schema"


@dataclass(frozen=True, slots=True)
class FieldMeta:
    doc: str
    key: str | None = None
    parse: Callable[[Any], Any] | None = None
    json: Mapping[str, Any] | None = None
    item_check: Callable[[Any], None] | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """A cross-field problem: ``path`` is the YAML key path below the dataclass."""

    path: tuple[str | int, ...]
    message: str
    hint: str = ""


def setting(
    doc: str,
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    key: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    json: Mapping[str, Any] | None = None,
    item_check: Callable[[Any], None] | None = None,
) -> Any:
    """Declare a schema field.

    Parameters
    ----------
    doc
        One sentence for help text and the JSON Schema ``description``.
    key
        The YAML key when it differs from the attribute (``max_time`` for
        ``max_time_minutes``).
    parse
        Converts the raw YAML value (never ``None``); raises an ``HpcgearError``
        whose message and hint are reported at the key's line.
    json
        JSON Schema for the raw value when ``parse`` accepts more than the type says.
    item_check
        Called on each converted item of a ``tuple`` field; raises ``HpcgearError``.
    """
    meta = {_META: FieldMeta(doc=doc, key=key, parse=parse, json=json, item_check=item_check)}
    if default is not MISSING:
        return dataclasses.field(default=default, metadata=meta)
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(metadata=meta)


@dataclass(frozen=True, slots=True)
class Where:
    """Where a value sits: file, dotted key path and 1-based line."""

    source: str
    path: str
    line: int

    def key(self, name: Any, line: int | None) -> Where:
        path = f"{self.path}.{name}" if self.path else str(name)
        return Where(self.source, path, line or self.line)

    def item(self, index: int, line: int | None) -> Where:
        return Where(self.source, f"{self.path}[{index}]", line or self.line)

    def error(self, problem: str, hint: str = "") -> SchemaError:
        at = f" {self.path}:" if self.path else ""
        where = f"{self.path} at line {self.line}" if self.path else f"line {self.line}"
        return SchemaError(f"{self.source}:{self.line}:{at} {problem}",
                           hint or f"correct {where} of {self.source}")


def _meta(f: dataclasses.Field[Any]) -> FieldMeta:
    meta = f.metadata.get(_META)
    return meta if isinstance(meta, FieldMeta) else FieldMeta(doc="")


def yaml_key(f: dataclasses.Field[Any]) -> str:
    return _meta(f).key or f.name


def schema_fields(cls: type) -> list[tuple[str, dataclasses.Field[Any], Any]]:
    """(YAML key, field, resolved type) for each init field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return [(yaml_key(f), f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class SchemaErrors(SchemaError):
    """Several schema problems at once; ``errors`` holds each, in document order."""

    def __init__(self, errors: list[SchemaError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        more = len(self.errors) - 1
        message = first.message + (f" (and {more} more problem(s))" if more else "")
        super().__init__(message, first.hint)


class _Reported(SchemaError):
    """Raised upwards in collecting mode: the problems below were already recorded."""


# The list problems are collected into while ``build(..., collect_all=True)`` runs.
_BUCKET: contextvars.ContextVar[list[SchemaError] | None] = contextvars.ContextVar(
    "hpcgear_schema_bucket", default=None)


def _report(err: SchemaError) -> None:
    """Raise ``err``, or record it and carry on when collecting every problem."""
    bucket = _BUCKET.get()
    if bucket is None:
        raise err
    bucket.append(err)


def build(cls: type[T], raw: Any, where: Where, *, collect_all: bool = False) -> T:
    """Build dataclass ``cls`` from a YAML tree, or raise SchemaError at file:line.

    With ``collect_all`` every problem found is reported at once as
    :class:`SchemaErrors` (a field that fails is skipped, its siblings still checked).
    """
    if not collect_all:
        return typing.cast(T, _convert(cls, raw, where, None))
    bucket: list[SchemaError] = []
    token = _BUCKET.set(bucket)
    try:
        value = _convert(cls, raw, where, None)
    except _Reported:
        value = None
    except SchemaError as exc:
        bucket.append(exc)
    finally:
        _BUCKET.reset(token)
    if bucket:
        raise SchemaErrors(bucket)
    return typing.cast(T, value)


def _guarded(convert: Callable[[], Any]) -> tuple[bool, Any]:
    """Run one conversion; (False, None) if it failed and the failure was recorded."""
    try:
        return True, convert()
    except _Reported:
        return False, None
    except SchemaError as exc:
        _report(exc)
        return False, None


def _build_dataclass(cls: type, raw: Any, where: Where) -> Any:
    if raw is None:
        raw = LineMap(line=where.line)
    if not isinstance(raw, dict):
        raise where.error(f"expected a mapping of keys, got {_type_name(raw)}",
                          "indent the keys below this one")
    fields = schema_fields(cls)
    by_key = {k: (f, tp) for k, f, tp in fields}
    key_lines = raw.key_lines if isinstance(raw, LineMap) else {}
    for k in raw:
        if k not in by_key:
            line = key_lines.get(k, where.line)
            valid = ", ".join(sorted(by_key))
            _report(where.key(k, line).error(
                f"unknown key {k!r}; valid keys here: {valid}",
                "fix the spelling or remove the key",
            ))
    kwargs: dict[str, Any] = {}
    failed = False
    for k, (f, tp) in by_key.items():
        if k in raw:
            sub = where.key(k, key_lines.get(k))
            ok, value = _guarded(functools.partial(_convert, tp, raw[k], sub, _meta(f)))
            if ok:
                kwargs[f.name] = value
            failed = failed or not ok
        elif f.default is MISSING and f.default_factory is MISSING:
            _report(where.error(f"missing required key {k!r}", f"add `{k}:` ({_meta(f).doc})"))
            failed = True
    if failed:
        raise _Reported("")
    try:
        obj = cls(**kwargs)
    except HpcgearError as exc:
        _report(where.error(exc.message, exc.hint))
        raise _Reported("") from None
    check = getattr(obj, "schema_problems", None)
    if check is not None:
        for problem in typing.cast(Iterable[Problem], check()):
            _report(_locate(raw, where, problem.path).error(problem.message, problem.hint))
    return obj


def _locate(raw: Any, where: Where, path: tuple[str | int, ...]) -> Where:
    """The Where of ``path`` below ``raw`` (as deep as the YAML tree goes)."""
    node = raw
    for part in path:
        if isinstance(part, int) and isinstance(node, list):
            line = node.item_lines[part] if isinstance(node, LineSeq) and part < len(node) else None
            where = where.item(part, line)
            node = node[part] if part < len(node) else None
        elif isinstance(node, dict):
            line = node.key_lines.get(part) if isinstance(node, LineMap) else None
            where = where.key(part, line)
            node = node.get(part)
        else:
            where = where.key(part, None)
            node = None
    return where


def _convert(tp: Any, raw: Any, where: Where, meta: FieldMeta | None) -> Any:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        if raw is None and len(args) < len(get_args(tp)):
            return None
        if len(args) != 1:
            raise TypeError(f"schema: unsupported union {tp!r}")
        tp, origin = args[0], get_origin(args[0])
    if meta is not None and meta.parse is not None:
        if raw is None:
            raise where.error("a value is required here", meta.doc)
        try:
            return meta.parse(raw)
        except HpcgearError as exc:
            raise where.error(exc.message, exc.hint) from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build_dataclass(tp, raw, where)
    if origin is Literal:
        choices = get_args(tp)
        if raw not in choices or isinstance(raw, bool) != any(isinstance(c, bool) for c in choices):
            shown = ", ".join(str(c) for c in choices)
            raise where.error(f"{raw!r} is not allowed; choose one of: {shown}")
        return raw
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise where.error(f"expected a list, got {_type_name(raw)}",
                              "write a YAML list, one `- item` per line")
        lines = raw.item_lines if isinstance(raw, LineSeq) else []
        items = []
        bad = False
        for i, item in enumerate(raw):
            sub = where.item(i, lines[i] if i < len(lines) else None)
            ok, value = _guarded(functools.partial(_convert, item_tp, item, sub, None))
            if ok and meta is not None and meta.item_check is not None:
                try:
                    meta.item_check(value)
                except HpcgearError as exc:
                    _report(sub.error(exc.message, exc.hint))
                    ok = False
            bad = bad or not ok
            items.append(value)
        if bad:
            raise _Reported("")
        return tuple(items)
    if origin is Mapping or origin is dict:
        _key_tp, value_tp = get_args(tp)
        if raw is None:
            raw = LineMap(line=where.line)
        if not isinstance(raw, dict):
            raise where.error(f"expected a mapping, got {_type_name(raw)}")
        key_lines = raw.key_lines if isinstance(raw, LineMap) else {}
        out: dict[str, Any] = {}
        bad = False
        for k, v in raw.items():
            sub = where.key(k, key_lines.get(k))
            if not isinstance(k, str):
                _report(sub.error(f"key {k!r} must be a string", "quote the key"))
                bad = True
                continue
            ok, value = _guarded(functools.partial(_convert, value_tp, v, sub, None))
            if ok:
                out[k] = value
            bad = bad or not ok
        if bad:
            raise _Reported("")
        return types.MappingProxyType(out)
    return _convert_scalar(tp, raw, where)


def _convert_scalar(tp: Any, raw: Any, where: Where) -> Any:
    if tp is Any:
        return raw
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        raise where.error(f"expected true or false, got {_type_name(raw)}")
    if tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise where.error(f"expected a whole number, got {_type_name(raw)}")
    if tp is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        raise where.error(f"expected a number, got {_type_name(raw)}")
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise where.error(f"expected a string, got {_type_name(raw)} {raw!r}",
                          "quote the value to make it a string")
    raise TypeError(f"schema: unsupported field type {tp!r}")


# ---------------------------------------------------------------------------------------
# JSON Schema
# ---------------------------------------------------------------------------------------


def json_schema(cls: type, *, title: str, schema_id: str | None = None) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for documents of dataclass ``cls``."""
    defs: dict[str, Any] = {}
    root = _json_for_dataclass(cls, defs)
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    if schema_id:
        out["$id"] = schema_id
    out["title"] = title
    out.update(root)
    if defs:
        out["$defs"] = defs
    return out


def _json_for_dataclass(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required: list[str] = []
    for key, f, tp in schema_fields(cls):
        meta = _meta(f)
        prop = dict(meta.json) if meta.json is not None else _json_for_type(tp, defs)
        if meta.json is not None and _allows_none(tp):
            prop = {"anyOf": [prop, {"type": "null"}]}
        if meta.doc:
            prop["description"] = meta.doc
        if f.default is not MISSING and _jsonable(f.default):
            prop["default"] = f.default
        elif f.default is MISSING and f.default_factory is MISSING:
            required.append(key)
        props[key] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    if doc:
        out["description"] = doc
    return out


def _allows_none(tp: Any) -> bool:
    origin = get_origin(tp)
    return (origin is typing.Union or origin is types.UnionType) and type(None) in get_args(tp)


def _json_for_type(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [_json_for_type(a, defs) for a in get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            defs[name] = _json_for_dataclass(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin is tuple:
        return {"type": "array", "items": _json_for_type(get_args(tp)[0], defs)}
    if origin is Mapping or origin is dict:
        return {"type": "object", "additionalProperties": _json_for_type(get_args(tp)[1], defs)}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp is Any:
        return {}
    raise TypeError(f"schema: unsupported field type {tp!r}")


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
