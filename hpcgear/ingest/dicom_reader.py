"""A small reader of the plain DICOM file header, for scans of many files.

pydicom builds a dataset of every element it meets (``RawDataElement`` tuples,
tag objects, file-meta datasets); a header scan needs a few dozen values and the
transfer syntax. :func:`read_plain_header` walks the bytes of a well-formed
Part 10 file in little endian (explicit or implicit VR) up to the pixel data
and returns the raw bytes of the wanted elements. It reads nothing it is not
sure about: a file without the ``DICM`` preamble, a big endian or deflated
transfer syntax, a VR that contradicts the transfer syntax, a command set, a
length that runs past the end of the file, a truncated or unterminated pixel
data element, an undefined length that is not a sequence, anything unexpected
at all: it returns None and the caller reads the file with pydicom, which
decides (and words the reason a file is skipped). ``tests/unit/test_dicom_reader.py``
checks that every file of pydicom's test data gives the same ingest result
either way.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection
from dataclasses import dataclass

from hpcgear.ingest.dicom_tags import IMPLICIT_VR_LITTLE_ENDIAN, PLAIN_SYNTAXES

#: First read of a file; most headers end well within it. A longer header makes
#: the reader read as much again (doubling) until it reaches the pixel data.
FIRST_READ = 64 * 1024

_TS_TAG = 0x00020010
_PIXEL_DATA = 0x7FE00010
_OTHER_PIXELS = frozenset({0x7FE00008, 0x7FE00009})
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
#: An element header: (group, element, VR, 16-bit length) and (group, element, length).
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")


class _Unusual(Exception):
    """Something this reader leaves to pydicom."""


@dataclass(frozen=True, slots=True)
class PlainHeader:
    """The wanted elements of a file (tag -> (explicit VR or None, raw bytes))."""

    size: int
    transfer_syntax: str
    compressed: bool
    implicit: bool
    elements: dict[int, tuple[str | None, bytes]]


def read_plain_header(path: os.PathLike[str] | str, wanted: Collection[int]) -> PlainHeader | None:
    """The raw values of the ``wanted`` tags of a plain little endian file, or None.

    None means "read it with pydicom": the file is not one this reader is sure
    to read exactly as pydicom would. OSError propagates.
    """
    # Unbuffered (a file object per file costs more than the reads it saves):
    # usually one open, one fstat and one read.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size = os.fstat(fd).st_size
        buf = _read_at(fd, 0, FIRST_READ, size)
        encapsulated_ok = False
        while True:
            try:
                return _parse(buf, size, wanted, encapsulated_ok=encapsulated_ok)
            except _NeedMore:
                # A long header: read as much again (never the pixel data beyond it).
                more = _read_at(fd, len(buf), len(buf), size)
                if not more:
                    return None
                buf += more
            except _Encapsulated as enc:
                if encapsulated_ok:
                    return None
                (pixel_pos,) = enc.args
                start = max(pixel_pos, size - 4096)
                if b"\xfe\xff\xdd\xe0" not in _read_at(fd, start, size - start, size):
                    return None  # no end of the pixel data: pydicom's path says so
                encapsulated_ok = True
            except (_Unusual, struct.error, UnicodeDecodeError):
                return None
    finally:
        os.close(fd)


def _read_at(fd: int, offset: int, count: int, size: int) -> bytes:
    """``count`` bytes at ``offset``, fewer only at the end of the file (``size``
    bytes at the fstat). Asks for no more than the file holds, so a whole file
    is one read; a read that comes back short is continued, as a buffered
    file's read is."""
    count = max(0, min(count, size - offset))
    parts: list[bytes] = []
    got = 0
    while got < count:
        chunk = _pread(fd, count - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pread(fd: int, count: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
    return os.read(fd, count)


class _NeedMore(Exception):
    """The header runs past the first read."""


class _Encapsulated(Exception):
    """Encapsulated pixel data starts at ``args[0]``; its end is to be checked."""


def _parse(
    buf: bytes, size: int, wanted: Collection[int], *, encapsulated_ok: bool = False
) -> PlainHeader:
    n = len(buf)
    if n < 132 or buf[128:132] != b"DICM":
        raise _Unusual("no preamble")
    pos = 132
    ts: str | None = None
    # File meta information: explicit VR little endian, group 2.
    while True:
        if pos + 8 > n:
            if n < size:
                raise _NeedMore
            raise _Unusual("ends in the meta group")
        group, elem = _TAG.unpack_from(buf, pos)
        if group != 2:
            break
        meta_vr = buf[pos + 4 : pos + 6]
        if meta_vr in _LONG_VRS:
            length = _U32.unpack_from(buf, pos + 8)[0]
            start = pos + 12
        elif meta_vr in _SHORT_VRS:
            length = _U16.unpack_from(buf, pos + 6)[0]
            start = pos + 8
        else:
            raise _Unusual("meta VR")
        if length == UNDEFINED:
            raise _Unusual("undefined length in meta")
        end = start + length
        if end > n:
            if n < size:
                raise _NeedMore
            raise _Unusual("meta element past the end")
        if (group << 16 | elem) == _TS_TAG:
            ts = buf[start:end].decode("ascii").rstrip("\x00 ")
        pos = end
    if ts is None or ts not in PLAIN_SYNTAXES:
        raise _Unusual("transfer syntax")
    implicit = ts == IMPLICIT_VR_LITTLE_ENDIAN
    if group == 0:
        raise _Unusual("command set")
    # pydicom checks the first element for a VR that contradicts the syntax.
    if pos + 6 <= n:
        looks_implicit = not (0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B)
        if looks_implicit != implicit:
            raise _Unusual("VR encoding differs from the transfer syntax")
    elements: dict[int, tuple[str | None, bytes]] = {}
    last_tag = -1
    # The loop below runs for every element of every file a scan reads, so the
    # common case (an explicit VR element header wholly inside ``buf``) is
    # decoded inline; _element_header decodes every other one, as it would this.
    explicit_header = _EXPLICIT.unpack_from
    long_length = _U32.unpack_from
    short_vrs, long_vrs = _SHORT_VRS, _LONG_VRS
    while pos < size:
        if implicit or pos + 12 > n:
            tag, vr, length, start = _element_header(buf, pos, size, implicit)
        else:
            group, elem, vr, length = explicit_header(buf, pos)
            tag = group << 16 | elem
            if group == 0xFFFE:
                raise _Unusual("tag order")  # an item or delimiter outside a sequence
            if vr in short_vrs:
                start = pos + 8
            elif vr in long_vrs:
                length = long_length(buf, pos + 8)[0]
                start = pos + 12
            else:
                raise _Unusual("unknown VR")
        group = tag >> 16
        if tag <= last_tag or group == 0xFFFE or group == 2:
            raise _Unusual("tag order")
        last_tag = tag
        if tag >= 0x7FE00008:  # the pixel data tags (and anything after them)
            if tag in _OTHER_PIXELS:
                raise _Unusual("float pixel data")
            if tag == _PIXEL_DATA:
                if not (encapsulated_ok and length == UNDEFINED):
                    _check_pixel_data(pos, start, length, size)
                break
        if length == UNDEFINED:
            if vr not in (None, b"SQ"):
                raise _Unusual("undefined length outside a sequence")
            pos = _skip_sequence(buf, start, size, implicit)
            if tag in wanted:
                raise _Unusual("a wanted sequence")
            continue
        end = start + length
        if end > size:
            raise _Unusual("value past the end of the file")
        if tag in wanted:
            if end > n:
                raise _NeedMore
            elements[tag] = (vr.decode("ascii") if vr is not None else None, buf[start:end])
        pos = end
    return PlainHeader(size, ts, PLAIN_SYNTAXES[ts], implicit, elements)


def _element_header(
    buf: bytes, pos: int, size: int, implicit: bool
) -> tuple[int, bytes | None, int, int]:
    """(tag, explicit VR or None, value length, value start) of the element at ``pos``.

    The one element-header decoder of the reader, for the dataset and for the
    items inside sequences, explicit or implicit VR. Item and delimiter tags
    (group FFFE) never carry a VR. Raises _NeedMore when the header runs past
    ``buf`` but not past the file, _Unusual when it runs past the file or its VR
    is not one of DICOM's.
    """
    n = len(buf)
    if pos + 8 > n:
        raise _NeedMore if n < size else _Unusual("ends inside an element header")
    if implicit:
        group, elem, length = _IMPLICIT.unpack_from(buf, pos)
        return group << 16 | elem, None, length, pos + 8
    group, elem, vr, length = _EXPLICIT.unpack_from(buf, pos)
    if group == 0xFFFE:  # an item or a delimiter: no VR, a 32-bit length
        return group << 16 | elem, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    if vr in _SHORT_VRS:
        return group << 16 | elem, vr, length, pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > n:
            raise _NeedMore if n < size else _Unusual("ends inside an element header")
        return group << 16 | elem, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    raise _Unusual("unknown VR")


def _check_pixel_data(pos: int, start: int, length: int, size: int) -> None:
    """pydicom stops before the pixel data; a cut-short one makes the caller
    read the file with pydicom (which says how it is cut short)."""
    if start > size:
        raise _Unusual("pixel data header cut short")
    if length == UNDEFINED:
        # Encapsulated: read_plain_header looks for its sequence delimiter
        # near the end of the file (as hpcgear.ingest.dicom._truncated does).
        raise _Encapsulated(pos)
    if start + length > size:
        raise _Unusual("pixel data cut short")


def _skip_sequence(buf: bytes, pos: int, size: int, implicit: bool) -> int:
    """The position after an undefined-length sequence starting (items) at ``pos``."""
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _NeedMore if n < size else _Unusual("sequence past the end")
        group, elem = _TAG.unpack_from(buf, pos)
        tag = group << 16 | elem
        length = _U32.unpack_from(buf, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unusual("not an item")
        if length != UNDEFINED:
            pos += length
            if pos > size:
                raise _Unusual("item past the end")
            continue
        pos = _skip_item(buf, pos, size, implicit)


def _skip_item(buf: bytes, pos: int, size: int, implicit: bool) -> int:
    """The position after an undefined-length item's delimiter."""
    while True:
        tag, vr, length, start = _element_header(buf, pos, size, implicit)
        if tag == _ITEM_END:
            return start
        if tag >> 16 == 0xFFFE:
            raise _Unusual("delimiter inside an item")
        if length == UNDEFINED:
            if vr not in (None, b"SQ"):
                raise _Unusual("undefined length outside a sequence")
            pos = _skip_sequence(buf, start, size, implicit)
            continue
        pos = start + length
        if pos > size:
            raise _Unusual("element past the end")
