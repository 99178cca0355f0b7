"""De-identification profiles: the Flywheel YAML shape, validation and each action."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hpcgear.errors import SchemaError
from hpcgear.ingest.deid import (
    DICOM_KEYS,
    FIELD_KEYS,
    TOP_KEYS,
    apply_profile,
    build_profile,
    default_profile,
    hash_uid,
    hash_value,
    load_profile,
    shift_date,
    shift_datetime,
)

MR_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "profile.yaml"
    p.write_text(text)
    return p


def dataset() -> Dataset:
    ds = pydicom.dcmread(MR_SMALL)
    ds.PatientName = "Doe^John"
    ds.PatientID = "MRN-1"
    ds.PatientBirthDate = "19700620"
    ds.StudyDate = "20200101"
    ds.AcquisitionDateTime = "20200101093000.000000"
    ds.AccessionNumber = "ACC9"
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ref.PatientID = "MRN-1"
    ds.ReferencedImageSequence = Sequence([ref])
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "secret")
    return ds


FULL = """\
name: full
description: every action
dicom:
  date-increment: 30
  patient-age-from-birthdate: true
  remove-private-tags: true
  recurse-sequence: true
  salt: s3
  fields:
    - name: PatientName
      remove: true
    - name: PatientID
      hash: true
    - name: "(0008,0050)"
      replace-with: REDACTED
    - name: StudyDate
      increment-date: true
    - name: AcquisitionDateTime
      increment-datetime: true
    - name: SOPInstanceUID
      hashuid: true
    - name: ReferencedSOPInstanceUID
      hashuid: true
    - name: PatientIdentityRemoved
      replace-with: 'YES'
    - name: Modality
      keep: true
"""


def test_every_action(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, FULL))
    ds = dataset()
    original_sop = ds.SOPInstanceUID
    log = apply_profile(ds, profile)
    assert "PatientName" not in ds
    assert ds.PatientID == hash_value("s3", "MRN-1") == hashlib.sha256(b"s3MRN-1").hexdigest()[:16]
    assert ds.AccessionNumber == "REDACTED"
    assert ds.StudyDate == "20200131"
    assert ds.AcquisitionDateTime == "20200131093000.000000"
    assert ds.SOPInstanceUID == hash_uid("s3", original_sop)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert re.fullmatch(r"2\.25\.[1-9]\d*", ds.SOPInstanceUID) and len(ds.SOPInstanceUID) <= 64
    # recurse-sequence: nested fields get the same treatment, references stay consistent
    item = ds.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == hash_uid("s3", "1.2.3.4.5")
    assert item.PatientID == hash_value("s3", "MRN-1")
    assert ds.PatientAge == "049Y"
    assert not any(e.tag.is_private for e in ds.iterall())
    assert ds.Modality == "MR"
    info = log.to_info()
    assert info["removed"] == ["PatientName"]
    assert info["hashed"] == ["PatientID", "ReferencedImageSequence[0].PatientID"]
    assert info["hashuid"] == [
        "ReferencedImageSequence[0].ReferencedSOPInstanceUID", "SOPInstanceUID"
    ]
    assert info["shifted"] == ["AcquisitionDateTime", "StudyDate"]
    assert "AccessionNumber" in info["replaced"]
    assert info["added"] == ["DeidentificationMethod", "PatientAge", "PatientIdentityRemoved"]
    assert info["private_tags_removed"] == 2
    assert info["profile"] == "full" and info["salted"] is True
    text = str(info)
    assert "MRN-1" not in text and "Doe" not in text and "s3" not in text and "30" not in text


def test_without_recursion_nested_values_are_left(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, FULL.replace("recurse-sequence: true",
                                                        "recurse-sequence: false")))
    ds = dataset()
    apply_profile(ds, profile)
    assert ds.ReferencedImageSequence[0].PatientID == "MRN-1"


def test_hashes_are_deterministic_and_salted() -> None:
    assert hash_uid("", "1.2.3") == hash_uid("", "1.2.3") != hash_uid("x", "1.2.3")
    assert hash_value("a", "v") != hash_value("b", "v")
    assert len(hash_value("", "anything")) == 16


def test_profile_hash_ignores_salt_and_formatting(tmp_path: Path) -> None:
    a = load_profile(write(tmp_path, FULL))
    b = load_profile(write(tmp_path, "# a comment\n" + FULL.replace("salt: s3", "salt: other")))
    c = load_profile(write(tmp_path, FULL.replace("date-increment: 30", "date-increment: 31")))
    assert a.sha256 == b.sha256 != c.sha256
    assert a.sha256.startswith("sha256:")


def test_default_profile() -> None:
    p = default_profile()
    ds = dataset()
    log = apply_profile(ds, p)
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(ds.dir())
    assert log.to_info()["removed"] == ["PatientBirthDate", "PatientID", "PatientName"]
    assert ds.StudyDate == "20200101" and ds.AccessionNumber == "ACC9"


def test_dates_and_ages() -> None:
    assert shift_date("20200228", 1) == "20200229"
    assert shift_date("2020.02.28", -28) == "20200131"
    assert shift_date("garbage", 1) is None
    assert shift_datetime("20201231235959.5+0100", 1) == "20210101235959.5+0100"
    profile = build_profile(
        {"name": "age", "dicom": {"patient-age-from-birthdate": True, "patient-age-units": "D"}},
        source="t",
    )
    ds = Dataset()
    ds.PatientBirthDate = "20200101"
    ds.StudyDate = "20200111"
    apply_profile(ds, profile)
    assert ds.PatientAge == "010D"
    ds.PatientBirthDate = "19000101"  # too many days: the unit grows until it fits
    apply_profile(ds, profile)
    assert ds.PatientAge == "120Y"


def test_unparseable_date_is_removed_not_kept() -> None:
    profile = build_profile(
        {"name": "d", "dicom": {"date-increment": 3,
                                "fields": [{"name": "StudyDate", "increment-date": True}]}},
        source="t",
    )
    ds = Dataset()
    with warnings.catch_warnings():  # pydicom rightly warns about the bad value
        warnings.simplefilter("ignore", UserWarning)
        ds.StudyDate = "not-a-date"
    log = apply_profile(ds, profile)
    assert "StudyDate" not in ds and log.to_info()["removed"] == ["StudyDate"]


@pytest.mark.parametrize(
    ("text", "line", "needle", "hint"),
    [
        ("name: x\nzip: {}\n", 2, "unknown key 'zip' in the profile", ", ".join(TOP_KEYS)),
        ("name: x\ndicom:\n  remove-privat-tags: true\n", 3, "unknown key 'remove-privat-tags'",
         ", ".join(DICOM_KEYS)),
        ("name: x\ndicom:\n  fields:\n    - name: PatientName\n      delete: true\n", 5,
         "unknown key 'delete' in dicom.fields[0]", ", ".join(FIELD_KEYS)),
        ("name: x\ndicom:\n  fields:\n    - name: PatientNam\n      remove: true\n", 4,
         "'PatientNam' is not a DICOM keyword", "keyword"),
        ("name: x\ndicom:\n  fields:\n    - name: StudyDate\n      increment-date: true\n", 5,
         "date-increment is not set", "date-increment"),
        ("name: x\ndicom:\n  fields:\n    - name: PatientName\n      hashuid: true\n", 5,
         "hashuid needs UI", "hash"),
        ("name: x\ndicom:\n  fields:\n    - name: StudyDate\n      hash: true\n", 5,
         "cannot hold a hash", "increment-date"),
        ("name: x\ndicom:\n  fields:\n    - name: SOPInstanceUID\n      remove: true\n", 5,
         "may only be hashuid or keep", "hashuid"),
        ("name: x\ndicom:\n  fields:\n    - name: PatientName\n      remove: true\n"
         "      replace-with: X\n", 4, "needs exactly one action", "remove"),
        ("name: x\ndicom:\n  fields:\n    - name: PatientName\n      remove: yes-please\n", 5,
         "remove must be true", "remove: true"),
        ("name: x\ndicom:\n  patient-age-units: years\n", 3, "patient-age-units", "Y = years"),
        ("name: x\ndicom:\n  date-increment: soon\n", 3, "whole number", "-17"),
        ("name: x\ndicom:\n  fields:\n    - name: PatientID\n      remove: true\n"
         "    - name: PatientID\n      hash: true\n", 6, "listed twice", "one action"),
        ("- just\n- a list\n", None, "must be a mapping", "dicom"),
    ],
)
def test_profile_errors_name_the_line_and_valid_keys(
    tmp_path: Path, text: str, line: int | None, needle: str, hint: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SchemaError) as err:
        load_profile(path)
    if line is not None:
        assert f"{path}:{line}:" in err.value.message
    assert needle in err.value.message
    assert hint in err.value.hint


def test_tags_by_number_and_default_name(tmp_path: Path) -> None:
    p = tmp_path / "my-site.yaml"
    p.write_text("dicom:\n  fields:\n    - name: '00100010'\n      remove: true\n"
                 "    - name: 0x00100020\n      remove: true\n")
    profile = load_profile(p)
    assert profile.name == "my-site"
    assert [f.keyword for f in profile.fields] == ["PatientName", "PatientID"]


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        load_profile(tmp_path / "nope.yaml")
