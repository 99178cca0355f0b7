"""Checks on user text before it is stored: one place for what a value may hold.

Values (info, gear config, rule config) may hold any text except what no
database can keep: NUL characters (PostgreSQL refuses them in text and JSON),
lone surrogates (not encodable as UTF-8) and non-finite numbers (not JSON).
Identifiers (labels, tags, info keys) additionally refuse control and format
characters (tabs, newlines, ESC, bidi overrides, zero-width characters), which
would make them look different from what they are on a terminal.
"""

from __future__ import annotations

import math
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
