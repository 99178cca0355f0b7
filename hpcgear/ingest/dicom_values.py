"""DICOM element values as JSON-safe data, straight from the raw bytes.

A header scan reads a few dozen elements of thousands of files. pydicom keeps
them raw until asked and then converts each through its dataset lookup, VR
hooks and value classes (``DSfloat``, ``IS``, ``MultiValue``...), which costs
more than reading the file. :func:`raw_json_value` decodes the common, plain
cases itself and gives the same result as
``hpcgear.ingest.dicom.json_value(ds.get(keyword))``; anything it does not
recognise (a value pydicom would warn about, a character set escape, an
ambiguous or unknown VR, a deferred value) it declines with :data:`DECLINED`,
and the caller asks pydicom. ``tests/unit/test_dicom_values.py`` checks the
equivalence on every DICOM file shipped with pydicom's test data.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Final

#: Returned when a value must be converted by pydicom instead.
DECLINED: Final = object()

#: pydicom's string VRs (decoded as ISO 8859-1; split on backslash).
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
#: Text VRs decoded with the SpecificCharacterSet, split on backslash.
_TEXT_VRS = frozenset({"SH", "LO", "UC"})
#: Text VRs decoded with the SpecificCharacterSet, never split.
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_KNOWN_VRS = _STRING_VRS | _TEXT_VRS | _SINGLE_TEXT_VRS | {"DS", "IS", "PN", *_NUMBER_FORMATS}

_DS = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_IS = re.compile(r"[+-]?\d+\Z")


def _clean(text: str) -> str | None:
    # json_value() of a str: NULs removed, whitespace stripped, empty is None
    text = text.replace("\x00", "").strip()
    return text or None


def _split_text(text: str) -> Any:
    items = text.rstrip(" \x00").split("\\")
    if len(items) == 1:
        return _clean(items[0])
    return [v for v in (_clean(i) for i in items) if v is not None]


def _number(text: str, vr: str) -> Any:
    """A DS or IS string (already without padding); DECLINED unless plain."""
    text = text.strip()
    if not text:
        return DECLINED
    if vr == "DS":
        if _DS.match(text) is None or len(text) > 16:
            return DECLINED  # pydicom would warn or raise; let it decide
        f = float(text)
        return f if math.isfinite(f) else None
    if _IS.match(text) is None or len(text) > 12:
        return DECLINED
    value = int(text)
    return value if -(2**31) <= value < 2**31 else DECLINED


def _person_name(value: bytes) -> Any:
    # json_value() of a PersonName is str(name), not stripped, '' kept (also
    # for an empty element); each of several names likewise.
    if not value.isascii() or b"\x1b" in value:
        return DECLINED
    names = value.rstrip(b"\x00 ").decode("ascii").split("\\")
    return names[0] if len(names) == 1 else names


def raw_json_value(vr: str | None, value: bytes | None, little_endian: bool) -> Any:
    """``value`` (the raw bytes of an element with VR ``vr``) as JSON-safe data.

    Parameters
    ----------
    vr : str or None
        The element's VR as pydicom would use it (the file's explicit VR, else
        the dictionary's); None, ambiguous (``US or SS``) or ``UN`` is declined.
    value : bytes or None
        The undecoded value; None (deferred or absent) is declined.
    little_endian : bool
        The dataset's byte order (for binary numbers).

    Returns
    -------
    Any
        The same value ``json_value(pydicom's value)`` gives, or :data:`DECLINED`.
    """
    if value is None or vr not in _KNOWN_VRS:
        return DECLINED
    if vr == "PN":
        return _person_name(value)
    if not value:
        return None  # pydicom's empty value ('' or None) is None as JSON
    if vr in _STRING_VRS:
        return _split_text(value.decode("latin-1"))
    if vr in _TEXT_VRS or vr in _SINGLE_TEXT_VRS:
        # ASCII without ESC decodes the same under every character set pydicom
        # knows; anything else goes through pydicom's decoder.
        if not value.isascii() or b"\x1b" in value:
            return DECLINED
        text = value.decode("ascii")
        return _split_text(text) if vr in _TEXT_VRS else _clean(text.rstrip("\x00 "))
    if vr in ("DS", "IS"):
        if not value.isascii():
            return DECLINED
        text = value.decode("ascii")
        if vr == "DS":
            text = text.strip()
        items = text.rstrip(" \x00").split("\\")
        numbers = [_number(i, vr) for i in items]
        if any(n is DECLINED for n in numbers):
            return DECLINED
        if len(numbers) == 1:
            return numbers[0]
        return [n for n in numbers if n is not None]
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        if len(value) % size:
            return DECLINED
        count = len(value) // size
        unpacked = struct.unpack(f"{'<' if little_endian else '>'}{count}{fmt}", value)
        if fmt in "fd":
            floats = [float(n) if math.isfinite(n) else None for n in unpacked]
            if count == 1:
                return floats[0]
            return [n for n in floats if n is not None]
        return unpacked[0] if count == 1 else list(unpacked)
    return DECLINED


#: Decoded values of little endian elements by (VR, raw bytes). A scan meets the
#: same bytes in every file of a series (Modality, EchoTime, ImageType...), so
#: most values are decoded once per series, not once per file.
_SEEN: dict[tuple[str, bytes], Any] = {}
#: Cleared when full; the hit rate, not the size, is what matters.
_SEEN_MAX = 4096
#: Unique per file: caching them would only evict the repeating values.
_UNCACHED_VRS = frozenset({"UI"})
#: Longer values are decoded every time (the cache's memory stays small).
_CACHED_MAX_BYTES = 256


def cached_json_value(vr: str, value: bytes) -> Any:
    """:func:`raw_json_value` of a little endian ``value``, remembered.

    A list result is copied on the way out, so no two headers share a mutable
    value. Safe in threads (a lost race only decodes a value twice).
    """
    if vr in _UNCACHED_VRS or len(value) > _CACHED_MAX_BYTES:
        return raw_json_value(vr, value, True)
    key = (vr, value)
    try:
        decoded = _SEEN[key]
    except KeyError:
        decoded = raw_json_value(vr, value, True)
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[key] = decoded
    return list(decoded) if type(decoded) is list else decoded
