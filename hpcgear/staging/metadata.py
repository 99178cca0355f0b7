"""A gear's ``output/.metadata.json``: validated into a :class:`MetadataPlan`.

Flywheel's format (gear spec, "Output metadata"; engine metadata schema): one
object per container type, each with optional ``info``, ``tags`` and ``files``::

    {
      "acquisition": {
        "info": {"qc": {"passed": true}},
        "tags": ["converted"],
        "files": [
          {"name": "T1w.nii.gz", "type": "nifti", "modality": "MR",
           "classification": {"Intent": ["Structural"], "Measurement": ["T1"],
                              "Features": ["3D"]},
           "info": {"RepetitionTime": 2.3}, "tags": ["bids"]}
        ]
      },
      "session": {"info": {...}}
    }

Container keys are ``project``, ``subject``, ``session``, ``acquisition`` and
``analysis``: the destination container, its parents, and (analysis gears)
the new analysis. ``files`` entries name files *on that container*: outputs of
this job, or files already there (a classifier such as dicom-header sets the
classification of its own input file this way). Which container each key
means is resolved by the publisher, in the publishing transaction.

What is checked, and why:

* ``classification`` has only the keys ``Intent``, ``Measurement`` and
  ``Features``, each a list of strings; Intent and Measurement values must be
  in Flywheel's MR vocabulary (:data:`INTENTS`, :data:`MEASUREMENTS`; the
  table is the one hpcgear's own classifier uses), Features are free words.
* ``info`` keys, at any depth, are non-empty strings without ``.`` or ``$``
  (Flywheel stores info in MongoDB, which forbids them; keeping the rule keeps
  metadata portable), and no string holds a NUL (PostgreSQL JSONB cannot).
* sizes are bounded: the file (16 MiB), nesting depth, key length, number of
  files and tags, lengths of ``type``/``modality``.
* tags follow hierarchy tag rules (1-64 characters, no commas or control
  characters).
* unknown keys are errors naming the valid ones; a few Flywheel container
  fields hpcgear does not apply (``label``, ``timestamp``, ``uid``, ...) and
  legacy file fields (``metadata``, ``measurements``, ``instrument``,
  ``mimetype``) are ignored with a warning in the plan, so published gears run
  unchanged.

An invalid document raises :class:`InvalidMetadataError` (failure kind
``invalid_metadata``) naming every problem; then *nothing* of the job is
published. A JSON ``null`` for a field means "not given".
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcgear.errors import InvalidInputError, StagingError
from hpcgear.hierarchy.paths import LEVELS, check_file_name, check_tag
from hpcgear.ingest.classifier import EXTRA_TERMS, INTENTS, MEASUREMENTS
from hpcgear.text import unsafe_chars


class InvalidMetadataError(StagingError):
    """A gear's ``.metadata.json`` is not valid; nothing of the job is published."""

    default_hint = "fix the gear's .metadata.json (see hpcgear.staging.metadata for the format)"


MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_KEY_LENGTH = 256
MAX_FILES = 10_000
MAX_TAGS = 100
MAX_CLASSIFICATION_VALUES = 50
MAX_WORD = 64  # type, modality, classification words (the DB columns are 64 wide)
MAX_PROBLEMS_SHOWN = 5

CONTAINER_TYPES: tuple[str, ...] = ("project", "subject", "session", "acquisition", "analysis")
CONTAINER_FIELDS: tuple[str, ...] = ("info", "tags", "files")
#: Flywheel container fields hpcgear does not apply from gears (warned, not failed).
IGNORED_CONTAINER_FIELDS = frozenset({"label", "timestamp", "timezone", "uid", "operator",
                                      "public", "subject", "measurement", "instrument",
                                      "metadata", "age", "weight"})
FILE_FIELDS: tuple[str, ...] = ("name", "type", "modality", "classification", "info", "tags")
#: Legacy (scitran) and server-owned file fields: warned, not failed.
IGNORED_FILE_FIELDS = frozenset({"metadata", "measurements", "instrument", "mimetype", "size",
                                 "hash", "created", "modified", "origin", "zip_member_count"})
CLASSIFICATION_KEYS: tuple[str, ...] = ("Intent", "Measurement", "Features")
#: Known values of the classification keys that are checked (Features is free).
KNOWN_CLASSIFICATION: Mapping[str, frozenset[str]] = {
    "Intent": frozenset(INTENTS),
    "Measurement": frozenset(MEASUREMENTS) | frozenset(EXTRA_TERMS),
}


@dataclass(frozen=True, slots=True)
class FileUpdate:
    """Metadata for one file on a container; ``None`` fields are not changed."""

    name: str
    type: str | None = None
    modality: str | None = None
    classification: Mapping[str, tuple[str, ...]] | None = None  # merged per key
    info: Mapping[str, Any] | None = None  # merged at the top level
    tags: tuple[str, ...] = ()  # added to the file's tags

    def as_metadata(self) -> dict[str, Any]:
        """The fields that were given, in the shape ``hierarchy.service`` takes."""
        out: dict[str, Any] = {}
        if self.type is not None:
            out["type"] = self.type
        if self.modality is not None:
            out["modality"] = self.modality
        if self.classification is not None:
            out["classification"] = {k: list(v) for k, v in self.classification.items()}
        if self.info is not None:
            out["info"] = json.loads(json.dumps(self.info))
        if self.tags:
            out["tags"] = list(self.tags)
        return out


@dataclass(frozen=True, slots=True)
class ContainerUpdate:
    """Metadata for one container key of ``.metadata.json``."""

    container_type: str
    info: Mapping[str, Any] | None = None
    tags: tuple[str, ...] = ()
    files: tuple[FileUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class MetadataPlan:
    """A validated ``.metadata.json``, ready for the publisher to apply."""

    updates: tuple[ContainerUpdate, ...]
    sha256: str  # of the document's bytes, for provenance
    warnings: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not any(u.info or u.tags or u.files for u in self.updates)

    def update_for(self, container_type: str) -> ContainerUpdate | None:
        return next((u for u in self.updates if u.container_type == container_type), None)


# ---------------------------------------------------------------------------------


def allowed_container_types(destination_type: str, *, analysis: bool) -> tuple[str, ...]:
    """Container keys a job with this destination may use.

    The destination and its parents (project and below; a group is not a
    gear's business) plus ``analysis`` for analysis gears or an analysis
    destination (whose parent's level is only known to the publisher).
    """
    if destination_type == "analysis":
        return CONTAINER_TYPES
    if destination_type not in LEVELS[1:]:
        return ("analysis",) if analysis else ()
    chain = LEVELS[1 : LEVELS.index(destination_type) + 1]
    return (*chain, "analysis") if analysis else tuple(chain)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def bad(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def info(self, value: Any, where: str) -> Mapping[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.bad(where, f"must be an object, got {_kind(value)}")
            return None
        self._json_value(value, where, 0)
        return value

    def _json_value(self, value: Any, where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.bad(where, f"nested deeper than {MAX_DEPTH} levels")
            return
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or not key:
                    self.bad(where, "has an empty key")
                    continue
                bad_chars = unsafe_chars(key)
                label = _printable(key)
                shown = f"{where}.{label}" if len(label) <= 60 else f"{where}.{label[:57]}..."
                if bad_chars:
                    self.bad(shown, f"key contains control, format or broken characters "
                                    f"({', '.join(bad_chars)})")
                    continue
                if "." in key or "$" in key:
                    self.bad(shown, f"key {key[:60]!r} contains '.' or '$' "
                                    "(not allowed in info keys)")
                if len(key) > MAX_KEY_LENGTH:
                    self.bad(shown, f"key is longer than {MAX_KEY_LENGTH} characters")
                if "\0" in key:
                    self.bad(shown, "key contains a NUL character")
                self._json_value(item, shown, depth + 1)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._json_value(item, f"{where}[{i}]", depth + 1)
        elif isinstance(value, str):
            if "\0" in value:
                self.bad(where, "string contains a NUL character")
            elif any("\ud800" <= ch <= "\udfff" for ch in value):
                self.bad(where, "string contains an unpaired surrogate character")
        elif isinstance(value, float) and not math.isfinite(value):
            self.bad(where, "is not a finite number")

    def tags(self, value: Any, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.bad(where, f"must be a list of strings, got {_kind(value)}")
            return ()
        if len(value) > MAX_TAGS:
            self.bad(where, f"has {len(value)} tags (at most {MAX_TAGS})")
            return ()
        out: list[str] = []
        for i, tag in enumerate(value):
            if not isinstance(tag, str):
                self.bad(f"{where}[{i}]", f"must be a string, got {_kind(tag)}")
                continue
            try:
                check_tag(tag)
            except InvalidInputError as exc:
                self.bad(f"{where}[{i}]", exc.message)
                continue
            if tag not in out:
                out.append(tag)
        return tuple(out)

    def word(self, value: Any, where: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value or len(value) > MAX_WORD or \
                any(not ch.isprintable() for ch in value):
            self.bad(where, f"must be a printable string of 1-{MAX_WORD} characters, "
                            f"got {_show(value)}")
            return None
        return value

    def classification(self, value: Any, where: str) -> Mapping[str, tuple[str, ...]] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.bad(where, f"must be an object, got {_kind(value)}")
            return None
        out: dict[str, tuple[str, ...]] = {}
        for key, items in value.items():
            here = f"{where}.{key}"
            if key not in CLASSIFICATION_KEYS:
                self.bad(here, f"unknown classification key {key!r}; valid keys: "
                               f"{', '.join(CLASSIFICATION_KEYS)}")
                continue
            if items is None:
                continue
            if not isinstance(items, list) or len(items) > MAX_CLASSIFICATION_VALUES:
                self.bad(here, f"must be a list of at most {MAX_CLASSIFICATION_VALUES} strings, "
                               f"got {_kind(items)}")
                continue
            words: list[str] = []
            known = KNOWN_CLASSIFICATION.get(key)
            for i, item in enumerate(items):
                w = self.word(item, f"{here}[{i}]")
                if w is None:
                    continue
                if known is not None and w not in known:
                    self.bad(f"{here}[{i}]", f"{w!r} is not a known {key}; known: "
                                             f"{', '.join(sorted(known))}")
                    continue
                if w not in words:
                    words.append(w)
            out[key] = tuple(words)
        return out


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                        type(value).__name__)


def _printable(text: str) -> str:
    """``text`` with control, format and surrogate characters escaped (for messages)."""
    return "".join(ch if not unsafe_chars(ch) else repr(ch)[1:-1] if ch.isascii()
                   else f"\\u{ord(ch):04x}" for ch in text)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_metadata(
    text: str,
    *,
    destination_type: str,
    analysis: bool,
    output_names: Collection[str] = (),
) -> MetadataPlan:
    """Validate ``.metadata.json`` text into a :class:`MetadataPlan`.

    Parameters
    ----------
    destination_type
        The job's destination container type.
    analysis
        True for analysis gears (outputs go to a new ``analysis`` container).
    output_names
        Names the job publishes; files listed under ``analysis`` must be among them.

    Raises
    ------
    InvalidMetadataError
        Naming every problem (up to five shown) with its place in the document.
    """
    raw = text.encode("utf-8")
    if len(raw) > MAX_BYTES:
        raise InvalidMetadataError(f".metadata.json is {len(raw)} bytes (at most {MAX_BYTES})",
                                   "keep large results in output files, not in metadata")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidMetadataError(f".metadata.json is not valid JSON: {exc}",
                                   "the gear must write a JSON object") from None
    if not isinstance(doc, dict):
        raise InvalidMetadataError(f".metadata.json must be a JSON object, got {_kind(doc)}",
                                   'write e.g. {"acquisition": {"files": [...]}}')
    allowed = allowed_container_types(destination_type, analysis=analysis)
    check = _Checker()
    updates: list[ContainerUpdate] = []
    outputs = set(output_names)
    for ctype, body in doc.items():
        where = ctype
        if ctype not in CONTAINER_TYPES:
            check.bad(where, f"unknown container type {ctype!r}; valid: "
                             f"{', '.join(CONTAINER_TYPES)}")
            continue
        if ctype not in allowed:
            check.bad(where, f"this job cannot set metadata on a {ctype} (destination "
                             f"{destination_type}); valid here: {', '.join(allowed) or 'none'}")
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            check.bad(where, f"must be an object, got {_kind(body)}")
            continue
        for key in body:
            if key in IGNORED_CONTAINER_FIELDS:
                check.warnings.append(f"{where}.{key} is not applied by hpcgear (ignored)")
            elif key not in CONTAINER_FIELDS:
                check.bad(f"{where}.{key}", f"unknown key {key!r}; valid keys: "
                                            f"{', '.join(CONTAINER_FIELDS)}")
        info = check.info(body.get("info"), f"{where}.info")
        tags = check.tags(body.get("tags"), f"{where}.tags")
        files = _files(check, body.get("files"), f"{where}.files",
                       outputs if ctype == "analysis" and analysis else None)
        updates.append(ContainerUpdate(ctype, info, tags, files))
    if check.problems:
        n = len(check.problems)
        shown = check.problems[:MAX_PROBLEMS_SHOWN]
        listed = shown[0] if n == 1 else "; ".join(f"{i}) {p}" for i, p in enumerate(shown, 1))
        more = f" (and {n - len(shown)} more)" if n > len(shown) else ""
        raise InvalidMetadataError(f".metadata.json is invalid: {listed}{more}")
    return MetadataPlan(tuple(updates), "sha256:" + hashlib.sha256(raw).hexdigest(),
                        tuple(check.warnings))


def _files(check: _Checker, value: Any, where: str,
           must_be_outputs: set[str] | None) -> tuple[FileUpdate, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        check.bad(where, f"must be a list, got {_kind(value)}")
        return ()
    if len(value) > MAX_FILES:
        check.bad(where, f"lists {len(value)} files (at most {MAX_FILES})")
        return ()
    out: list[FileUpdate] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(entry, dict):
            check.bad(here, f"must be an object, got {_kind(entry)}")
            continue
        name = entry.get("name")
        if not isinstance(name, str):
            check.bad(f"{here}.name", "is missing or not a string")
            continue
        try:
            check_file_name(name)
        except InvalidInputError as exc:
            check.bad(f"{here}.name", exc.message)
            continue
        here = f"{where}[{name!r}]"
        if name in seen:
            check.bad(here, "is listed twice")
            continue
        seen.add(name)
        if must_be_outputs is not None and name not in must_be_outputs:
            check.bad(here, "is not an output of this job")
            continue
        for key in entry:
            if key in IGNORED_FILE_FIELDS:
                check.warnings.append(f"{here}.{key} is not applied by hpcgear (ignored)")
            elif key not in FILE_FIELDS:
                check.bad(f"{here}.{key}", f"unknown key {key!r}; valid keys: "
                                           f"{', '.join(FILE_FIELDS)}")
        out.append(FileUpdate(
            name=name,
            type=check.word(entry.get("type"), f"{here}.type"),
            modality=check.word(entry.get("modality"), f"{here}.modality"),
            classification=check.classification(entry.get("classification"),
                                                f"{here}.classification"),
            info=check.info(entry.get("info"), f"{here}.info"),
            tags=check.tags(entry.get("tags"), f"{here}.tags"),
        ))
    return tuple(out)
