"""Parse and validate Flywheel gear manifests (``manifest.json``).

The reference is the Flywheel gear spec (``flywheel-io/gears``, ``spec/``):
a JSON object with ``name``, ``label``, ``version``, ``inputs``, ``config``,
``custom`` and a few descriptive fields; each input has a ``base`` of
``file``, ``api-key`` or ``context``; each config option is a JSON-schema
(draft 4) snippet with a ``type`` plus ``optional``/``default``.

Where this parser is strict and where it is lenient
---------------------------------------------------
Published gears must install unchanged, so anything real gears do that cannot
hurt a job is accepted and recorded in :attr:`GearManifest.warnings`:
duplicate JSON keys (the last wins, as in every JSON reader), ``"int"`` and
``"float"`` as config types, numeric ``environment`` values, non-standard
``min``/``max`` keywords (kept, not enforced), missing descriptive fields,
unknown keywords inside options and inputs (kept verbatim in ``raw``).

What would break or silently change a job is an error: a name outside
``^[a-z0-9-]+$``, an unknown top-level key (a typo such as ``"comand"`` would
otherwise run the image's default entry point), an input name that is not a
safe directory name, an unknown input ``base`` or category, an image reference
that cannot be pulled, an unusable constraint (bad regex, ``minimum`` above
``maximum``), a ``default`` that violates its own option, ``default`` together
with ``optional`` (the spec forbids it), an environment name a shell cannot
export, a reserved HPC key whose default is not a valid resource.

Every problem is collected and reported at once in one :class:`ManifestError`
whose message names the file (and the line, when parsing a file).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcgear.errors import ManifestError, NotFoundError
from hpcgear.gears import reserved
from hpcgear.spec import BIDS_DATATYPES, BidsViewRequest
from hpcgear.text import regex_problem, unsafe_chars

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"

NAME_RE = re.compile(r"^[a-z0-9\-]+$")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]*")
NAME_MAX = 100
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Recommended by the spec for input names; others only get a warning.
INPUT_NAME_RECOMMENDED_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

CONFIG_TYPES = ("string", "integer", "number", "boolean", "array")
# Spellings seen in published gears (scitran nifti-montage "int", INC mriqc "float").
CONFIG_TYPE_ALIASES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
INPUT_BASES = ("file", "api-key", "context")
CATEGORIES = ("utility", "analysis", "converter", "classifier", "qa")
DEFAULT_CATEGORY = "utility"

TOP_LEVEL_KEYS = (
    "name",
    "label",
    "description",
    "version",
    "author",
    "maintainer",
    "license",
    "source",
    "url",
    "cite",
    "command",
    "environment",
    "inputs",
    "config",
    "custom",
    "capabilities",
    "output_configuration",
    "flywheel",  # legacy, "currently unused" per the spec; old gears carry "flywheel": "0"
)
# The spec requires these; missing ones are warnings except name and version.
SPEC_REQUIRED_KEYS = (
    "author",
    "config",
    "description",
    "inputs",
    "label",
    "license",
    "source",
    "url",
)
_MAX_LENGTHS = {
    "label": 100,
    "author": 100,
    "maintainer": 100,
    "description": 5000,
    "cite": 5000,
    "source": 1000,
    "url": 1000,
    "version": 100,
}
_STRING_FIELDS = (
    "label",
    "description",
    "author",
    "maintainer",
    "license",
    "source",
    "url",
    "cite",
)

# Config-option keywords this module understands. Others are kept in ``raw``.
_OPTION_KEYWORDS = frozenset(
    {
        "type",
        "description",
        "default",
        "optional",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "multipleOf",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
        "id",
        "title",
    }
)

# Docker/OCI image reference (distribution/reference grammar).
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?)"
_PATH_COMPONENT = r"(?:[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)"
IMAGE_REF_RE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)

JsonPath = tuple[str, ...]


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class ManifestInput:
    """One entry of the manifest's ``inputs``.

    ``type_filter`` is the list in ``"type": {"enum": [...]}`` (file types the
    gear accepts), or None when the input takes any type.
    """

    name: str
    base: str  # "file", "api-key" or "context"
    optional: bool = False
    description: str = ""
    type_filter: tuple[str, ...] | None = None
    read_only: bool = False  # api-key only
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def required(self) -> bool:
        """A file input the job cannot run without."""
        return self.base == "file" and not self.optional


@dataclass(frozen=True, slots=True)
class ConfigOption:
    """One entry of the manifest's ``config`` (also used for array ``items``).

    Bounds are normalised: draft-4 ``"exclusiveMaximum": true`` and draft-6
    ``"exclusiveMaximum": 100`` both become ``maximum`` plus
    ``exclusive_maximum=True``. ``type`` is None when the manifest gave none
    (any JSON value is then accepted).
    """

    name: str
    type: str | None
    description: str = ""
    default: Any = None
    has_default: bool = False
    optional: bool = False
    enum: tuple[Any, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    multiple_of: int | float | None = None
    items: ConfigOption | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique_items: bool = False
    id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def required(self) -> bool:
        """A value must be supplied: not optional and no default."""
        return not self.optional and not self.has_default

    def check(self, value: Any) -> tuple[Any, tuple[str, ...]]:
        """Validate ``value``; return it normalised and the problems found.

        Normalisation: an integral float for an ``integer`` option becomes an
        ``int``; a tuple for an ``array`` option becomes a list. Problems are
        phrases without the option name, e.g. ``"must be at most 3, got 7"``.
        """
        if self.type is not None:
            ok, value = _check_type(self.type, value)
            if not ok:
                return value, (f"must be {_TYPE_WORDS[self.type]}, got {_show(value)}",)
        if self.enum is not None and not any(_json_equal(value, e) for e in self.enum):
            return value, (f"must be one of {_show_all(self.enum)}, got {_show(value)}",)
        problems: list[str] = []
        if _is_number(value):
            problems.extend(self._check_number(value))
        elif isinstance(value, str):
            problems.extend(self._check_string(value))
        elif isinstance(value, list):
            value, item_problems = self._check_array(value)
            problems.extend(item_problems)
        return value, tuple(problems)

    def describe(self) -> str:
        """Short human description of the accepted values, for errors and help."""
        parts = [self.type or "any JSON value"]
        if self.enum is not None:
            parts.append(f"one of {_show_all(self.enum)}")
        if self.minimum is not None:
            parts.append(f"{'>' if self.exclusive_minimum else '>='} {_show(self.minimum)}")
        if self.maximum is not None:
            parts.append(f"{'<' if self.exclusive_maximum else '<='} {_show(self.maximum)}")
        if self.multiple_of is not None:
            parts.append(f"multiple of {_show(self.multiple_of)}")
        if self.min_length is not None:
            parts.append(f"at least {self.min_length} characters")
        if self.max_length is not None:
            parts.append(f"at most {self.max_length} characters")
        if self.pattern is not None:
            parts.append(f"matching {self.pattern}")
        if self.min_items is not None:
            parts.append(f"at least {_items(self.min_items)}")
        if self.max_items is not None:
            parts.append(f"at most {_items(self.max_items)}")
        if self.unique_items:
            parts.append("unique items")
        if self.items is not None:
            parts.append(f"items: {self.items.describe()}")
        return ", ".join(parts)

    def _check_number(self, value: int | float) -> list[str]:
        problems = []
        if self.minimum is not None:
            if self.exclusive_minimum and not value > self.minimum:
                problems.append(f"must be greater than {_show(self.minimum)}, got {_show(value)}")
            elif not self.exclusive_minimum and not value >= self.minimum:
                problems.append(f"must be at least {_show(self.minimum)}, got {_show(value)}")
        if self.maximum is not None:
            if self.exclusive_maximum and not value < self.maximum:
                problems.append(f"must be less than {_show(self.maximum)}, got {_show(value)}")
            elif not self.exclusive_maximum and not value <= self.maximum:
                problems.append(f"must be at most {_show(self.maximum)}, got {_show(value)}")
        if self.multiple_of is not None and not _is_multiple(value, self.multiple_of):
            problems.append(f"must be a multiple of {_show(self.multiple_of)}, got {_show(value)}")
        return problems

    def _check_string(self, value: str) -> list[str]:
        problems = []
        if self.min_length is not None and len(value) < self.min_length:
            problems.append(f"must be at least {self.min_length} characters long, got {len(value)}")
        if self.max_length is not None and len(value) > self.max_length:
            problems.append(f"must be at most {self.max_length} characters long, got {len(value)}")
        # JSON-schema patterns are unanchored searches (ECMA-262 semantics).
        if self.pattern is not None and re.search(self.pattern, value) is None:
            problems.append(f"must match the pattern {self.pattern}, got {_show(value)}")
        return problems

    def _check_array(self, value: list[Any]) -> tuple[list[Any], list[str]]:
        problems = []
        if self.min_items is not None and len(value) < self.min_items:
            problems.append(f"must have at least {_items(self.min_items)}, got {len(value)}")
        if self.max_items is not None and len(value) > self.max_items:
            problems.append(f"must have at most {_items(self.max_items)}, got {len(value)}")
        if self.unique_items:
            seen: list[Any] = []
            for item in value:
                if any(_json_equal(item, s) for s in seen):
                    problems.append(f"must not repeat items, {_show(item)} appears twice")
                    break
                seen.append(item)
        if self.items is not None:
            normalised = []
            for index, item in enumerate(value):
                item_value, item_problems = self.items.check(item)
                normalised.append(item_value)
                problems.extend(f"item {index} {p}" for p in item_problems)
            value = normalised
        return value, problems


@dataclass(frozen=True, slots=True)
class GearManifest:
    """A validated gear manifest.

    ``raw`` is the manifest as read (after JSON decoding; for duplicate keys
    the last one wins); install it and hash it, never a re-serialisation of
    the typed fields. ``sha256`` is ``"sha256:<hex>"`` of canonical JSON
    (sorted keys, no whitespace, UTF-8), so key order and formatting do not
    change it. ``warnings`` lists tolerated oddities (see module docstring).
    """

    name: str
    version: str
    label: str
    description: str
    author: str
    maintainer: str
    license: str
    source: str
    url: str
    cite: str
    command: str | None
    environment: tuple[tuple[str, str], ...]
    inputs: tuple[ManifestInput, ...]
    config: tuple[ConfigOption, ...]
    custom: dict[str, Any] = field(repr=False, compare=False)
    capabilities: tuple[str, ...]
    category: str
    image: str | None
    suite: str | None
    show_job: bool
    sha256: str
    origin: str
    warnings: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # custom.hpcgear.bids-view: stage a BIDS tree of the destination (None: no).
    bids_view: BidsViewRequest | None = None

    @property
    def is_analysis(self) -> bool:
        """Analysis gears write into a new analysis container."""
        return self.category == "analysis"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def config_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.config)

    def input(self, name: str) -> ManifestInput:
        """The input called ``name``; KeyError naming the valid ones otherwise."""
        for item in self.inputs:
            if item.name == name:
                return item
        raise KeyError(
            f"gear {self.name} has no input {name!r}; inputs: "
            f"{', '.join(self.input_names) or '(none)'}"
        )

    def option(self, name: str) -> ConfigOption:
        """The config option called ``name``; KeyError naming the valid ones otherwise."""
        for item in self.config:
            if item.name == name:
                return item
        raise KeyError(
            f"gear {self.name} has no config option {name!r}; options: "
            f"{', '.join(self.config_names) or '(none)'}"
        )

    def defaults(self) -> dict[str, Any]:
        """The declared defaults, a fresh copy each call."""
        return {o.name: copy.deepcopy(o.default) for o in self.config if o.has_default}


# --------------------------------------------------------------------------- entry points


def load_manifest(path: str | Path) -> GearManifest:
    """Read and validate a manifest file (or ``<dir>/manifest.json``).

    Raises
    ------
    NotFoundError
        The file does not exist.
    ManifestError
        The file is not JSON (message ``file:line:col: ...``) or not a valid
        manifest (every problem listed, with line numbers).
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_FILE
    source = str(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(
            f"{source}: no such gear manifest",
            "give the path of the gear's manifest.json (or the directory holding it)",
        ) from None
    except OSError as exc:
        raise ManifestError(
            f"{source}: cannot read: {exc.strerror}", "check the path and its permissions"
        ) from None
    return parse_manifest_text(data, source=source)


def parse_manifest_text(text: str | bytes, *, source: str = "<manifest>") -> GearManifest:
    """Validate manifest JSON text; ``source`` names it in errors."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"{source}: not UTF-8 text (bad byte at offset {exc.start})",
                "save the manifest as UTF-8",
            ) from None
    elif text.startswith("\ufeff"):
        text = text[1:]
    duplicates: list[str] = []
    data = _decode_json(text, source, duplicates)
    return _parse(data, source=source, text=text, duplicates=duplicates)


def parse_manifest(data: Mapping[str, Any], *, source: str = "<manifest>") -> GearManifest:
    """Validate an already-decoded manifest (e.g. one stored in the database)."""
    return _parse(data, source=source, text=None, duplicates=[])


# --------------------------------------------------------------------------- JSON decoding


class _NonFiniteNumberError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumberError(name)


def _decode_json(text: str, source: str, duplicates: list[str]) -> Any:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                duplicates.append(key)
            obj[key] = value
        return obj

    if not text.strip():
        raise ManifestError(
            f"{source}:1:1: file is empty",
            "a gear manifest is a JSON object; start from the gear's published manifest.json",
        )
    try:
        return json.loads(text, object_pairs_hook=pairs_hook, parse_constant=_reject_constant)
    except RecursionError:
        raise ManifestError(
            f"{source}: the JSON is nested too deeply to read",
            f"a gear manifest nests a few levels (at most {MAX_DEPTH}); remove the runaway "
            "brackets",
        ) from None
    except json.JSONDecodeError as exc:
        raise _json_syntax_error(text, source, exc) from None
    except _NonFiniteNumberError as exc:
        line = _line_of(text, text.find(str(exc)))
        raise ManifestError(
            f"{source}:{line}: {exc} is not valid JSON",
            "write a finite number, or a string",
        ) from None


def _json_syntax_error(text: str, source: str, exc: json.JSONDecodeError) -> ManifestError:
    lines = text.splitlines()
    line_text = lines[exc.lineno - 1] if 0 < exc.lineno <= len(lines) else ""
    stripped = line_text.strip()
    found = f", found {text[exc.pos]!r}" if exc.pos < len(text) else ", at end of file"
    message = f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}{found}"
    if stripped:
        message += f" in line {_truncate(stripped, 80)!r}"
    if exc.pos >= len(text.rstrip()):
        hint = "the file ends too early (truncated?): check for a missing closing '}' or ']'"
    elif stripped.startswith(("#", "//")):
        hint = (
            f"JSON has no comments: delete line {exc.lineno} "
            f'(or move the note into a "description")'
        )
    elif re.match(r"^[A-Za-z_][\w\-]*\s*:", stripped):
        hint = 'JSON keys need double quotes, e.g. "name": "my-gear"'
    elif exc.msg.startswith("Expecting property name") and _previous_char(text, exc.pos) == ",":
        hint = "remove the trailing comma before the closing brace"
    elif exc.msg.startswith("Expecting property name") and exc.pos < len(text):
        hint = (
            f"a quoted key must start at line {exc.lineno} column {exc.colno}: "
            f"remove the stray {text[exc.pos]!r} or quote the key"
        )
    else:
        hint = (
            f"fix the JSON at line {exc.lineno} column {exc.colno}; "
            "`python -m json.tool FILE` points at the same spot"
        )
    return ManifestError(message, hint)


def _previous_char(text: str, pos: int) -> str:
    before = text[:pos].rstrip()
    return before[-1] if before else ""


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class _Problem:
    path: JsonPath
    message: str
    hint: str = ""


class _Checker:
    """Collects every problem and warning of one manifest."""

    def __init__(self) -> None:
        self.problems: list[_Problem] = []
        self.warnings: list[tuple[JsonPath, str]] = []

    def error(self, path: JsonPath, message: str, hint: str = "") -> None:
        self.problems.append(_Problem(path, message, hint))

    def warn(self, path: JsonPath, message: str) -> None:
        self.warnings.append((path, message))


MAX_DEPTH = 64
_UNSTORABLE_HINT = (
    "remove it: a manifest is stored as given, and stored text may not hold NUL or broken "
    "(surrogate) characters or nest deeper than 64 levels"
)


def _unstorable(data: Any) -> str | None:
    """What keeps ``data`` from being stored as plain JSON text, or None.

    Walks iteratively (a recursive walk of hostile nesting is itself the crash), checking
    the depth and every key and string for NUL and lone surrogates, which neither
    PostgreSQL nor UTF-8 can hold.
    """
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            return f"{where or 'the manifest'} is nested deeper than {MAX_DEPTH} levels"
        shown = repr(_truncate(where, 120)) if where else "the manifest"
        if isinstance(node, str):
            if "\x00" in node:  # keys with NUL are refused by the check of their kind
                return f"{shown} contains a NUL character (\\u0000)"
            texts = [node]
        elif isinstance(node, Mapping):
            texts = [str(k) for k in node]
            stack.extend((v, depth + 1, f"{where}.{k}" if where else str(k))
                         for k, v in node.items())
        elif isinstance(node, list | tuple):
            texts = []
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))
        else:
            continue
        for t in texts:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                return f"{shown} contains an unpaired surrogate character"
    return None


def _parse(data: Any, *, source: str, text: str | None, duplicates: list[str]) -> GearManifest:
    if not isinstance(data, Mapping):
        raise ManifestError(
            f"{source}: a gear manifest must be a JSON object, got {_json_kind(data)}",
            'start the file with { "name": ..., "version": ..., "inputs": {}, "config": {} }',
        )
    problem = _unstorable(data)
    if problem:
        raise ManifestError(f"{source}: {problem}", _UNSTORABLE_HINT)
    try:
        # A JSON round trip gives an independent copy in the author's key order
        # and proves the data is plain JSON (no NaN, tuples become lists).
        raw: dict[str, Any] = json.loads(
            json.dumps(dict(data), ensure_ascii=False, allow_nan=False)
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(
            f"{source}: manifest is not plain JSON data: {exc}",
            "pass the decoded JSON object unchanged",
        ) from None
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sha256 = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    c = _Checker()
    for key in sorted(set(duplicates)):
        c.warn((), f"key {key!r} appears more than once in one object; the last one is used")

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            c.error(
                (key,),
                "unknown top-level key" + did_you_mean(key, TOP_LEVEL_KEYS),
                f"valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}; "
                'put gear-specific data under "custom"',
            )
    for key in SPEC_REQUIRED_KEYS:
        if key not in raw:
            c.warn((key,), "missing (the Flywheel spec requires it)")

    name = _check_name(raw, c)
    version = _check_version(raw, c)
    strings = {key: _optional_string(raw, key, c) for key in _STRING_FIELDS}
    command = _check_command(raw, c)
    environment = _check_environment(raw, c)
    inputs = _check_inputs(raw, c)
    config = _check_config(raw, c)
    custom, category, image, suite, show_job = _check_custom(raw, c)
    capabilities = _check_capabilities(raw, c)
    _check_output_configuration(raw, c)
    bids_view = _check_hpcgear_custom(custom, {i.name for i in inputs}, c)

    if c.problems:
        raise _manifest_error(source, text, c.problems)
    warnings = tuple(_format_item(text, path, msg) for path, msg in c.warnings)
    for warning in warnings:
        logger.debug("manifest %s: %s", source, warning)
    return GearManifest(
        name=name,
        version=version,
        label=strings["label"],
        description=strings["description"],
        author=strings["author"],
        maintainer=strings["maintainer"],
        license=strings["license"],
        source=strings["source"],
        url=strings["url"],
        cite=strings["cite"],
        command=command,
        environment=environment,
        inputs=inputs,
        config=config,
        custom=custom,
        capabilities=capabilities,
        category=category,
        image=image,
        suite=suite,
        show_job=show_job,
        sha256=sha256,
        origin=source,
        warnings=warnings,
        raw=raw,
        bids_view=bids_view,
    )


def _check_name(raw: Mapping[str, Any], c: _Checker) -> str:
    name = raw.get("name")
    hint = "use lowercase letters, digits and '-' only, at most 100 characters, e.g. my-gear"
    if name is None:
        c.error(("name",), "missing; every gear needs a name", hint)
        return ""
    if not isinstance(name, str):
        c.error(("name",), f"must be a string, got {_json_kind(name)}", hint)
        return ""
    if not NAME_RE.fullmatch(name):
        c.error(("name",), f"{_show(name)} must match ^[a-z0-9-]+$", hint)
    elif len(name) > NAME_MAX:
        c.error(("name",), f"is {len(name)} characters long, the limit is {NAME_MAX}", hint)
    return name


def _check_version(raw: Mapping[str, Any], c: _Checker) -> str:
    version = raw.get("version")
    hint = 'give a version string such as "1.2.0"'
    if version is None:
        c.error(("version",), "missing; every gear needs a version", hint)
        return ""
    if not isinstance(version, str):
        c.error(("version",), f"must be a string, got {_json_kind(version)}", hint)
        return ""
    if not version.strip():
        c.error(("version",), "is empty", hint)
    elif _CONTROL_RE.search(version):
        c.error(("version",), f"{_show(version)} contains control characters", hint)
    elif len(version) > _MAX_LENGTHS["version"]:
        c.error(("version",), f"is longer than {_MAX_LENGTHS['version']} characters", hint)
    elif not VERSION_RE.fullmatch(version):
        # The version names the gear in refs (NAME@VERSION), paths and job scripts.
        c.error(
            ("version",),
            f"{_show(version)} may hold only letters, digits and . _ + - "
            "(starting with a letter or digit)",
            hint,
        )
    return version


def _optional_string(raw: Mapping[str, Any], key: str, c: _Checker) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        c.error((key,), f"must be a string, got {_json_kind(value)}")
        return ""
    limit = _MAX_LENGTHS.get(key)
    if limit is not None and len(value) > limit:
        c.warn((key,), f"is {len(value)} characters long; the spec allows {limit}")
    if key in ("source", "url") and value and not urllib.parse.urlparse(value).scheme:
        c.warn((key,), f'{_show(value)} is not a URL (the spec wants a URL or "")')
    return value


def _check_command(raw: Mapping[str, Any], c: _Checker) -> str | None:
    if "command" not in raw:
        return None
    command = raw["command"]
    if not isinstance(command, str):
        c.error(
            ("command",),
            f"must be a string, got {_json_kind(command)}",
            'write the command line as one string, e.g. "python run.py"',
        )
        return None
    if not command.strip():
        c.warn(("command",), "is empty; the image's /flywheel/v0/run is used")
        return None
    if "\x00" in command:
        c.error(("command",), "contains a NUL character", "remove it")
    return command


def _check_environment(raw: Mapping[str, Any], c: _Checker) -> tuple[tuple[str, str], ...]:
    env = raw.get("environment")
    if env is None:
        return ()
    if not isinstance(env, dict):
        c.error(
            ("environment",),
            f"must be an object of NAME: value strings, got {_json_kind(env)}",
            'e.g. "environment": {"FLYWHEEL": "/flywheel/v0"}',
        )
        return ()
    result = []
    for key, value in env.items():
        path = ("environment", key)
        if not ENV_NAME_RE.fullmatch(key):
            c.error(
                path,
                "is not a valid environment variable name",
                "use letters, digits and '_', not starting with a digit",
            )
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            c.error(
                path, f"value must be a string, got {_json_kind(value)}", "quote environment values"
            )
            continue
        if not isinstance(value, str):
            # Seen in flywheel-apps/bids-fmriprep: "PYTHONUNBUFFERED": 1.
            value = json.dumps(value)
            c.warn(path, f"value is a number; used as the string {value!r}")
        if "\x00" in value:
            c.error(path, "value contains a NUL character", "remove it")
            continue
        result.append((key, value))
    return tuple(result)


def _check_inputs(raw: Mapping[str, Any], c: _Checker) -> tuple[ManifestInput, ...]:
    inputs = raw.get("inputs", {})
    if not isinstance(inputs, dict):
        c.error(
            ("inputs",),
            f"must be an object keyed by input name, got {_json_kind(inputs)}",
            'e.g. "inputs": {"dicom": {"base": "file"}}',
        )
        return ()
    result = []
    for name, spec in inputs.items():
        item = _check_input(name, spec, c)
        if item is not None:
            result.append(item)
    return tuple(result)


def _check_input(name: str, spec: Any, c: _Checker) -> ManifestInput | None:
    path = ("inputs", name)
    name_problem = path_component_problem(name)
    if name_problem:
        c.error(
            path,
            f"input name {name_problem}; it becomes the directory /flywheel/v0/input/<name>",
            "use letters, digits, '_' and '-'",
        )
    elif not INPUT_NAME_RECOMMENDED_RE.fullmatch(name):
        c.warn(path, "input names should match ^[A-Za-z0-9_-]+$ (the spec recommends it)")
    if not isinstance(spec, dict):
        c.error(path, f"must be an object, got {_json_kind(spec)}", '"base": "file" at least')
        return None
    base = spec.get("base")
    if base not in INPUT_BASES:
        c.error(
            (*path, "base"),
            "missing" if base is None else f"{_show(base)} is not an input base",
            f"base must be one of {', '.join(INPUT_BASES)}",
        )
        return None
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        c.error((*path, "optional"), f"must be true or false, got {_show(optional)}")
        optional = False
    description = spec.get("description", "")
    if not isinstance(description, str):
        c.warn((*path, "description"), "is not a string; ignored")
        description = ""
    read_only = False
    type_filter: tuple[str, ...] | None = None
    if base == "api-key":
        read_only = spec.get("read-only", False)
        if not isinstance(read_only, bool):
            c.error((*path, "read-only"), f"must be true or false, got {_show(read_only)}")
            read_only = False
        extra = sorted(set(spec) - {"base", "description", "read-only"})
        if extra:
            c.warn(
                path,
                f"api-key inputs take only description and read-only; ignoring {', '.join(extra)}",
            )
    elif base == "context":
        extra = sorted(set(spec) - {"base", "description"})
        if extra:
            c.warn(path, f"context inputs take only description; ignoring {', '.join(extra)}")
    else:
        type_filter = _check_type_filter(spec.get("type"), (*path, "type"), c)
    if base != "file" and optional:
        c.warn((*path, "optional"), f"has no meaning for {base} inputs")
    return ManifestInput(
        name=name,
        base=base,
        optional=optional,
        description=description,
        type_filter=type_filter,
        read_only=read_only,
        raw=copy.deepcopy(spec),
    )


def _check_type_filter(spec: Any, path: JsonPath, c: _Checker) -> tuple[str, ...] | None:
    if spec is None:
        return None
    hint = 'write the accepted file types as "type": {"enum": ["dicom", "nifti"]}'
    if not isinstance(spec, dict):
        c.error(path, f"must be an object, got {_json_kind(spec)}", hint)
        return None
    if "enum" not in spec:
        return None
    enum = spec["enum"]
    if not isinstance(enum, list) or not enum or not all(isinstance(e, str) for e in enum):
        c.error(
            (*path, "enum"), f"must be a non-empty list of file type names, got {_show(enum)}", hint
        )
        return None
    return tuple(enum)


def _check_config(raw: Mapping[str, Any], c: _Checker) -> tuple[ConfigOption, ...]:
    config = raw.get("config", {})
    if not isinstance(config, dict):
        c.error(
            ("config",),
            f"must be an object keyed by option name, got {_json_kind(config)}",
            'e.g. "config": {"speed": {"type": "integer"}}',
        )
        return ()
    result = []
    for name, spec in config.items():
        path = ("config", name)
        if not name.strip() or _CONTROL_RE.search(name) or unsafe_chars(name):
            c.error(path, "option names must be non-empty and free of control characters")
            continue
        if "." in name or name.startswith("$"):
            c.error(path, f"option name {_show(name)} contains '.' or starts with '$'",
                    "Flywheel stores config keys as document keys; rename the option")
            continue
        option = _check_option(name, spec, path, c, top_level=True)
        if option is None:
            continue
        if option.has_default and reserved.is_reserved(name):
            _, problems = reserved.check_reserved({name: option.default})
            for problem in problems:
                c.error(
                    (*path, "default"),
                    f"reserved HPC key default is not a valid resource: {problem}",
                    reserved.RESERVED_HINT,
                )
        result.append(option)
    return tuple(result)


def _check_option(
    name: str, spec: Any, path: JsonPath, c: _Checker, *, top_level: bool
) -> ConfigOption | None:
    if not isinstance(spec, dict):
        c.error(
            path,
            f"must be an object (a JSON-schema snippet), got {_json_kind(spec)}",
            '"type": "string" at least',
        )
        return None
    before = len(c.problems)
    type_ = _check_option_type(spec, path, c)
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        c.error((*path, "optional"), f"must be true or false, got {_show(optional)}")
        optional = False
    if top_level and "default" in spec and "optional" in spec and optional:
        c.error(
            path,
            "has both default and optional: true (the spec forbids it)",
            "drop optional (the default is used) or drop default (the key may be absent)",
        )
    description = spec.get("description", "")
    if not isinstance(description, str):
        c.warn((*path, "description"), "is not a string; ignored")
        description = ""
    option_id = spec.get("id")
    if option_id is not None and not isinstance(option_id, str):
        c.warn((*path, "id"), "is not a string; ignored")
        option_id = None

    minimum, exclusive_minimum = _check_bound(spec, "minimum", "exclusiveMinimum", path, c)
    maximum, exclusive_maximum = _check_bound(spec, "maximum", "exclusiveMaximum", path, c)
    if (
        minimum is not None
        and maximum is not None
        and (minimum > maximum or (minimum == maximum and (exclusive_minimum or exclusive_maximum)))
    ):
        c.error(
            path,
            f"no number satisfies the bounds (minimum {_show(minimum)}, maximum {_show(maximum)})",
            "fix minimum/maximum",
        )
    min_length = _check_count(spec, "minLength", path, c)
    max_length = _check_count(spec, "maxLength", path, c)
    if min_length is not None and max_length is not None and min_length > max_length:
        c.error(path, f"minLength {min_length} is above maxLength {max_length}")
    min_items = _check_count(spec, "minItems", path, c)
    max_items = _check_count(spec, "maxItems", path, c)
    if min_items is not None and max_items is not None and min_items > max_items:
        c.error(path, f"minItems {min_items} is above maxItems {max_items}")
    pattern = _check_pattern(spec, path, c)
    multiple_of = spec.get("multipleOf")
    if multiple_of is not None and not (_is_number(multiple_of) and multiple_of > 0):
        c.error((*path, "multipleOf"), f"must be a number above 0, got {_show(multiple_of)}")
        multiple_of = None
    unique_items = spec.get("uniqueItems", False)
    if not isinstance(unique_items, bool):
        c.error((*path, "uniqueItems"), f"must be true or false, got {_show(unique_items)}")
        unique_items = False
    items = None
    if "items" in spec:
        items_spec = spec["items"]
        if isinstance(items_spec, dict):
            items = _check_option(f"{name}[]", items_spec, (*path, "items"), c, top_level=False)
        else:
            c.error(
                (*path, "items"),
                "must be one schema object for every item",
                'e.g. "items": {"type": "number"}',
            )
        if type_ not in (None, "array"):
            c.warn((*path, "items"), f"applies to arrays only; ignored for a {type_}")
    enum = _check_enum(spec, type_, path, c)
    for loose in ("min", "max"):
        if loose in spec:
            c.warn(
                (*path, loose),
                f"is not a JSON-schema keyword and is not enforced; "
                f"did you mean {'minimum' if loose == 'min' else 'maximum'}?",
            )

    if len(c.problems) > before:
        return None
    option = ConfigOption(
        name=name,
        type=type_,
        description=description,
        default=copy.deepcopy(spec.get("default")),
        has_default="default" in spec,
        optional=optional,
        enum=enum,
        minimum=minimum,
        maximum=maximum,
        exclusive_minimum=exclusive_minimum,
        exclusive_maximum=exclusive_maximum,
        min_length=min_length,
        max_length=max_length,
        pattern=pattern,
        multiple_of=multiple_of,
        items=items,
        min_items=min_items,
        max_items=max_items,
        unique_items=unique_items,
        id=option_id,
        raw=copy.deepcopy(spec),
    )
    if option.has_default:
        default, problems = option.check(option.default)
        for problem in problems:
            c.error(
                (*path, "default"),
                f"default {problem}",
                "make the default satisfy the option's own type and constraints",
            )
        if problems:
            return None
        option = replace(option, default=default)
    return option


def _check_option_type(spec: Mapping[str, Any], path: JsonPath, c: _Checker) -> str | None:
    type_ = spec.get("type")
    if type_ is None:
        c.warn(path, "has no type; any JSON value is accepted")
        return None
    if isinstance(type_, str) and type_ in CONFIG_TYPES:
        return type_
    if isinstance(type_, str) and type_ in CONFIG_TYPE_ALIASES:
        canonical = CONFIG_TYPE_ALIASES[type_]
        c.warn((*path, "type"), f"{type_!r} is not a JSON-schema type; read as {canonical!r}")
        return canonical
    c.error(
        (*path, "type"),
        f"{_show(type_)} is not a supported config type",
        f"type must be one of {', '.join(CONFIG_TYPES)}",
    )
    return None


def _check_bound(
    spec: Mapping[str, Any], key: str, exclusive_key: str, path: JsonPath, c: _Checker
) -> tuple[int | float | None, bool]:
    bound = spec.get(key)
    if bound is not None and not _is_number(bound):
        c.error((*path, key), f"must be a number, got {_show(bound)}")
        bound = None
    exclusive = spec.get(exclusive_key)
    if exclusive is None:
        return bound, False
    if isinstance(exclusive, bool):  # draft 4: a flag on the plain bound
        if exclusive and bound is None:
            c.warn((*path, exclusive_key), f"is true but there is no {key}; ignored")
        return bound, exclusive and bound is not None
    if _is_number(exclusive):  # draft 6+: the exclusive bound itself
        lower = key == "minimum"
        if bound is None or (exclusive >= bound if lower else exclusive <= bound):
            return exclusive, True
        return bound, False
    c.error((*path, exclusive_key), f"must be true/false or a number, got {_show(exclusive)}")
    return bound, False


def _check_count(spec: Mapping[str, Any], key: str, path: JsonPath, c: _Checker) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        c.error((*path, key), f"must be a whole number >= 0, got {_show(value)}")
        return None
    return value


def _check_pattern(spec: Mapping[str, Any], path: JsonPath, c: _Checker) -> str | None:
    pattern = spec.get("pattern")
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        c.error((*path, "pattern"), f"must be a regular expression string, got {_show(pattern)}")
        return None
    problem = regex_problem(pattern)
    if problem:
        c.error(
            (*path, "pattern"),
            f"{_show(pattern)} {problem}",
            "fix the regular expression (JSON strings need \\\\ for \\); user values are "
            "matched against it, so it may not nest repetition like (a+)+",
        )
        return None
    return pattern


def _check_enum(
    spec: Mapping[str, Any], type_: str | None, path: JsonPath, c: _Checker
) -> tuple[Any, ...] | None:
    if "enum" not in spec:
        return None
    enum = spec["enum"]
    if not isinstance(enum, list) or not enum:
        c.error((*path, "enum"), f"must be a non-empty list of allowed values, got {_show(enum)}")
        return None
    if type_ is not None:
        wrong = [e for e in enum if not _check_type(type_, e)[0]]
        if wrong:
            c.warn(
                (*path, "enum"),
                f"values {_show_all(wrong)} are not {type_}s and can never be chosen",
            )
    return tuple(enum)


def _check_custom(
    raw: Mapping[str, Any], c: _Checker
) -> tuple[dict[str, Any], str, str | None, str | None, bool]:
    custom = raw.get("custom", {})
    if not isinstance(custom, dict):
        c.error(("custom",), f"must be an object, got {_json_kind(custom)}")
        return {}, DEFAULT_CATEGORY, None, None, False
    category = DEFAULT_CATEGORY
    image: str | None = None

    builder = custom.get("gear-builder")
    if builder is not None and not isinstance(builder, dict):
        c.error(
            ("custom", "gear-builder"),
            f"must be an object, got {_json_kind(builder)}",
            '"gear-builder": {"category": "analysis", "image": "org/gear:1.0"}',
        )
        builder = None
    if builder is None or "category" not in builder:
        c.warn(
            ("custom",),
            f"no gear-builder.category; treated as {DEFAULT_CATEGORY!r} "
            "(outputs attach to the destination, no analysis container)",
        )
    if builder is not None:
        if "category" in builder:
            value = builder["category"]
            if value in CATEGORIES:
                category = value
            else:
                c.error(
                    ("custom", "gear-builder", "category"),
                    f"{_show(value)} is not a gear category"
                    + (did_you_mean(value, CATEGORIES) if isinstance(value, str) else ""),
                    f"category must be one of {', '.join(CATEGORIES)}",
                )
        if "image" in builder:
            image = _check_image(builder["image"], ("custom", "gear-builder", "image"), c)
    if "docker-image" in custom:
        legacy = _check_image(custom["docker-image"], ("custom", "docker-image"), c)
        if image is None:
            image = legacy
        elif legacy is not None and legacy != image:
            c.warn(
                ("custom", "docker-image"), f"differs from gear-builder.image; {image!r} is used"
            )

    suite: str | None = None
    show_job = False
    flywheel = custom.get("flywheel")
    if flywheel is not None and not isinstance(flywheel, dict):
        c.warn(("custom", "flywheel"), "is not an object; ignored")
        flywheel = None
    if flywheel is not None:
        if isinstance(flywheel.get("suite"), str):
            suite = flywheel["suite"]
        elif "suite" in flywheel:
            c.warn(("custom", "flywheel", "suite"), "is not a string; ignored")
        value = flywheel.get("show-job", False)
        if isinstance(value, bool):
            show_job = value
        else:
            c.warn(("custom", "flywheel", "show-job"), "is not true/false; ignored")
        classification = flywheel.get("classification")
        if classification is not None and not (
            isinstance(classification, dict)
            and all(
                isinstance(v, list) and all(isinstance(s, str) for s in v)
                for v in classification.values()
            )
        ):
            c.warn(
                ("custom", "flywheel", "classification"),
                "should map each facet to a list of strings",
            )
    return copy.deepcopy(custom), category, image, suite, show_job


HPCGEAR_CUSTOM_KEYS = ("bids-view",)
BIDS_VIEW_KEYS = ("dir", "data-types")
# Where Flywheel BIDS-app gears say which datatype folders they need
# (bids-mriqc: "bids-app-data-types", bids-qsiprep: "bids-app-modalities").
BIDS_APP_DATATYPE_KEYS = ("bids-app-data-types", "bids-app-modalities")
_VIEW_DIR_RE = re.compile(r"^(work|input)(/[A-Za-z0-9][A-Za-z0-9._\-]*)+$")


def _check_hpcgear_custom(
    custom: Mapping[str, Any], input_names: set[str], c: _Checker
) -> BidsViewRequest | None:
    """``custom.hpcgear``: hpcgear's own manifest keys (strict: unknown keys are errors).

    ``"bids-view": true`` or ``{"dir": "work/bids", "data-types": ["anat", "func"]}``
    asks for a BIDS tree of the job's destination staged below ``/flywheel/v0``.
    Without ``data-types`` the gear's own ``bids-app-data-types`` /
    ``bids-app-modalities`` list is used, else every datatype.
    """
    ours = custom.get("hpcgear")
    if ours is None:
        return None
    example = '"hpcgear": {"bids-view": {"dir": "work/bids", "data-types": ["anat", "func"]}}'
    if not isinstance(ours, dict):
        c.error(("custom", "hpcgear"), f"must be an object, got {_json_kind(ours)}", example)
        return None
    for key in ours:
        if key not in HPCGEAR_CUSTOM_KEYS:
            c.error(
                ("custom", "hpcgear", key),
                "unknown key" + did_you_mean(key, HPCGEAR_CUSTOM_KEYS),
                f"valid keys: {', '.join(HPCGEAR_CUSTOM_KEYS)}",
            )
    view = ours.get("bids-view")
    path: JsonPath = ("custom", "hpcgear", "bids-view")
    if view is None or view is False:
        return None
    if view is True:
        view = {}
    if not isinstance(view, dict):
        c.error(path, f"must be true, false or an object, got {_json_kind(view)}", example)
        return None
    for key in view:
        if key not in BIDS_VIEW_KEYS:
            c.error(
                (*path, key),
                "unknown key" + did_you_mean(key, BIDS_VIEW_KEYS),
                f"valid keys: {', '.join(BIDS_VIEW_KEYS)}",
            )
    where = view.get("dir", "work/bids")
    if not isinstance(where, str) or not _VIEW_DIR_RE.fullmatch(where):
        c.error(
            (*path, "dir"),
            f"{_show(where)} is not a directory below work/ or input/",
            'e.g. "work/bids" (where Flywheel BIDS apps look) or "input/bids"',
        )
        where = "work/bids"
    elif where.split("/")[0] == "input" and where.split("/")[1] in input_names:
        c.error(
            (*path, "dir"),
            f"{_show(where)} is the directory of the gear's input {where.split('/')[1]!r}",
            "choose another name, e.g. input/bids",
        )
    if "data-types" in view:
        types, tpath = view["data-types"], (*path, "data-types")
    else:
        key = next((k for k in BIDS_APP_DATATYPE_KEYS if k in custom), None)
        types, tpath = (custom[key], ("custom", key)) if key else ([], path)
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        c.error(tpath, f"must be a list of BIDS datatypes, got {_json_kind(types)}",
                f"datatypes: {', '.join(BIDS_DATATYPES)}")
        types = []
    bad = [t for t in types if t not in BIDS_DATATYPES]
    if bad:
        c.error(tpath, f"not BIDS datatypes: {_show_all(bad)}",
                f"datatypes: {', '.join(BIDS_DATATYPES)}")
    return BidsViewRequest(dir=where, data_types=tuple(dict.fromkeys(types)))


def _check_image(value: Any, path: JsonPath, c: _Checker) -> str | None:
    hint = "give a pullable image reference such as flywheel/dcm2niix:1.3.2 (no placeholders)"
    if not isinstance(value, str):
        c.error(path, f"must be a string, got {_json_kind(value)}", hint)
        return None
    if not IMAGE_REF_RE.fullmatch(value) or len(value) > 512:
        c.error(path, f"{_show(value)} is not a valid image reference", hint)
        return None
    return value


def _check_capabilities(raw: Mapping[str, Any], c: _Checker) -> tuple[str, ...]:
    value = raw.get("capabilities", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        c.error(
            ("capabilities",),
            f"must be a list of strings, got {_show(value)}",
            'e.g. "capabilities": ["networking"]',
        )
        return ()
    return tuple(value)


def _check_output_configuration(raw: Mapping[str, Any], c: _Checker) -> None:
    value = raw.get("output_configuration")
    if value is None:
        return
    if not isinstance(value, dict):
        c.error(
            ("output_configuration",),
            f"must be an object, got {_json_kind(value)}",
            '"output_configuration": {"enforce_file_version_match": true}',
        )
        return
    flag = value.get("enforce_file_version_match", False)
    if not isinstance(flag, bool):
        c.error(
            ("output_configuration", "enforce_file_version_match"),
            f"must be true or false, got {_show(flag)}",
        )


# --------------------------------------------------------------------------- shared helpers


def path_component_problem(name: Any) -> str | None:
    """Why ``name`` cannot be one directory or file name, or None if it can.

    Rejects non-strings, "", ".", "..", "/" anywhere, NUL and other control
    characters, and names over 255 bytes (NAME_MAX).
    """
    if not isinstance(name, str):
        return f"must be a string, got {_json_kind(name)}"
    if name in ("", ".", ".."):
        return f"{name!r} is not a usable name"
    if "/" in name:
        return f"{name!r} contains '/'"
    if _CONTROL_RE.search(name):
        return f"{name!r} contains a control character"
    if len(name.encode("utf-8")) > 255:
        return "is longer than 255 bytes"
    return None


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
}


def _check_type(type_: str, value: Any) -> tuple[bool, Any]:
    if type_ == "string":
        return isinstance(value, str), value
    if type_ == "boolean":
        return isinstance(value, bool), value
    if type_ == "integer":
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return True, int(value)
        return False, value
    if type_ == "number":
        return _is_number(value), value
    if type_ == "array":
        if isinstance(value, list | tuple):
            return True, list(value)
        return False, value
    raise ValueError(f"unknown config type {type_!r}")  # pragma: no cover - guarded at parse


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    )


def _is_multiple(value: int | float, step: int | float) -> bool:
    if isinstance(value, int) and isinstance(step, int):
        return value % step == 0
    quotient = value / step
    return math.isclose(quotient, round(quotient), rel_tol=1e-9, abs_tol=1e-9)


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: true is not 1, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return _truncate(text, 60)


def _show_all(values: Iterable[Any]) -> str:
    return ", ".join(_show(v) for v in values)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""``; shared with config checks."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_path(path: JsonPath) -> str:
    """``config.speed.minimum``; keys that are not simple words are quoted."""
    out = ""
    for key in path:
        if re.fullmatch(r"[A-Za-z0-9_\-]+", key):
            out += f".{key}" if out else key
        else:
            out += f"[{json.dumps(key, ensure_ascii=False)}]"
    return out or "(top level)"


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, max(pos, 0)) + 1


def _locate(text: str | None, path: JsonPath) -> int | None:
    """Best-effort line of ``path`` in ``text``: each key searched after the previous one."""
    if text is None or not path:
        return None
    pos = 0
    found: int | None = None
    for key in path:
        quoted = re.escape(json.dumps(key, ensure_ascii=False))
        match = re.compile(quoted + r"\s*:").search(text, pos)
        if match is None:
            break
        found, pos = match.start(), match.end()
    return None if found is None else _line_of(text, found)


def _format_item(text: str | None, path: JsonPath, message: str) -> str:
    if not path:
        return message
    line = _locate(text, path)
    where = format_path(path)
    if line is not None:
        where += f" (line {line})"
    return f"{where}: {message}"


def _manifest_error(source: str, text: str | None, problems: list[_Problem]) -> ManifestError:
    items = [_format_item(text, p.path, p.message) for p in problems]
    if len(items) == 1:
        message = f"{source}: invalid gear manifest: {items[0]}"
    else:
        listed = "; ".join(f"{i}) {item}" for i, item in enumerate(items, 1))
        message = f"{source}: invalid gear manifest, {len(items)} problems: {listed}"
    hints: list[str] = []
    for problem in problems:
        if problem.hint and problem.hint not in hints:
            hints.append(problem.hint)
    hint = "; ".join(hints) or "fix the listed keys (see the Flywheel gear spec)"
    return ManifestError(message, hint)
