"""The plain header reader gives the same ingest result as pydicom on every file
shipped with pydicom's test data (and on broken copies of them)."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.data import get_testdata_files  # noqa: E402

from hpcgear.ingest.dicom import header_tags, read_instance  # noqa: E402
from hpcgear.ingest.dicom_reader import read_plain_header  # noqa: E402

ROUTE = ("PatientName", "AccessionNumber", "InstitutionName", "StudyComments")


def _both(path: Path) -> tuple[object, object]:
    tags = header_tags(ROUTE, None)
    fast = read_instance(path, path.name, route_fields=ROUTE, profile=None, tags=tags)
    slow = read_instance(
        path, path.name, route_fields=ROUTE, profile=None, tags=tags, plain_reader=False
    )
    return fast, slow


def test_every_pydicom_test_file_reads_the_same(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL)
    plain = 0
    files = sorted(f for f in get_testdata_files() if Path(f).is_file())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in files:
            path = Path(name)
            fast, slow = _both(path)
            assert fast == slow, name
            if read_plain_header(path, set(header_tags(ROUTE, None))) is not None:
                plain += 1
    assert len(files) > 100
    assert plain > len(files) // 2  # most are read without pydicom


@pytest.mark.parametrize("keep", [0, 100, 131, 140, 300, 1000, -1, -100, -1000])
def test_cut_short_files_read_the_same(
    tmp_path: Path, keep: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL)
    test_files = Path(pydicom.__file__).parent / "data" / "test_files"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"):
            data = (test_files / name).read_bytes()
            cut = tmp_path / name
            cut.write_bytes(data[:keep])
            fast, slow = _both(cut)
            assert fast == slow, (name, keep)


def test_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    src = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    ds = pydicom.dcmread(src)
    ds.ImageComments = "x" * 100_000  # pushes the wanted elements past 64 KiB
    ds.StudyComments = "long header"
    path = tmp_path / "long.dcm"
    ds.save_as(path)
    fast, slow = _both(path)
    assert fast == slow
    assert read_plain_header(path, set(header_tags(ROUTE, None))) is not None


def test_not_dicom_and_missing_files_read_the_same(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    shutil.copy(
        Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm",
        tmp_path / "b.dcm",
    )
    for p in (tmp_path / "a.txt", tmp_path / "gone.dcm", tmp_path / "b.dcm"):
        fast, slow = _both(p)
        assert fast == slow


def _outcome(path: Path, plain_reader: bool) -> object:
    tags = header_tags(ROUTE, None)
    try:
        return read_instance(
            path, path.name, route_fields=ROUTE, profile=None, tags=tags, plain_reader=plain_reader
        )
    except Exception as exc:  # the same failure either way is fine too
        return type(exc)


@pytest.mark.parametrize(
    "name",
    ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "rtplan.dcm"],
)
def test_damaged_copies_read_the_same(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Flipped bytes anywhere in the header and cut-offs at random places: the plain
    reader either reads what pydicom reads or leaves the file to pydicom."""
    import random

    caplog.set_level(logging.CRITICAL)
    data = (Path(pydicom.__file__).parent / "data" / "test_files" / name).read_bytes()
    rnd = random.Random(name)
    header_end = min(len(data), 4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(60):
            damaged = bytearray(data)
            if i % 3 == 0:
                damaged = damaged[: rnd.randrange(128, len(data))]
            else:
                for _ in range(rnd.randrange(1, 4)):
                    damaged[rnd.randrange(128, header_end)] = rnd.randrange(256)
            path = tmp_path / f"{i}.dcm"
            path.write_bytes(bytes(damaged))
            assert _outcome(path, True) == _outcome(path, False), (name, i)
