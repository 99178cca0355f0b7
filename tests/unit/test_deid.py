"""De-identification: PS3.15 Annex E conformance on pydicom's real test files, the
seeds' profile as written (deid-log included), and equality with flywheel-migration."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hpcgear.errors import SchemaError
from hpcgear.ingest.deid import (
    apply_profile,
    default_profile,
    load_profile,
    parse_profile_text,
    with_baseline,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

REAL_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "waveform_ecg.dcm")

SEEDS_PROFILE = """\
name: seeds-deid
description: the seeds' site profile, as written
deid-log: /data/deid/seeds-deid-log.csv
dicom:
  date-increment: -17
  patient-age-from-birthdate: true
  patient-age-units: Y
  remove-private-tags: true
  salt: seeds-salt
  fields:
    - name: PatientName
      replace-with: SEEDS
    - name: PatientID
      hash: true
    - name: StudyDate
      increment-date: true
    - name: StudyInstanceUID
      hashuid: true
    - name: SeriesInstanceUID
      hashuid: true
    - name: SOPInstanceUID
      hashuid: true
"""


def _table() -> dict[int, str]:
    """PS3.15 Table E.1-1 (2026c) as transcribed by the dicom-anonymizer package."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as t

    out: dict[int, str] = {}
    for cat in ("D", "Z", "X", "U", "Z_D", "X_Z", "X_D", "X_Z_D", "X_Z_U_STAR"):
        for entry in getattr(t, f"{cat}_TAGS"):
            if len(entry) == 2:
                out[(entry[0] << 16) | entry[1]] = cat
    return out


def _identifying_value(vr: str, tag: int) -> object:
    return {
        "DA": "19610203", "DT": "19610203040506", "TM": "040506", "DS": "71.5", "IS": "71",
        "US": 7, "AS": "061Y", "UI": f"1.2.826.0.1.3680043.2.1125.{tag}", "CS": "SECRET",
        "OB": b"SECRET", "UN": b"SECRET", "SQ": None,
    }.get(vr, f"Secret {tag:08X}")


def _seed_every_attribute(ds: Dataset, table: dict[int, str]) -> dict[int, object]:
    """Put every table attribute (a known VR) into ``ds`` with an identifying value."""
    put: dict[int, object] = {}
    for tag, _cat in table.items():
        if tag >> 16 == 0x0002:  # file meta: follows SOPInstanceUID (checked below)
            continue
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            continue
        if vr == "SQ":
            item = Dataset()
            item.PatientName = "Nested^Secret"
            item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.99"
            ds.add_new(tag, "SQ", Sequence([item]))
            put[tag] = "SQ"
            continue
        value = _identifying_value(vr, tag)
        if tag not in ds or ds[tag].value in (None, "", b""):
            ds.add_new(tag, vr, value)
        put[tag] = ds[tag].value
    return put


@pytest.mark.parametrize("name", REAL_FILES)
def test_ps315_basic_profile_every_attribute(name: str) -> None:
    """Every attribute of Table E.1-1 gets its action on a real pydicom file."""
    table = _table()
    assert len(table) > 600
    ds = pydicom.dcmread(get_testdata_file(name))
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private secret")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeded = _seed_every_attribute(ds, table)
        originals = {tag: ds[tag].value for tag in seeded if tag in ds}
        apply_profile(ds, default_profile())
    checked = 0
    for tag, cat in table.items():
        if tag not in originals:
            continue
        orig = originals[tag]
        vr = str(dictionary_VR(tag))
        now = ds.get(tag)
        value = None if now is None else now.value
        where = f"{name}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) {cat}"
        if cat == "X":
            assert now is None, where
        elif cat in ("Z", "Z_D", "X_Z"):  # hpcgear picks Z for these
            assert now is not None and (value in ("", b"", None) or len(value) == 0), where
        elif vr == "UI" or cat == "U":  # replaced by a consistent, different UID
            assert now is not None and value and str(value) != str(orig), where
            # well-formed: digits and dots, no component with a leading zero, <= 64
            assert pydicom.uid.UID(str(value)).is_valid, f"{where}: {value}"
        elif vr == "SQ":  # D and U* sequences stay, every attribute inside is cleaned
            if now is not None:
                for item in value:
                    assert not item.get("PatientName"), where
                    assert item.get("ReferencedSOPInstanceUID") != "1.2.826.0.1.3680043.2.1125.99"
        else:  # D: a dummy of the same VR, never the original
            assert now is not None and value not in ("", b"", None), where
            assert value != orig, where
        checked += 1
    assert checked > 550
    assert not any(e.tag.is_private for e in ds.iterall())
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_builtin_profile_lists_every_table_attribute() -> None:
    from hpcgear.ingest.deid import _name_tag

    named = {
        _name_tag(f.get("name"))
        for p in default_profile().passes
        for f in p["dicom"]["fields"]
    }
    table = _table()
    missing = [t for t in table if t not in named]
    # only sequences whose action keeps them (D, U*) have no entry: pass 2 cleans inside
    assert all(str(dictionary_VR(t)) == "SQ" for t in missing), missing
    assert {table[t] for t in missing} <= {"D", "X_D", "X_Z_D", "X_Z_U_STAR"}


def test_seeds_profile_as_written_and_implied_baseline(tmp_path: Path) -> None:
    p = tmp_path / "seeds.yaml"
    p.write_text(SEEDS_PROFILE)
    profile = load_profile(p)  # deid-log accepted as written
    assert profile.reid_map and profile.name == "seeds-deid"
    assert not Path("/data/deid").exists()  # hpcgear does not write where deid-log points
    full = with_baseline(profile)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.OtherPatientIDs = "OTHER-1"
    ds.PatientAddress = "1 Main St"
    ds.ReferringPhysicianName = "Dr^Who"
    ds.AccessionNumber = "ACC-1"
    ds.PatientBirthDate = "19500101"
    log = apply_profile(ds, full)
    assert ds.PatientName == "SEEDS"  # the profile's own choice wins
    assert ds.StudyDate == "20040102"  # shifted by -17 days
    assert len(ds.PatientID) == 16 and ds.PatientID != "1CT1"
    assert ds.PatientAge == "054Y"  # computed before the baseline empties the birth date
    assert "OtherPatientIDs" not in ds and "PatientAddress" not in ds
    assert ds.ReferringPhysicianName == "" and ds.AccessionNumber == ""
    assert ds.get("PatientBirthDate", "") == ""
    assert log.reid and log.reid[0]["PatientID"][0] == "1CT1"
    assert "1CT1" not in str(log.to_info())


def test_same_result_as_flywheel_migration_process_files(tmp_path: Path) -> None:
    """hpcgear's in-memory run equals flywheel-migration's own file-based run."""
    from flywheel_migration.deidentify import load_profile as fw_load
    from fs.osfs import OSFS

    text = SEEDS_PROFILE.replace("deid-log: /data/deid/seeds-deid-log.csv\n", "")
    (tmp_path / "p.yaml").write_text(text)
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for name in REAL_FILES[:3]:
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.PatientBirthDate = "19500101"
        ds.save_as(src / name)
    fw = fw_load(str(tmp_path / "p.yaml")).get_file_profile("dicom")
    fw.filenames = [{"output": "{SOPInstanceUID}.dcm"}]  # keep a name we can find
    for name in REAL_FILES[:3]:
        fw.process_files(OSFS(str(src)), OSFS(str(dst)), [name])
    ours = parse_profile_text(text, "p")
    for name in REAL_FILES[:3]:
        mine = pydicom.dcmread(src / name)
        apply_profile(mine, ours)
        theirs = pydicom.dcmread(dst / f"{mine.SOPInstanceUID}.dcm")
        for elem in theirs:
            if elem.tag in (0x00120062, 0x00120063):  # set by neither... skip if any
                continue
            assert mine.get(elem.tag) is not None, (name, elem.tag)
            assert mine[elem.tag].value == elem.value, (name, elem.keyword)
        assert {e.tag for e in mine} - {e.tag for e in theirs} <= {0x00120062, 0x00120063}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nzip: {}\n", "unknown key 'zip' in the profile"),
        ("name: x\ndicom:\n  remove-privat-tags: true\n", "unknown key 'remove-privat-tags'"),
        ("name: x\ndicom:\n  fields:\n    - name: NotAKeyword\n      remove: true\n",
         "Not in DICOM keyword list"),
        ("name: x\ndicom:\n  fields:\n    - name: StudyInstanceUID\n      remove: true\n",
         "may only be hashuid or keep"),
        ("name: x\ndicom:\n  alter_pixels: {}\n", "pixel scrubbing"),
        ("name: x\ndicom:\n  fields:\n    - name: PatientName\n      remoev: true\n",
         r"p.yaml:5: unknown key 'remoev' in dicom.fields\[0\]"),
        ("name: x\ndicom:\n  fields:\n    - name: PatientName\n", "needs exactly one action"),
        ("name: x\ndicom:\n  fields:\n    - name: PatientName\n      remove: true\n"
         "      hash: true\n", "needs exactly one action, has 2"),
    ],
)
def test_bad_profiles_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        parse_profile_text(text, "p.yaml")


def test_ps315_passes_equal_flywheel_migration_process_files(tmp_path: Path) -> None:
    """The built-in two-pass profile (recursive pass included) run by hpcgear in memory
    equals flywheel-migration's own process_files run pass after pass."""
    import yaml
    from flywheel_migration.deidentify import load_profile as fw_load
    from fs.osfs import OSFS

    profile = default_profile()
    stages = [tmp_path / "s0", tmp_path / "s1", tmp_path / "s2"]
    for d in stages:
        d.mkdir()
    names = []
    for name in REAL_FILES[:3]:
        ds = pydicom.dcmread(get_testdata_file(name))
        item = Dataset()
        item.PatientName = "Nested^Secret"
        item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.99"
        ds.ReferencedImageSequence = Sequence([item])
        out = f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(stages[0] / out)
        names.append(out)
    current = names
    for i, config in enumerate(profile.passes):
        (tmp_path / f"p{i}.yaml").write_text(yaml.safe_dump(dict(config)))
        fw = fw_load(str(tmp_path / f"p{i}.yaml")).get_file_profile("dicom")
        fw.filenames = [{"output": "{SOPInstanceUID}.dcm"}]
        for name in current:
            fw.process_files(OSFS(str(stages[i])), OSFS(str(stages[i + 1])), [name])
        current = sorted(p.name for p in stages[i + 1].iterdir())
    theirs = {pydicom.dcmread(stages[2] / n).SOPInstanceUID: stages[2] / n for n in current}
    for name in names:
        mine = pydicom.dcmread(stages[0] / name)
        apply_profile(mine, profile)
        other = pydicom.dcmread(theirs[mine.SOPInstanceUID])
        assert [e.tag for e in mine] == [e.tag for e in other], name
        for elem in other:
            assert mine[elem.tag].value == elem.value, (name, elem.keyword)


def test_a_profile_that_cannot_apply_is_an_error_never_an_exit(tmp_path: Path) -> None:
    """flywheel-migration calls sys.exit on a replace-with of an unknown private VR;
    hpcgear turns it into an IngestError, and ingest skips the file as deid_failed
    with a detail that quotes no header value."""
    from hpcgear.errors import IngestError
    from hpcgear.ingest.dicom import DEID_FAILED, read_instance

    text = ('name: bad\ndicom:\n  fields:\n    - name: (0019, "NO SUCH CREATOR", 01)\n'
            "      replace-with: x\n")
    profile = parse_profile_text(text, "bad.yaml")
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    with pytest.raises(IngestError, match="VR is unknown"):
        apply_profile(ds, profile)
    f = tmp_path / "a.dcm"
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = "Secret^Person"
    ds.save_as(f)
    got = read_instance(f, "a.dcm", route_fields=("AccessionNumber",), profile=profile)
    assert getattr(got, "reason", None) == DEID_FAILED
    assert "Secret" not in got.detail and "IngestError" in got.detail  # type: ignore[union-attr]


def test_same_fields_other_salt_hash_differently() -> None:
    a = parse_profile_text(
        "name: a\ndicom:\n  salt: one\n  fields:\n    - {name: PatientID, hash: true}\n", "a")
    b = parse_profile_text(
        "name: a\ndicom:\n  salt: two\n  fields:\n    - {name: PatientID, hash: true}\n", "b")
    assert a.sha256 == b.sha256  # the recorded hash leaves the salt out
    ids = []
    for p in (a, b, a):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        apply_profile(ds, p)
        ids.append(ds.PatientID)
    assert ids[0] != ids[1] and ids[0] == ids[2]
    assert with_baseline(a) is with_baseline(a)
    assert with_baseline(a).passes[0] != with_baseline(b).passes[0]
