"""Series zips built from members deflated during the scan (MemberPacker) are the
same bytes as zips deflated when built; a file that changes in between is caught."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from hpcgear.errors import IngestError
from hpcgear.ingest.dicom import (
    DicomInstance,
    MemberPacker,
    build_series_zip,
    group_instances,
    scan_dicom,
)

from .test_ingest_dicom import PYDICOM_DATA, write_series

pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")


def _series(root: Path, packer: MemberPacker | None) -> list[list[DicomInstance]]:
    scan = scan_dicom(root, route_fields=(), jobs=1, packer=packer)
    return [
        members
        for series in group_instances(scan.instances).values()
        for members in series.values()
    ]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    write_series(root / "a", study="s", series="1", number=1, description="T1", count=4)
    # A compressed transfer syntax: stored, not deflated.
    shutil.copy(PYDICOM_DATA / "JPEG2000.dcm", root / "j2k.dcm")
    return root


@pytest.mark.parametrize("budget", [None, 0, 20_000])  # all, none, some packed ahead
def test_packed_members_give_the_same_zip_bytes(
    folder: Path, tmp_path: Path, budget: int | None
) -> None:
    packer = MemberPacker() if budget is None else MemberPacker(budget)
    with packer:
        all_series = _series(folder, packer)
        assert len(all_series) == 2 and any(m[0].compressed for m in all_series)
        for n, members in enumerate(all_series):
            packed = build_series_zip(members, tmp_path / f"p{n}.zip", "x", None, packer.take)
            plain = build_series_zip(members, tmp_path / f"u{n}.zip", "x")
            assert (tmp_path / f"p{n}.zip").read_bytes() == (tmp_path / f"u{n}.zip").read_bytes()
            assert packed.members_sha256 == plain.members_sha256
            assert packed.members == plain.members == len(members)


def test_a_file_that_changes_after_the_scan_is_not_stored(folder: Path, tmp_path: Path) -> None:
    with MemberPacker() as packer:
        members = next(m for m in _series(folder, packer) if not m[0].compressed)
        with members[1].path.open("ab") as fh:
            fh.write(b"more")
        with pytest.raises(IngestError, match="changed while it was being ingested"):
            build_series_zip(members, tmp_path / "z.zip", "x", None, packer.take)


def test_packing_is_skipped_with_a_profile(folder: Path, tmp_path: Path) -> None:
    """De-identified members are rewritten, never taken from the packer."""
    from hpcgear.ingest.deid import default_profile

    with MemberPacker() as packer:
        members = next(m for m in _series(folder, packer) if not m[0].compressed)
        built = build_series_zip(members, tmp_path / "d.zip", "x", default_profile(), packer.take)
        assert built.deid is not None
    with zipfile.ZipFile(built.path) as zf:
        stored = sorted(zf.read(name) for name in zf.namelist())
    assert not set(stored) & {m.path.read_bytes() for m in members}  # all rewritten
