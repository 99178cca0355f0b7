"""Resolve and validate a job's gear config against the manifest.

``resolve_config(manifest, rule_values, user_values)`` starts from the
manifest defaults, lays each mapping on top in order, and validates the result
against every option's type and constraints. All problems are collected and
raised together in one :class:`~hpcgear.errors.GearConfigError`, so a user
fixes a command line once, not once per key.

Reserved HPC keys (:mod:`hpcgear.gears.reserved`) are accepted whether or not
the manifest declares them and are validated as resources here, so a bad
``slurm-ram`` is reported with the other config problems and never reaches a
script. Use :func:`hpcgear.gears.reserved.split_reserved` afterwards to separate
them from what the gear sees.

``None`` as a value in a layer undoes earlier layers for that key: it goes
back to the manifest default, or is left out when there is none (a required
key left out this way is reported as missing).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from hpcgear.errors import GearConfigError
from hpcgear.gears import reserved
from hpcgear.gears.manifest import ConfigOption, GearManifest, did_you_mean

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
TRUE_WORDS = frozenset({"true", "yes", "1"})
FALSE_WORDS = frozenset({"false", "no", "0"})


def resolve_config(
    manifest: GearManifest, *layers: Mapping[str, Any], coerce_strings: bool = False
) -> dict[str, Any]:
    """Return the validated config: manifest defaults, then each layer on top.

    Parameters
    ----------
    manifest
        The gear's parsed manifest.
    layers
        Mappings applied in order, later ones winning (typically rule values,
        then user values).
    coerce_strings
        Convert ``str`` values to each option's declared type first
        (``"true"`` -> True, ``"3"`` -> 3, ``"1.5"`` -> 1.5, ``'[1, 2]'`` -> [1, 2]);
        the CLI passes KEY=VALUE strings.

    Returns
    -------
    dict
        Declared options in manifest order, then reserved keys; values
        normalised (integral floats of integer options become ints).

    Raises
    ------
    GearConfigError
        Listing every bad value, unknown key and missing required key at once.
    """
    options = {o.name: o for o in manifest.config}
    merged: dict[str, Any] = manifest.defaults()
    problems: list[str] = []
    unknown: list[str] = []
    for layer in layers:
        for key, value in layer.items():
            option = options.get(key)
            if option is None and not reserved.is_reserved(key):
                if key not in unknown:
                    unknown.append(key)
                continue
            if value is None:
                # Back to the manifest default, or absent when there is none.
                if option is not None and option.has_default:
                    merged[key] = copy.deepcopy(option.default)
                else:
                    merged.pop(key, None)
                continue
            if coerce_strings and isinstance(value, str):
                try:
                    value = coerce_string(option, value, key=key)
                except GearConfigError as exc:
                    problems.append(exc.message)
                    continue
            merged[key] = copy.deepcopy(value)

    for key in unknown:
        problems.append(f"unknown config key {key!r}{did_you_mean(key, options)}")

    result: dict[str, Any] = {}
    missing = 0
    for option in manifest.config:
        if option.name not in merged:
            if option.required:
                missing += 1
                problems.append(
                    f"missing required config key {option.name!r} ({option.describe()})"
                )
            continue
        value, option_problems = option.check(merged[option.name])
        problems.extend(f"{option.name!r} {p}" for p in option_problems)
        result[option.name] = value
    for key in reserved.RESERVED_KEYS:
        if key in merged and key not in options:
            result[key] = merged[key]

    _, reserved_problems = reserved.check_reserved(result)
    problems.extend(reserved_problems)

    if problems:
        hints = []
        if unknown:
            hints.append(
                f"valid config keys: {', '.join(manifest.config_names) or '(none)'}; "
                f"reserved HPC keys: {', '.join(reserved.RESERVED_KEYS)}"
            )
        if reserved_problems:
            hints.append(reserved.RESERVED_HINT)
        if missing:
            hints.append("give every required key a value (the manifest has no default)")
        if len(problems) > len(unknown) + len(reserved_problems) + missing:
            hints.append("give each listed key a value it allows (see 'must ...')")
        raise GearConfigError(_message(manifest, problems), "; ".join(hints))
    return result


def coerce_string(option: ConfigOption | None, text: str, *, key: str = "") -> Any:
    """Convert a command-line string to ``option``'s declared type.

    Strings for ``string`` options (and for options without a type) are kept
    as given. Booleans accept true/false, yes/no, 1/0 (any case); integers
    accept ``-3``/``+3``; numbers accept ``1.5``/``1e-3`` and return an ``int``
    when written without a fraction; arrays must be JSON (``'["a", "b"]'``)
    and their items are coerced when they are strings.

    Raises
    ------
    GearConfigError
        Naming ``key`` and the expected spelling.
    """
    if option is None:
        return reserved.coerce_reserved_string(key, text) if reserved.is_reserved(key) else text
    type_ = option.type
    word = text.strip()
    if type_ == "boolean":
        if word.lower() in TRUE_WORDS:
            return True
        if word.lower() in FALSE_WORDS:
            return False
        raise _bad_string(key, "true or false", text)
    if type_ == "integer":
        if _INT_RE.fullmatch(word):
            return int(word)
        raise _bad_string(key, "a whole number such as 3", text)
    if type_ == "number":
        if _INT_RE.fullmatch(word):
            return int(word)
        if _NUMBER_RE.fullmatch(word):
            number = float(word)
            if math.isfinite(number):
                return number
        raise _bad_string(key, "a number such as 1.5", text)
    if type_ == "array":
        try:
            value = json.loads(word)
        except (json.JSONDecodeError, RecursionError):
            value = None
        if not isinstance(value, list):
            raise _bad_string(key, "a JSON list such as '[\"a\", \"b\"]' or '[1, 2]'", text)
        if option.items is not None:
            value = [
                coerce_string(option.items, v, key=f"{key}[{i}]") if isinstance(v, str) else v
                for i, v in enumerate(value)
            ]
        return value
    return text


def _message(manifest: GearManifest, problems: list[str]) -> str:
    who = f"gear {manifest.name} {manifest.version}"
    if len(problems) == 1:
        return f"config for {who}: {problems[0]}"
    listed = "; ".join(f"{i}) {p}" for i, p in enumerate(problems, 1))
    return f"config for {who} has {len(problems)} problems: {listed}"


def _bad_string(key: str, expected: str, text: str) -> GearConfigError:
    return GearConfigError(
        f"{key or 'value'!r} must be {expected}, got {text!r}",
        f"write {key or 'the value'}={expected.split(' such as ')[-1]}",
    )
