"""Checks on user text before it is stored: one place for what a value may hold.

Values (info, gear config, rule config) may hold any text except what no
database can keep: NUL characters (PostgreSQL refuses them in text and JSON),
lone surrogates (not encodable as UTF-8) and non-finite numbers (not JSON).
Identifiers (labels, tags, info keys) additionally refuse control and format
characters (tabs, newlines, ESC, bidi overrides, zero-width characters), which
would make them look different from what they are on a terminal.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from hpcgear.errors import InvalidInputError

_BAD_IDENTIFIER_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def unsafe_chars(text: str) -> list[str]:
    """The characters of ``text`` not allowed in an identifier, as escapes."""
    return sorted(
        {
            repr(ch)[1:-1] if ch.isascii() else f"U+{ord(ch):04X}"
            for ch in text
            if unicodedata.category(ch) in _BAD_IDENTIFIER_CATEGORIES
        }
    )


def check_identifier(text: str, what: str) -> str:
    """Refuse control/format characters and surrounding whitespace in a name."""
    bad = unsafe_chars(text)
    if bad:
        raise InvalidInputError(
            f"{what} {text[:60]!r} contains control or format characters ({', '.join(bad)})",
            "remove tabs, newlines, escape, bidi and zero-width characters",
        )
    if text != text.strip():
        raise InvalidInputError(
            f"{what} {text[:60]!r} starts or ends with whitespace", "remove the surrounding spaces"
        )
    return text


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\x00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate character"
    return None


def check_storable(value: Any, what: str, *, _path: str = "") -> None:
    """Raise InvalidInputError unless ``value`` (JSON-like) can be stored as given.

    Checked before anything is written (and by ``--dry-run``), so the real run
    and the preview refuse the same input with the same message.
    """
    where = f"{what} {_path}".rstrip() if _path else what
    if isinstance(value, str):
        problem = _string_problem(value)
        if problem:
            raise InvalidInputError(
                f"{where} contains {problem}",
                "remove it; stored text may not hold NUL or broken characters",
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(
                f"{where} is {value!r}", "use a finite number (NaN and Infinity are not JSON)"
            )
    elif isinstance(value, Mapping):
        for k, v in value.items():
            key = str(k)
            problem = _string_problem(key)
            if problem:
                raise InvalidInputError(
                    f"{what} key {key[:60]!r} contains {problem}", "rename the key"
                )
            check_storable(v, what, _path=f"{_path}.{key}" if _path else key)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_storable(v, what, _path=f"{_path}[{i}]")


# ----------------------------------------------------------------- regular expressions

MAX_REGEX = 1000
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT"})


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` may not be used as a regular expression over user data, or None.

    Python's ``re`` backtracks without a time limit, so a pattern that repeats a part
    which can itself match in several ways (``(a+)+``, ``(a|aa)*``, ``(x{1,9}){1,9}``)
    takes exponential time on a short hostile string and would stall the controller.
    Such patterns are refused when saved; a single level of repetition is always fine.
    """
    if len(pattern) > MAX_REGEX:
        return f"is {len(pattern)} characters long (at most {MAX_REGEX})"
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return f"is not a valid regular expression: {exc}"
    except (RecursionError, OverflowError, ValueError) as exc:
        return f"is not a usable regular expression: {type(exc).__name__}"
    del compiled
    parser: Any = importlib.import_module("re._parser")
    try:
        parsed = parser.parse(pattern)
    except RecursionError:
        return "is nested too deeply"
    return _nested_repeat(list(parsed), inside_repeat=False)


def _nested_repeat(items: list[Any], *, inside_repeat: bool) -> str | None:
    for op, av in items:
        name = str(op)
        if name in _REPEATS:
            _lo, hi, sub = av
            repeats = hi > 1
            if repeats and inside_repeat:
                return ("repeats a part that is itself repeated (nested quantifiers backtrack "
                        "exponentially)")
            if repeats and any(str(o) == "BRANCH" for o, _a in _flatten(list(sub))):
                return "repeats an alternation (a|b)+ whose branches can backtrack exponentially"
            found = _nested_repeat(list(sub), inside_repeat=inside_repeat or repeats)
            if found:
                return found
        elif name == "SUBPATTERN":
            found = _nested_repeat(list(av[-1]), inside_repeat=inside_repeat)
            if found:
                return found
        elif name == "BRANCH":
            for branch in av[1]:
                found = _nested_repeat(list(branch), inside_repeat=inside_repeat)
                if found:
                    return found
        elif name in ("ASSERT", "ASSERT_NOT"):
            found = _nested_repeat(list(av[1]), inside_repeat=inside_repeat)
            if found:
                return found
    return None


def _flatten(items: list[Any]) -> list[tuple[Any, Any]]:
    """Tokens of ``items`` and of the groups inside them (not inside nested repeats)."""
    out: list[tuple[Any, Any]] = []
    for op, av in items:
        out.append((op, av))
        if str(op) == "SUBPATTERN":
            out.extend(_flatten(list(av[-1])))
    return out


def check_regex(pattern: str, what: str) -> re.Pattern[str]:
    """Compile ``pattern`` or raise InvalidInputError saying why it is refused."""
    problem = regex_problem(pattern)
    if problem:
        raise InvalidInputError(
            f"{what} {pattern[:80]!r} {problem}",
            "write it without nested repetition, e.g. [a-z0-9_]+ instead of ([a-z]+[0-9]*)+",
        )
    return re.compile(pattern)


# ----------------------------------------------------------------- JSON from users

MAX_JSON_DEPTH = 32  # as for a gear's .metadata.json info


def json_depth_problem(value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Say so if ``value`` nests lists/objects deeper than ``limit`` (walked iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return f"is nested deeper than {limit} levels"
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)
    return None


def json_or_text(raw: str, what: str) -> Any:
    """A value typed by a user: JSON when it parses as JSON, else the text itself.

    Raises InvalidInputError for JSON nested deeper than :data:`MAX_JSON_DEPTH` (Python's
    parser would hit its recursion limit long before any database does).
    """
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    except RecursionError:
        value = None
        problem: str | None = "is nested too deeply to read"
    else:
        problem = json_depth_problem(value)
    if problem:
        raise InvalidInputError(
            f"{what} {problem}", f"keep values at most {MAX_JSON_DEPTH} levels deep"
        )
    return value


def is_log_placeholder(text: str) -> bool:
    """Whether a job log read is the one-line "(no log yet ...)" note, not log text."""
    body = text.rstrip("\n")
    return text.startswith("(") and body.endswith(")") and "\n" not in body


#: One line per value below the top two levels: CPython's C encoder (which
#: ``indent=`` turns off) does the bulk, several times faster for an array's
#: thousands of config.json files.
_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


@functools.lru_cache(maxsize=4096)
def _key_text(key: str) -> str:
    """A key's JSON text: the same few keys recur in every config.json of an array."""
    return _COMPACT.encode(key)


def dump_sections_json(document: Mapping[str, Any]) -> str:
    """JSON text of a document of sections (e.g. config.json): key order kept, UTF-8,
    final newline; each section (``config``, ``inputs``, ...) and each of its entries
    on a line of its own, 2-space indented, an entry's value on one line.

    Raises
    ------
    TypeError, ValueError
        A value is not JSON data (an object, NaN).
    """
    enc, key = _COMPACT.encode, _key_text
    parts = []
    for name, value in document.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            inner = ",\n".join([f"    {key(k)}: {enc(v)}" for k, v in value.items()])
            parts.append(f"  {key(str(name))}: {{\n{inner}\n  }}")
        else:
            parts.append(f"  {key(str(name))}: {enc(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n" if parts else "{}\n"
