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


def test_a_long_header_does_not_read_the_pixel_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the first read the reader reads as much again, up to the pixel data
    element's header, never the whole file."""
    from hpcgear.ingest import dicom_reader

    src = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    ds = pydicom.dcmread(src)
    ds.StudyComments = "long header"
    ds.ImageComments = "x" * 9000
    ds.PixelData = bytes(4_000_000)  # a large (if not valid) pixel data element
    path = tmp_path / "big.dcm"
    ds.save_as(path)
    monkeypatch.setattr(dicom_reader, "FIRST_READ", 1024)
    read: list[int] = []
    real_pread = dicom_reader._pread

    def counting(fd: int, count: int, offset: int) -> bytes:
        data = real_pread(fd, count, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(dicom_reader, "_pread", counting)
    head = read_plain_header(path, set(header_tags(ROUTE, None)))
    assert head is not None
    assert head.elements[0x00324000][1].rstrip(b" ") == b"long header"
    assert 9000 < sum(read) < 40_000


@pytest.mark.parametrize("first_read", [149, 211, 500, 1024])
def test_small_first_reads_give_the_same_headers(
    first_read: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The element headers inside the first read are decoded inline, the ones it
    cuts are decoded by the general decoder: every read size gives one result."""
    from hpcgear.ingest import dicom_reader

    wanted = set(header_tags(ROUTE, None))
    files = sorted(Path(f) for f in get_testdata_files() if Path(f).is_file())
    whole = {path: read_plain_header(path, wanted) for path in files}
    monkeypatch.setattr(dicom_reader, "FIRST_READ", first_read)
    assert {path: read_plain_header(path, wanted) for path in files} == whole
    assert sum(head is not None for head in whole.values()) > len(files) // 2


def test_a_whole_small_file_is_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header shorter than the first read costs one read, of the file's size:
    no read past the end to find it (a scan reads thousands of such files)."""
    from hpcgear.ingest import dicom_reader

    src = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    asked: list[int] = []
    real_pread = dicom_reader._pread

    def counting(fd: int, count: int, offset: int) -> bytes:
        asked.append(count)
        return real_pread(fd, count, offset)

    monkeypatch.setattr(dicom_reader, "_pread", counting)
    head = read_plain_header(src, set(header_tags(ROUTE, None)))
    assert head is not None
    assert asked == [src.stat().st_size]


def test_short_reads_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem may return fewer bytes than asked: the header is the same."""
    from hpcgear.ingest import dicom_reader

    src = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    wanted = set(header_tags(ROUTE, None))
    whole = read_plain_header(src, wanted)
    real_pread = dicom_reader._pread
    monkeypatch.setattr(
        dicom_reader, "_pread", lambda fd, count, offset: real_pread(fd, min(count, 97), offset)
    )
    assert whole is not None
    assert read_plain_header(src, wanted) == whole
