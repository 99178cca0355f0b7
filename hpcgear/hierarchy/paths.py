"""Labels, ids and hierarchy paths (``group/project/subject/session/acquisition``).

Everything here is pure validation: a label that would break a path, a shell
script or a terminal is refused with one clear message before it is stored.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcgear.errors import InvalidInputError

LEVELS: tuple[str, ...] = ("group", "project", "subject", "session", "acquisition")
#: A path segment ``@ID`` names an analysis by its id, or a prefix of at least 6 characters.
ID_PREFIX = "@"
MIN_ID_PREFIX = 6
MAX_LABEL = 256
MAX_FILE_NAME = 255
GROUP_ID_RE = re.compile(r"^[0-9a-z][0-9a-z_\-]{0,63}$")
LOGIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")


def _bad_chars(text: str) -> list[str]:
    """Characters that may not appear in an identifier: control, format (bidi
    overrides, zero-width), surrogate, private-use and unassigned code points."""
    bad = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn") or ch in "\u2028\u2029":
            bad.append(repr(ch))
    return bad


def check_label(label: str, *, what: str = "label") -> str:
    """Return ``label`` if usable as a hierarchy label, else raise InvalidInputError."""
    if not isinstance(label, str) or not label:
        raise InvalidInputError(f"{what} is empty", f"give the {what} a name")
    if len(label) > MAX_LABEL:
        raise InvalidInputError(
            f"{what} is {len(label)} characters long (at most {MAX_LABEL})",
            f"shorten the {what}; put long descriptions into info instead",
        )
    if "/" in label:
        raise InvalidInputError(
            f"{what} {label!r} contains '/'", "'/' separates path levels; use '-' or '_' instead"
        )
    bad = _bad_chars(label)
    if bad:
        raise InvalidInputError(
            f"{what} {label[:60]!r} contains control characters ({', '.join(sorted(set(bad)))})",
            "remove tabs, newlines and other control characters",
        )
    if label in (".", ".."):
        raise InvalidInputError(f"{what} may not be {label!r}", "choose a real name")
    if label != label.strip():
        raise InvalidInputError(
            f"{what} {label!r} starts or ends with whitespace", "remove the surrounding spaces"
        )
    return label


def check_group_id(group_id: str) -> str:
    if not GROUP_ID_RE.fullmatch(group_id or ""):
        raise InvalidInputError(
            f"group id {group_id[:80]!r} is not valid",
            "group ids are 1-64 characters of lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit",
        )
    return group_id


def check_login(login: str) -> str:
    if not LOGIN_RE.fullmatch(login or ""):
        raise InvalidInputError(
            f"user name {login[:80]!r} is not valid",
            "use the login name: letters, digits, '.', '-' and '_' (at most 64)",
        )
    return login


def check_file_name(name: str) -> str:
    if not name:
        raise InvalidInputError("file name is empty", "give the file a name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME:
        raise InvalidInputError(
            f"file name {name[:60]!r}... is longer than {MAX_FILE_NAME} bytes", "rename the file"
        )
    if "/" in name or "\\" in name:
        raise InvalidInputError(
            f"file name {name!r} contains a path separator",
            "upload the file itself, not a path inside a name",
        )
    if name in (".", ".."):
        raise InvalidInputError(f"file name may not be {name!r}", "rename the file")
    bad = _bad_chars(name)
    if bad:
        raise InvalidInputError(
            f"file name {name[:60]!r} contains control characters ({', '.join(sorted(set(bad)))})",
            "rename the file without tabs, newlines, bidi or other control characters",
        )
    if name != name.strip():
        # A path given on the command line is stripped of surrounding spaces, so
        # such a file could be stored but never addressed again.
        raise InvalidInputError(
            f"file name {name!r} starts or ends with whitespace",
            "rename the file without leading or trailing spaces",
        )
    return name


def check_tag(tag: str) -> str:
    if not tag or len(tag) > 64:
        raise InvalidInputError(
            f"tag {tag[:80]!r} must be 1-64 characters",
            "use short tags like hpc, qc-passed or cpu=4",
        )
    if _bad_chars(tag) or "," in tag or tag != tag.strip():
        raise InvalidInputError(
            f"tag {tag[:60]!r} contains control characters, commas or surrounding spaces",
            "use a plain short word",
        )
    return tag


@dataclass(frozen=True, slots=True)
class HierarchyPath:
    """A parsed path: the group id, then labels of the lower levels."""

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, *, min_depth: int = 0, max_depth: int = len(LEVELS)) -> HierarchyPath:
        text = text or ""
        stripped = text.strip("/")
        parts = tuple(p for p in stripped.split("/")) if stripped else ()
        if any(p != p.strip() for p in parts) or (text.strip() and text != text.strip()):
            # Stripping would silently address another container (the parent).
            raise InvalidInputError(
                f"path {text!r} has a level starting or ending with whitespace",
                "remove the spaces; labels and file names never start or end with one",
            )
        if any(p == "" for p in parts):
            raise InvalidInputError(
                f"path {text!r} has an empty level ('//')",
                "write paths like group/project/subject/session",
            )
        if len(parts) < min_depth:
            need = "/".join(LEVELS[:min_depth])
            raise InvalidInputError(f"path {text!r} is too short", f"expected at least {need}")
        if len(parts) > max_depth:
            raise InvalidInputError(
                f"path {text!r} has {len(parts)} levels (at most {max_depth})",
                "levels are " + "/".join(LEVELS[:max_depth]),
            )
        return cls(parts)

    @property
    def depth(self) -> int:
        return len(self.parts)

    @property
    def level(self) -> str | None:
        return LEVELS[self.depth - 1] if self.parts else None

    def __str__(self) -> str:
        return "/".join(self.parts)


def pick_analysis(parent: Any, candidates: Sequence[Any], segment: str) -> Any | None:
    """Which of ``parent``'s analyses ``candidates`` (oldest first) the path segment
    names, by ``@ID`` prefix or label (see :mod:`hpcgear.hierarchy.analyses`); None if
    none. Containers may be models or Core rows. InvalidInputError when ambiguous."""
    if segment.startswith(ID_PREFIX) and len(segment) > MIN_ID_PREFIX:
        prefix = segment[len(ID_PREFIX) :]
        by_id = [a for a in candidates if a.id.startswith(prefix)]
        if len(by_id) == 1:
            return by_id[0]
        if len(by_id) > 1:
            raise InvalidInputError(
                f"analysis id prefix {prefix!r} matches {len(by_id)} analyses of "
                f"{parent.type} {parent.label!r}",
                "give more characters of the id (`hpcgear ls` shows the full ids)",
            )
    by_label = [a for a in candidates if a.label == segment]
    if len(by_label) > 1:
        refs = ", ".join(ID_PREFIX + a.id for a in by_label[:5])
        raise InvalidInputError(
            f"{len(by_label)} analyses of {parent.type} {parent.label!r} are labelled {segment!r}",
            f"name one by id instead of its label: {refs}",
        )
    return by_label[0] if by_label else None
