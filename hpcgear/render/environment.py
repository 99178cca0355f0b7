"""The Jinja2 environment for sbatch templates, and the filters that make it safe.

Nothing reaches a script unvetted: the environment's ``finalize`` hook refuses
any ``{{ ... }}`` whose value did not come out of one of these filters:

``q``
    ``shlex.quote``: the value becomes exactly one shell word, whatever bytes it
    holds (quotes, ``$()``, backticks, newlines, ``;``...).
``num``
    A Python ``int`` (not bool), printed in decimal.
``q_lines`` / ``q_rows``
    A list of values (``q_lines``) or of rows of values (``q_rows``), each value
    quoted by ``q``, one value or row per line: what a ``{% for %}`` over ``| q``
    would print, for the thousand-line columns of an array script.
``q_case``
    The arms of a bash ``case`` over task indexes, from a list of mappings of
    variable name -> value (one per task, task ``i`` is arm ``i``): a value
    becomes ``NAME=<q>``, a list ``NAME=( ... )`` of ``q_lines``, a list of rows
    ``NAME=( ... )`` of ``q_rows``. One filter call for an array's thousand arms
    instead of a ``{% for %}`` with five filter calls per task.
``sbatch``
    A whole ``#SBATCH`` option. sbatch reads these lines itself, not through a
    shell, so quoting would become part of the value; instead the option must be
    one word of a small safe character set (see :func:`check_sbatch_line`).

Every loaded template (shipped or a site's ``template_dir`` override) is also
linted: each ``{{ ... }}`` must end in one of those filters, and ``sbatch`` may
be used on ``#SBATCH`` lines only (and only it there).
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jinja2

from hpcgear.config.data import shipped_dir
from hpcgear.config.site import SBATCH_VALUE_RE
from hpcgear.errors import ConfigError, InvalidInputError

VETTED_FILTERS = ("q", "num", "sbatch", "q_lines", "q_rows", "q_case")
_SHELL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPR_RE = re.compile(r"\{\{(.*?)\}\}", re.S)
# The last filter, with at most a whole-number argument (``| q_lines(4)``).
_LAST_FILTER_RE = re.compile(r"\|\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(\s*\d*\s*\))?\s*$")
_SBATCH_OPTION_RE = re.compile(r"^(?:--[a-z][a-z0-9\-]*|-[A-Za-z])(?:=?(.*))?$", re.S)


class Vetted(str):
    """A string produced by a vetted filter; the only thing ``{{ }}`` may print."""

    __slots__ = ()


def q(value: Any) -> Vetted:
    """Shell-quote ``value`` (a str or int) as exactly one word."""
    return Vetted(_quote(value))


def _quote(value: Any) -> str:
    kind = type(value)
    if kind is int:
        return str(value)  # digits (and a leading -): one word as they are
    if kind is not str and (isinstance(value, bool) or not isinstance(value, str | int)):
        raise InvalidInputError(
            f"template value {value!r} is not text or a number",
            "this is a bug in the template or its caller",
        )
    text = str(value)
    if "\0" in text:
        raise InvalidInputError(f"value {text[:40]!r}... contains a NUL byte",
                                "NUL cannot be passed through a shell script")
    return shlex.quote(text)


def q_lines(values: Iterable[Any], indent: int = 0) -> Vetted:
    """Each of ``values`` quoted by :func:`q` on a line of its own (``\\n``-terminated),
    indented by ``indent`` spaces; nothing for no values."""
    pad = " " * indent
    return Vetted("".join(f"{pad}{_quote(v)}\n" for v in values))


def _quoter() -> Callable[[Any], str]:
    """:func:`_quote` that quotes each distinct text once (an array's rows repeat them)."""
    texts: dict[str, str] = {}

    def quoted(value: Any) -> str:
        if type(value) is not str:
            return _quote(value)
        got = texts.get(value)
        if got is None:
            got = texts[value] = _quote(value)
        return got

    return quoted


def q_rows(rows: Iterable[Iterable[Any]], indent: int = 0) -> Vetted:
    """Each row's values quoted by :func:`q`, space-separated, a line per row (a value
    text repeated in many rows, such as a shared file's path, is quoted once)."""
    pad = " " * indent
    quoted = _quoter()
    return Vetted("".join(f"{pad}{' '.join([quoted(v) for v in row])}\n" for row in rows))


def q_case(arms: Iterable[Mapping[str, Any]], indent: int = 0) -> Vetted:
    """The arms ``i)`` ... ``;;`` of a bash ``case`` over task indexes ``0..n-1``, arm
    ``i`` assigning the variables of ``arms[i]`` (name -> value) in order: a str or
    int as ``NAME=<q>``, a list of values as ``NAME=(`` one ``q`` per line ``)``, a
    list of rows (tuples, :class:`~hpcgear.render.paths.TaskFile`) as ``NAME=(``
    one row of ``q`` words per line ``)``.

    Arm labels are indented by ``indent`` spaces, assignments by 4 more, list lines
    by 8 more. A value text repeated in many arms (a shared tag, file or
    destination) is quoted once. Names must be shell variable names.
    """
    pad, body, item = " " * indent, " " * (indent + 4), " " * (indent + 8)
    names: set[str] = set()
    quoted = _quoter()
    out: list[str] = []
    add = out.append
    for i, arm in enumerate(arms):
        add(f"{pad}{i})\n")
        for name, value in arm.items():
            if name not in names:
                if not isinstance(name, str) or not _SHELL_NAME_RE.fullmatch(name):
                    raise InvalidInputError(f"{name!r} is not a shell variable name",
                                            "this is a bug in the template's caller")
                names.add(name)
            if not isinstance(value, list | tuple):
                add(f"{body}{name}={quoted(value)}\n")
                continue
            add(f"{body}{name}=(\n")
            for v in value:
                if type(v) is str or type(v) is int:
                    add(f"{item}{quoted(v)}\n")
                else:  # a row (a tuple, a TaskFile)
                    add(f"{item}{' '.join([quoted(x) for x in v])}\n")
            add(f"{body})\n")
        add(f"{body};;\n")
    return Vetted("".join(out))


def num(value: Any) -> Vetted:
    """A whole number, printed in decimal."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"template value {value!r} is not a whole number",
                                "this is a bug in the template or its caller")
    return Vetted(str(value))


def check_sbatch_line(option: str) -> str:
    """``option`` if it may stand alone after ``#SBATCH``; InvalidInputError otherwise."""
    m = _SBATCH_OPTION_RE.fullmatch(option) if isinstance(option, str) else None
    if m is None or (m.group(1) and not SBATCH_VALUE_RE.fullmatch(m.group(1))):
        raise InvalidInputError(
            f"sbatch option {option!r} cannot be written to an #SBATCH line",
            "values there are read by sbatch, not a shell: use letters, digits and "
            "_ . , : = @ % + / - & | [ ] * ! only",
        )
    return option


def sbatch(value: Any) -> Vetted:
    """Validate a whole ``#SBATCH`` option (see :func:`check_sbatch_line`)."""
    return Vetted(check_sbatch_line(value))


def _finalize(value: Any) -> Any:
    if isinstance(value, Vetted):
        return value
    raise ConfigError(
        f"an sbatch template prints {str(value)[:60]!r} without a vetted filter",
        "end every {{ ... }} with | q (text), | num (whole numbers) or, on #SBATCH lines, "
        "| sbatch",
    )


def lint_template(text: str) -> list[tuple[int, str]]:
    """Problems in template source ``text`` as (line, message); empty if clean."""
    problems: list[tuple[int, str]] = []
    for m in _EXPR_RE.finditer(text):
        line_no = text.count("\n", 0, m.start()) + 1
        line_start = text.rfind("\n", 0, m.start()) + 1
        on_sbatch_line = text.startswith("#SBATCH", line_start)
        expr = m.group(1).strip().rstrip("-").strip()
        last = _LAST_FILTER_RE.search(expr)
        name = last.group(1) if last else None
        if name not in VETTED_FILTERS:
            problems.append((line_no, f"{{{{ {expr} }}}} does not end with | q, | num, "
                                      "| q_lines, | q_rows, | q_case or | sbatch"))
        elif on_sbatch_line and name != "sbatch":
            problems.append((line_no, "#SBATCH lines are not shell-parsed: use | sbatch there"))
        elif not on_sbatch_line and name == "sbatch":
            problems.append((line_no, "| sbatch is only for #SBATCH lines; use | q"))
    for bad, why in (
        ("{% raw", "raw blocks bypass the filters"),
        ("|safe", "safe bypasses the filters"),
        ("| safe", "safe bypasses the filters"),
        ("autoescape", "escaping is done by | q"),
        ("${#", "Jinja reads {# as a comment; pass counts from Python instead"),
    ):
        if bad in text:
            line_no = text.count("\n", 0, text.index(bad)) + 1
            problems.append((line_no, f"{bad!r} is not allowed in sbatch templates: {why}"))
    return problems


class _LintingLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that refuses templates failing :func:`lint_template`."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        problems = lint_template(source)
        if problems:
            line, message = problems[0]
            raise ConfigError(
                f"{filename}:{line}: {message}",
                "every value in an sbatch template must go through a vetted filter",
            )
        return source, filename, uptodate


@functools.lru_cache(maxsize=16)
def template_environment(template_dir: str | None = None) -> jinja2.Environment:
    """The environment for a site (``template_dir`` first, then the shipped templates)."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir:
        loaders.append(_LintingLoader(template_dir))
    loaders.append(_LintingLoader(str(shipped_dir("sbatch_templates"))))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        # Shell scripts, not HTML: HTML escaping would corrupt them. Every value is
        # shell-quoted by | q instead, and _finalize refuses anything unquoted.
        autoescape=False,  # noqa: S701
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters["q"] = q
    env.filters["num"] = num
    env.filters["sbatch"] = sbatch
    env.filters["q_lines"] = q_lines
    env.filters["q_case"] = q_case
    env.filters["q_rows"] = q_rows
    return env
