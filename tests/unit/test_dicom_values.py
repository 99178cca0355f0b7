"""The raw-bytes value decoder gives pydicom's values on every pydicom test file."""

from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path
from typing import Any

import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.data import get_testdata_files  # noqa: E402

from hpcgear.ingest.dicom import (  # noqa: E402
    DEFER_SIZE,
    HEADER_FIELDS,
    LABEL_FIELDS,
    DicomInstance,
    _get,
    header_values,
    json_value,
    read_instance,
)
from hpcgear.ingest.dicom_values import (  # noqa: E402
    DECLINED,
    cached_json_value,
    raw_json_value,
)


def _read(path: str) -> Any:
    return pydicom.dcmread(path, stop_before_pixels=True, defer_size=DEFER_SIZE, force=True)


def _files() -> list[str]:
    return sorted(get_testdata_files())


def test_every_value_of_every_pydicom_test_file_matches_pydicom(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL)
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in _files():
            try:
                ours, ref = _read(path), _read(path)  # pydicom converts in place: two reads
            except Exception:
                continue  # not readable by pydicom at all: the scan reports it
            keywords = list(
                dict.fromkeys(
                    [e.keyword for e in ref if e.keyword] + [*HEADER_FIELDS, *LABEL_FIELDS]
                )
            )
            got = header_values(ours, keywords)
            for kw in keywords:
                want = json_value(_get(ref, kw))
                assert got[kw] == want, (path, kw)
                assert type(got[kw]) is type(want), (path, kw)
                compared += 1
    assert compared > 10_000


@pytest.mark.parametrize(
    ("vr", "raw", "want"),
    [
        ("CS", b"ORIGINAL\\PRIMARY\\M\\ND ", ["ORIGINAL", "PRIMARY", "M", "ND"]),
        ("UI", b"1.2.3\x00", "1.2.3"),
        ("LO", b"  head  ", "head"),
        ("LO", b"a\\ \\b", ["a", "b"]),
        ("DS", b"1.5\\-2e3 ", [1.5, -2000.0]),
        ("IS", b" 12 ", 12),
        ("US", struct.pack("<2H", 256, 256), [256, 256]),
        ("FD", struct.pack("<d", float("nan")), None),
        ("LO", b"", None),
        ("PN", b"Doe^John ", "Doe^John"),
        ("PN", b"A \\B", ["A ", "B"]),  # pydicom keeps each name as written
        ("PN", b"", ""),
    ],
)
def test_plain_values(vr: str, raw: bytes, want: Any) -> None:
    assert raw_json_value(vr, raw, True) == want
    # Twice: the second comes from the cache of repeating values.
    assert cached_json_value(vr, raw) == want
    assert cached_json_value(vr, raw) == want


def test_cached_lists_are_not_shared() -> None:
    first = cached_json_value("CS", b"ORIGINAL\\PRIMARY")
    first.append("changed")
    assert cached_json_value("CS", b"ORIGINAL\\PRIMARY") == ["ORIGINAL", "PRIMARY"]


@pytest.mark.parametrize(
    ("vr", "raw"),
    [
        ("LO", "Müller".encode("latin-1")),  # the character set decides: pydicom
        ("LO", b"\x1b$B"),  # ISO 2022 escape
        ("DS", b"1,5"),  # pydicom warns or raises
        ("DS", b"1\\\\2"),  # an empty number
        ("IS", b"1.0"),
        ("PN", "Müller^Hans".encode("latin-1")),
        ("US or SS", b"\x01\x00"),
        ("UN", b"x"),
        ("SQ", b""),
        ("US", b"\x01"),  # odd length
    ],
)
def test_unusual_values_go_to_pydicom(vr: str, raw: bytes) -> None:
    assert raw_json_value(vr, raw, True) is DECLINED
    assert raw_json_value("LO", None, True) is DECLINED  # a deferred value


def test_read_instance_matches_the_pydicom_values(tmp_path: Path) -> None:
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    inst = read_instance(
        path, path.name, route_fields=("PatientName", "AccessionNumber"), profile=None
    )
    ds = _read(str(path))
    assert isinstance(inst, DicomInstance)
    assert inst.sop_uid == str(ds.SOPInstanceUID)
    assert inst.routing == {
        "PatientName": str(ds.PatientName) or None,
        "AccessionNumber": str(ds.get("AccessionNumber") or "") or None,
    }
    header = inst.header
    for kw in HEADER_FIELDS:
        value = json_value(_get(ds, kw))
        assert header.get(kw) == (value if value not in (None, [], "") else None), kw
