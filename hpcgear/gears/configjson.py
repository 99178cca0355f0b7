"""Build the ``/flywheel/v0/config.json`` a gear reads, in Flywheel's shape.

The document has ``config`` (the resolved gear config), ``inputs`` keyed by
manifest input name, and ``destination`` (where outputs go)::

    {
      "config": {"speed": 2},
      "inputs": {
        "dicom": {
          "base": "file",
          "hierarchy": {"type": "acquisition", "id": "..."},
          "location": {"path": "/flywheel/v0/input/dicom/scan.dcm", "name": "scan.dcm"},
          "object": {"type": "dicom", "modality": "MR", "classification": {...},
                     "tags": [], "info": {}, "size": 2913379, "version": 1,
                     "file_id": "...", "mimetype": "application/dicom"}
        },
        "license": {"base": "context", "found": true, "value": "ABC"},
        "key": {"base": "api-key", "key": "..."}
      },
      "destination": {"type": "acquisition", "id": "..."}
    }

plus ``"job": {"id": ...}`` when a ``job_id`` is given (Flywheel adds it for
gears whose manifest sets ``custom.flywheel.show-job``).

File and input names become path components under ``/flywheel/v0/input``, so
each must be one safe name; anything else is an
:class:`~hpcgear.errors.InvalidInputError` before a directory is made.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from posixpath import join as posix_join
from typing import Any

from hpcgear.errors import InvalidInputError
from hpcgear.gears.manifest import GearManifest, path_component_problem
from hpcgear.spec import InputSpec
from hpcgear.text import dump_sections_json

GEAR_ROOT = "/flywheel/v0"
INPUT_ROOT = f"{GEAR_ROOT}/input"
DESTINATION_TYPES = ("group", "project", "subject", "session", "acquisition", "analysis")


def check_path_component(value: Any, *, what: str) -> str:
    """Return ``value`` if it is one safe file or directory name.

    Raises
    ------
    InvalidInputError
        For "", ".", "..", anything containing "/" or NUL (or another control
        character), non-strings, and names over 255 bytes.
    """
    problem = path_component_problem(value)
    if problem is not None:
        raise InvalidInputError(
            f"{what} {problem}",
            "a file or input name must be one path component: no '/', not '.' or '..'",
        )
    return str(value)


def input_container_path(input_name: str, file_name: str) -> str:
    """``/flywheel/v0/input/<input_name>/<file_name>``, both names checked."""
    check_path_component(input_name, what="input name")
    check_path_component(file_name, what=f"file name of input {input_name!r}")
    return posix_join(INPUT_ROOT, input_name, file_name)


def build_config_json(
    config: Mapping[str, Any],
    inputs: Sequence[InputSpec],
    destination_type: str,
    destination_id: str,
    *,
    manifest: GearManifest | None = None,
    api_key: str | None = None,
    job_id: str | None = None,
    check_json: bool = True,
    share: bool = False,
) -> dict[str, Any]:
    """Return the ``config.json`` document for one job.

    Parameters
    ----------
    config
        The gear config as the gear should see it (after
        :func:`hpcgear.gears.reserved.split_reserved`).
    inputs
        One :class:`InputSpec` per provided input. File inputs need
        ``file_name``; context inputs carry ``value`` (None = not found);
        api-key inputs carry the key in ``value`` or take ``api_key``.
    destination_type, destination_id
        The container outputs go to.
    manifest
        When given, inputs are checked against it: undeclared names, a wrong
        base and missing required file inputs are errors; declared context
        inputs not provided appear with ``found: false``; declared api-key
        inputs not provided are filled from ``api_key``.
    api_key
        Key for api-key inputs that carry none.
    job_id
        Adds ``"job": {"id": job_id}``.
    check_json
        Whether to check here that the document is JSON data (no NaN, no objects).
        A caller that serialises the document itself and reports such values as
        clearly (an array's stage-in, :func:`hpcgear.staging.stagein.stage_array`)
        passes False rather than have every document encoded twice.
    share
        Whether the document may hold ``config``'s values and the inputs' values
        themselves rather than deep copies: for a caller that only serialises the
        document and never changes it (an array's stage-in, whose thousand
        documents share one config).

    Raises
    ------
    InvalidInputError
        Listing every problem at once (unsafe names, duplicates, missing
        files or keys, undeclared inputs).
    """
    problems: list[str] = []
    if destination_type not in DESTINATION_TYPES:
        problems.append(
            f"destination type {destination_type!r} is not one of {', '.join(DESTINATION_TYPES)}"
        )
    if not isinstance(destination_id, str) or not destination_id:
        problems.append("destination id is empty")

    declared = {i.name: i for i in manifest.inputs} if manifest is not None else None
    gear = f"gear {manifest.name}" if manifest is not None else "the gear"
    documents: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for spec in inputs:
        name_problem = path_component_problem(spec.name)
        if name_problem is not None:
            problems.append(f"input name {name_problem}")
            continue
        if spec.name in seen:
            problems.append(f"input {spec.name!r} is given twice")
            continue
        seen.add(spec.name)
        if declared is not None:
            if spec.name not in declared:
                problems.append(
                    f"input {spec.name!r} is not declared by {gear} "
                    f"(inputs: {', '.join(declared) or 'none'})"
                )
                continue
            if declared[spec.name].base != spec.base:
                problems.append(
                    f"input {spec.name!r} is a {declared[spec.name].base} input, "
                    f"got a {spec.base} input"
                )
                continue
        entry = _input_document(spec, api_key, problems, share)
        if entry is not None:
            documents[spec.name] = entry

    if declared is not None:
        for name, item in declared.items():
            if name in seen:
                continue
            if item.base == "context":
                documents[name] = {"base": "context", "found": False, "value": None}
            elif item.base == "api-key":
                if api_key:
                    documents[name] = {"base": "api-key", "key": api_key}
                else:
                    problems.append(f"api-key input {name!r} needs a key (pass api_key)")
            elif item.required:
                problems.append(f"required file input {name!r} is missing")

    if problems:
        listed = (
            problems[0]
            if len(problems) == 1
            else "; ".join(f"{i}) {p}" for i, p in enumerate(problems, 1))
        )
        raise InvalidInputError(
            f"cannot build config.json: {listed}",
            "give each required input one file with a plain file name",
        )

    document: dict[str, Any] = {
        "config": dict(config) if share else copy.deepcopy(dict(config)),
        "inputs": documents,
        "destination": {"type": destination_type, "id": destination_id},
    }
    if job_id is not None:
        document["job"] = {"id": job_id}
    if not check_json:
        return document
    try:
        json.dumps(document, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"config.json would not be valid JSON: {exc}",
            "config values and file metadata must be JSON data (no NaN, no objects)",
        ) from None
    return document


def dump_config_json(document: Mapping[str, Any]) -> str:
    """Serialise deterministically (key order kept, UTF-8 text, final newline): each
    section and each of its entries on a line of its own (:func:`dump_sections_json`)."""
    return dump_sections_json(document)


def _input_document(
    spec: InputSpec, api_key: str | None, problems: list[str], share: bool = False
) -> dict[str, Any] | None:
    if spec.base == "file":
        return _file_document(spec, problems, share)
    if spec.base == "context":
        found = spec.value is not None
        value = spec.value if share else copy.deepcopy(spec.value)
        return {"base": "context", "found": found, "value": value}
    if spec.base == "api-key":
        key = spec.value if isinstance(spec.value, str) and spec.value else api_key
        if not key:
            problems.append(f"api-key input {spec.name!r} needs a key (pass api_key)")
            return None
        return {"base": "api-key", "key": key}
    problems.append(
        f"input {spec.name!r} has unknown base {spec.base!r} (file, context or api-key)"
    )
    return None


def _file_document(
    spec: InputSpec, problems: list[str], share: bool = False
) -> dict[str, Any] | None:
    if spec.file_name is None:
        problems.append(f"file input {spec.name!r} has no file name")
        return None
    name_problem = path_component_problem(spec.file_name)
    if name_problem is not None:
        problems.append(f"file name of input {spec.name!r} {name_problem}")
        return None
    source: dict[str, Any] = dict(spec.object) if share else copy.deepcopy(dict(spec.object))
    obj = dict(source)
    obj.update(
        {
            "type": source.get("type"),
            "modality": source.get("modality"),
            "classification": source.get("classification") or {},
            "tags": list(source.get("tags") or []),
            "info": source.get("info") or {},
            "size": spec.size if spec.size is not None else source.get("size"),
            "version": spec.version if spec.version is not None else source.get("version"),
            "file_id": spec.file_id if spec.file_id is not None else source.get("file_id"),
        }
    )
    return {
        "base": "file",
        "hierarchy": {"type": spec.container_type, "id": spec.container_id},
        "location": {
            "path": posix_join(INPUT_ROOT, spec.name, spec.file_name),
            "name": spec.file_name,
        },
        "object": obj,
    }
