"""YAML loading that remembers where every key and list item came from.

Admin documents (site YAML) must fail with ``file:line`` in every message, so the
loader builds :class:`LineMap` / :class:`LineSeq` (a ``dict`` / ``list`` that also
carry the 1-based line of the node, of each key and of each item).

Two YAML 1.1 traps are closed here because they bite resource specs:

* ``max_time: 1:00:00`` would be the *sexagesimal integer* 3600 under YAML 1.1;
  this loader reads it as the string ``"1:00:00"`` (SLURM's spelling).
* Duplicate keys silently keep the last value in PyYAML; here they are an error.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from hpcgear.errors import SchemaError

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class LineMap(dict[Any, Any]):
    """A mapping from YAML with the line of the mapping and of each key."""

    line: int
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, line: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = line
        self.key_lines = {}


class LineSeq(list[Any]):
    """A sequence from YAML with the line of the sequence and of each item."""

    line: int
    item_lines: list[int]

    def __init__(self, *args: Any, line: int = 0) -> None:
        super().__init__(*args)
        self.line = line
        self.item_lines = []


class _LineLoader(yaml.SafeLoader):
    """SafeLoader building LineMap/LineSeq and without base-60 numbers."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source


# Copy the resolver table so SafeLoader itself is left untouched, then re-add int and
# float without their sexagesimal (1:00:00) alternatives.
_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    _INT_TAG,
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_LineLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineMap:
    loader.flatten_mapping(node)
    result = LineMap(line=node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise SchemaError(
                f"{loader.source}:{line}: a mapping key must be a plain value",
                "write keys as plain words",
            ) from None
        if key in result:
            raise SchemaError(
                f"{loader.source}:{line}: duplicate key {key!r} "
                f"(first given on line {result.key_lines[key]})",
                "give each key once",
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineSeq:
    result = LineSeq(line=node.start_mark.line + 1)
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.item_lines.append(item.start_mark.line + 1)
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def unreadable_char(text: str) -> tuple[int, str] | None:
    """The first character PyYAML's reader refuses (NUL, ESC, ...) as (line, escape)."""
    m = _NON_PRINTABLE.search(text)
    if m is None:
        return None
    ch = m.group()
    return text.count("\n", 0, m.start()) + 1, repr(ch)[1:-1] if ord(ch) < 0x10000 else repr(ch)


# The characters yaml.reader.Reader.check_printable refuses.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010ffff]"
)


def load_yaml_with_lines(text: str, source: str) -> Any:
    """Parse one YAML document; mappings and lists come back as LineMap / LineSeq.

    Raises
    ------
    SchemaError
        On a YAML syntax error or a duplicate key, naming ``source:line``.
    """
    bad = unreadable_char(text)
    if bad is not None:
        raise SchemaError(
            f"{source}:{bad[0]}: contains the control character {bad[1]} (not allowed in YAML)",
            "remove it; write special characters as escapes inside double quotes",
        )
    loader = _LineLoader(text, source)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise SchemaError(
            f"{source}{line}: YAML syntax error: {problem}",
            "check indentation and quoting near that line",
        ) from None
    except yaml.YAMLError as exc:
        raise SchemaError(f"{source}: YAML error: {exc}", "check the file is valid YAML") from None
    except RecursionError:  # PyYAML composes and constructs nested nodes recursively
        raise SchemaError(
            f"{source}: the YAML is nested too deeply to read",
            "no hpcgear document nests more than a few levels; remove the runaway brackets",
        ) from None
    finally:
        loader.dispose()


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as text, or a SchemaError naming the line of the first byte that is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SchemaError(
            f"{source}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})",
            "save the file as UTF-8",
        ) from None
    return text[1:] if text.startswith("\ufeff") else text
