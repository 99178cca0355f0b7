"""DICOM ingest through the service layer, on SQLite and PostgreSQL.

Test data are copies of the DICOM files that ship inside pydicom
(``pydicom/data/test_files``), rewritten with pydicom to carry the routing
values, UIDs and identifiers each test needs. No network.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import MetaData, func, select

from hpcgear.db.models import ChangeLog, Container, File, FileVersion
from hpcgear.errors import IngestError, NotFoundError, PermissionDeniedError
from hpcgear.hierarchy.service import (
    add_user,
    create_group,
    create_project,
    grant_role,
    upload_files,
)
from hpcgear.ingest.classifier import CLASSIFIER_VERSION
from hpcgear.ingest.deid import default_profile, load_profile
from hpcgear.ingest.dicom import ProgressEvent
from hpcgear.ingest.routing import RoutingRules
from hpcgear.ingest.service import DicomIngestOptions, ingest_dicom, reclassify
from hpcgear.storage.objects import ObjectStore

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
MR_SMALL = PYDICOM_DATA / "MR_small.dcm"
DICOMDIR_STUDY = PYDICOM_DATA / "dicomdirtests" / "98892003"
GROUP = "imaging"
# Test accessions like "demo/sub-01/ses-01" exceed SH's 16 characters, as real ones do.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")


# ------------------------------------------------------------ test data


def uid(*parts: object) -> str:
    """A deterministic UID per test name, so reruns produce identical files."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def write_series(
    folder: Path,
    *,
    study: str,
    series: str,
    number: int,
    description: str,
    count: int,
    accession: str = "",
    patient_id: str = "PAT-001",
    patient_name: str = "Doe^Jane",
    extra: dict[str, Any] | None = None,
    prefix: str | None = None,
) -> list[Path]:
    """``count`` instances of one series, copied from pydicom's MR_small.dcm."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds = pydicom.dcmread(MR_SMALL)
        sop = uid("sop", study, series, i)
        values = {
            "StudyInstanceUID": uid("study", study),
            "SeriesInstanceUID": uid("series", study, series),
            "SOPInstanceUID": sop,
            "SeriesNumber": number,
            "InstanceNumber": count - i,  # reverse order on disk: the zip must sort
            "SeriesDescription": description,
            "AccessionNumber": accession,
            "PatientID": patient_id,
            "PatientName": patient_name,
            "PatientBirthDate": "19800101",
            "StudyDate": "20200315",
            "StudyTime": "101500",
            **(extra or {}),
        }
        with warnings.catch_warnings():  # "demo/sub-01/ses-01" is longer than SH allows
            warnings.simplefilter("ignore", UserWarning)
            for key, value in values.items():
                setattr(ds, key, value)
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        path = folder / f"{prefix or series}-{i:03d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return ObjectStore(tmp_path / "storage")


@pytest.fixture
def hier(db: Any) -> Any:
    """Site admin ``admin``; group imaging with project demo; users rw, ro, ga."""
    return make_hier(db)


def make_hier(db: Any) -> Any:
    with db.session() as s:
        add_user(s, None, "admin", site_admin=True)
        for login in ("rw", "ro", "ga"):
            add_user(s, "admin", login)
        create_group(s, "admin", GROUP)
        create_project(s, "admin", f"{GROUP}/demo")
        grant_role(s, "admin", "rw", f"{GROUP}/demo", "read-write")
        grant_role(s, "admin", "ro", f"{GROUP}/demo", "read-only")
        grant_role(s, "admin", "ga", GROUP, "admin")
    return db


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """ONE folder holding three studies and five series plus junk files."""
    d = tmp_path / "incoming"
    # study A: routed by the AccessionNumber convention; two series
    write_series(d, study="A", series="t1", number=3, description="t1_mprage_sag", count=3,
                 accession="demo/sub-01/ses-01", prefix="x1")
    write_series(d, study="A", series="loc", number=1, description="localizer", count=2,
                 accession="demo/sub-01/ses-01", prefix="x2")
    # study B: names a project that does not exist -> Unsorted
    write_series(d, study="B", series="t2", number=5, description="t2_tse_tra", count=2,
                 accession="nosuch/sub-02/ses-01", patient_id="PAT-002", prefix="x3")
    # study C: a fw:// value in StudyComments; AccessionNumber is a hospital number
    write_series(d, study="C", series="bold", number=7, description="ep2d_bold_rest", count=2,
                 accession="A123456", patient_id="PAT-003", prefix="x4",
                 extra={"StudyComments": f"fw://{GROUP}/demo/sub-03/ses-02"})
    write_series(d, study="C", series="dwi", number=9, description="DTI_64dir", count=1,
                 accession="A123456", patient_id="PAT-003", prefix="x5",
                 extra={"StudyComments": f"fw://{GROUP}/demo/sub-03/ses-02"})
    # junk: not DICOM, truncated, no SeriesInstanceUID
    shutil.copy(PYDICOM_DATA / "README.txt", d / "README.txt")
    shutil.copy(PYDICOM_DATA / "MR_truncated.dcm", d / "cut.dcm")
    ds = pydicom.dcmread(MR_SMALL)
    del ds.SeriesInstanceUID
    ds.save_as(d / "nouid.dcm")
    return d


def options(**kw: Any) -> DicomIngestOptions:
    routing = kw.pop("routing", RoutingRules())
    return DicomIngestOptions(group=GROUP, routing=routing, jobs=kw.pop("jobs", 2), **kw)


def containers(db: Any) -> dict[str, Container]:
    """Every container by its label path (group/project/...)."""
    with db.session() as s:
        rows = {c.id: c for c in s.scalars(select(Container))}
    out: dict[str, Container] = {}
    for c in rows.values():
        parts = []
        node: Container | None = c
        while node is not None:
            parts.append(node.label if node.type != "group" else node.id)
            node = rows.get(node.parent_id) if node.parent_id else None
        out["/".join(reversed(parts))] = c
    return out


def files_of(db: Any, container: Container) -> dict[str, File]:
    with db.session() as s:
        return {f.name: f for f in s.scalars(select(File).where(File.container_id == container.id))}


def counts(db: Any) -> dict[str, int]:
    with db.session() as s:
        return {
            m.__table__.name: int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (Container, File, FileVersion, ChangeLog)
        }


def db_snapshot(db: Any) -> dict[str, list[tuple[str, ...]]]:
    md = MetaData()
    md.reflect(db.engine)
    with db.engine.connect() as conn:
        return {
            name: sorted(tuple(map(repr, r)) for r in conn.execute(select(t)).all())
            for name, t in sorted(md.tables.items())
        }


def store_listing(store: ObjectStore) -> list[str]:
    if not store.root.exists():
        return []
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def read_zip(store: ObjectStore, db: Any, f: File) -> list[Any]:
    with db.session() as s:
        fv = s.scalar(
            select(FileVersion).where(
                FileVersion.file_id == f.id, FileVersion.version == f.current_version
            )
        )
        assert fv is not None
    with store.open(fv.hash) as fh:
        data = fh.read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist()]


def run(db: Any, store: ObjectStore, root: Path, actor: str = "admin", **kw: Any) -> Any:
    dry = kw.pop("dry_run", False)
    progress = kw.pop("progress", None)
    started = kw.pop("started", None)
    with db.session() as s:
        return ingest_dicom(
            s, store, actor, root, options(**kw), dry_run=dry, progress=progress, started=started
        )


# ---------------------------------------------------------------- tests


def test_routing_grouping_unsorted_skips_and_progress(
    hier: Any, store: ObjectStore, mixed: Path
) -> None:
    events: list[ProgressEvent] = []
    report = run(hier, store, mixed, progress=events.append)
    c = containers(hier)
    # study A by AccessionNumber, study C by fw:// in StudyComments
    a = c[f"{GROUP}/demo/sub-01/ses-01"]
    assert a.natural_key == uid("study", "A")
    assert a.info["hpcgear"]["routing"] == {
        "project": "pattern", "subject": "pattern", "session": "pattern"
    }
    assert "unsorted_reason" not in a.info["hpcgear"]
    cc = c[f"{GROUP}/demo/sub-03/ses-02"]
    assert cc.info["hpcgear"]["routing"]["project"] == "fw"
    # mixed folder split by SeriesInstanceUID, not by folder
    acqs = {p.rsplit("/", 1)[1] for p, x in c.items() if x.type == "acquisition"}
    assert acqs == {"1 - localizer", "3 - t1_mprage_sag", "5 - t2_tse_tra",
                    "7 - ep2d_bold_rest", "9 - DTI_64dir"}
    t1 = c[f"{GROUP}/demo/sub-01/ses-01/3 - t1_mprage_sag"]
    assert t1.natural_key == uid("series", "A", "t1")
    f = files_of(hier, t1)["3 - t1_mprage_sag.dicom.zip"]
    assert f.type == "dicom" and f.modality == "MR"
    assert f.classification == {"Intent": ["Structural"], "Measurement": ["T1"],
                                "Features": ["MPRAGE", "3D", "Derived"]}
    assert f.info["hpcgear"]["classifier_version"] == CLASSIFIER_VERSION
    assert f.info["hpcgear"]["instances"] == 3
    header = f.info["header"]["dicom"]
    assert header["SeriesDescription"] == "t1_mprage_sag" and header["EchoTime"] == 240.0
    assert "PatientName" not in header and "PatientID" not in header
    assert t1.info["header"]["dicom"]["Manufacturer"] == "TOSHIBA_MEC"
    members = read_zip(store, hier, f)
    assert [int(m.InstanceNumber) for m in members] == [1, 2, 3]
    # study B: unknown project -> Unsorted, subject/session from the pattern, reason kept
    b = c[f"{GROUP}/Unsorted/sub-02/ses-01"]
    assert "'nosuch'" in b.info["hpcgear"]["unsorted_reason"]
    assert "does not exist" in b.info["hpcgear"]["unsorted_reason"]
    # junk reported with reason codes and skipped
    assert {(s.path, s.reason) for s in report.skipped} == {
        ("README.txt", "not_dicom"), ("cut.dcm", "unreadable"), ("nouid.dcm", "missing_uid")
    }
    sm = report.summary()
    assert sm["new"] == 5 and sm["skipped"] == 3 and sm["unsorted_sessions"] == 1
    assert any("created project imaging/Unsorted" in n for n in report.notes)
    # progress: every file read, then every instance stored
    scan = [e for e in events if e.phase == "scan"]
    stored = [e for e in events if e.phase == "store"]
    assert [e.done for e in scan] == list(range(1, 14)) and {e.total for e in scan} == {13}
    assert [e.done for e in stored] == sorted(e.done for e in stored)
    assert stored[-1].done == stored[-1].total == 10


def test_rerun_is_a_no_op_interrupted_run_resumes_changes_version(
    hier: Any, store: ObjectStore, mixed: Path
) -> None:
    def stop_while_reading(ev: ProgressEvent) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(hier, store, mixed, progress=stop_while_reading)
    assert counts(hier)["file_versions"] == 0 and store_listing(store) == []
    calls = {"n": 0}

    def stop_after_first_series(ev: ProgressEvent) -> None:
        if ev.phase == "store":
            calls["n"] += 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(hier, store, mixed, progress=stop_after_first_series)
    assert calls["n"] == 1
    assert counts(hier)["file_versions"] == 1  # the first series was committed
    first = run(hier, store, mixed)
    assert sorted(f.status for f in first.files) == ["new"] * 4 + ["unchanged"]
    before, objects = counts(hier), store_listing(store)
    again = run(hier, store, mixed, jobs=1)
    assert [f.status for f in again.files] == ["unchanged"] * 5
    assert all(s.status == "existing" for s in again.sessions)
    assert counts(hier) == before  # no containers, versions or change-log rows
    assert store_listing(store) == objects
    first_hashes = {(f.container, f.name): f.hash for f in first.files}
    assert {(f.container, f.name): f.hash for f in again.files} == first_hashes
    # a late instance changes the series: a new version of the same file
    write_series(mixed, study="B", series="t2", number=5, description="t2_tse_tra", count=3,
                 accession="nosuch/sub-02/ses-01", patient_id="PAT-002", prefix="x3")
    changed = run(hier, store, mixed)
    assert sorted((f.status, f.version, f.members) for f in changed.files) == [
        ("new_version", 2, 3)] + [("unchanged", 1, n) for n in (1, 2, 2, 3)]


def test_routing_options_custom_field_and_fallback_labels(
    hier: Any, store: ObjectStore, tmp_path: Path
) -> None:
    d = tmp_path / "in"
    write_series(d, study="P", series="s", number=4, description="t2_flair_tra", count=1,
                 accession="elsewhere/x/y")
    report = run(hier, store, d, routing=RoutingRules(project="demo", subject="sub-09"))
    assert report.sessions[0].path == f"{GROUP}/demo/sub-09/y"
    assert report.sessions[0].routing == {"project": "option", "subject": "option",
                                          "session": "pattern"}
    with pytest.raises(NotFoundError, match="'missing' does not exist"):
        run(hier, store, d, routing=RoutingRules(project="missing"))
    # a custom field + pattern naming only the project: PatientID and StudyDate_StudyTime
    e = tmp_path / "in2"
    write_series(e, study="F", series="s", number=1, description="T1w", count=1,
                 patient_id="PAT-777", extra={"StudyComments": "proj=DEMO"})
    rules = RoutingRules(field="StudyComments", pattern=r"^proj=(?P<project>\w+)$")
    report = run(hier, store, e, routing=rules)
    # "DEMO" matches project demo case-insensitively (it is the only candidate)
    assert report.sessions[0].path == f"{GROUP}/demo/PAT-777/20200315_101500"
    assert report.sessions[0].unsorted_reason is None
    # a session made by a plain upload is adopted; a second study forced onto the
    # same label gets "-2", and the dry run predicts exactly that
    with hier.session() as sess:
        note = tmp_path / "notes.txt"
        note.write_text("scan notes")
        upload_files(sess, store, "admin", f"{GROUP}/demo/sub-x/visit", [note])
    g = tmp_path / "in3"
    for study in ("G1", "G2"):
        write_series(g, study=study, series="s", number=1, description="T1w", count=1,
                     prefix=study)
    rules = RoutingRules(project="demo", subject="sub-x", session="visit")
    planned = run(hier, store, g, routing=rules, dry_run=True)
    real = run(hier, store, g, routing=rules)
    expected = [f"{GROUP}/demo/sub-x/visit", f"{GROUP}/demo/sub-x/visit-2"]
    assert [x.path for x in planned.sessions] == [x.path for x in real.sessions] == expected
    assert [x.status for x in real.sessions] == ["existing", "new"]
    c = containers(hier)
    assert c[expected[0]].natural_key == uid("study", "G1")
    assert "notes.txt" in files_of(hier, c[expected[0]])
    # a SeriesInstanceUID reused by another study is reported, never merged
    h = tmp_path / "in4"
    shared = {"SeriesInstanceUID": uid("series", "shared")}
    write_series(h, study="H1", series="a", number=1, description="T1w", count=1,
                 accession="demo/sub-h/one", extra=shared, prefix="h1")
    write_series(h, study="H2", series="b", number=1, description="T1w", count=1,
                 accession="demo/sub-h/two", extra=shared, prefix="h2")
    report = run(hier, store, h)
    assert [(x.path, x.reason) for x in report.skipped] == [("h2-000.dcm", "uid_conflict")]
    assert [f.status for f in report.files] == ["new"]
    assert [x.path for x in report.sessions] == [f"{GROUP}/demo/sub-h/one"]
    assert f"{GROUP}/demo/sub-h/two" not in containers(hier)  # rolled back


def test_dry_run_and_refusals_change_nothing(
    hier: Any, store: ObjectStore, mixed: Path
) -> None:
    snap = db_snapshot(hier)
    with pytest.raises(PermissionDeniedError, match="read-write"):
        run(hier, store, mixed, actor="ro")
    # rw may write demo but may not create Unsorted (needs group admin)
    with pytest.raises(PermissionDeniedError, match="Unsorted"):
        run(hier, store, mixed, actor="rw")
    planned = run(hier, store, mixed, dry_run=True)
    assert db_snapshot(hier) == snap and store_listing(store) == []
    assert {f.status for f in planned.files} == {"planned"}
    assert any("would create project imaging/Unsorted" in n for n in planned.notes)
    assert {s.reason for s in planned.skipped} == {"not_dicom", "unreadable", "missing_uid"}
    # a group admin creates Unsorted on first use; the plan was what happened
    real = run(hier, store, mixed, actor="ga")
    assert real.summary()["new"] == 5
    assert sorted(f"{f.container}/{f.name}" for f in planned.files) == sorted(
        f"{f.container}/{f.name}" for f in real.files
    )
    # once it exists, read-write on the group's projects is enough
    with hier.session() as s:
        grant_role(s, "admin", "rw", f"{GROUP}/Unsorted", "read-write")
    assert run(hier, store, mixed, actor="rw").summary()["unchanged"] == 5
    again = run(hier, store, mixed, dry_run=True)
    assert {s.status for s in again.sessions} == {"existing"}


def test_real_multi_study_folders_and_reclassify(
    hier: Any, store: ObjectStore, tmp_path: Path
) -> None:
    """pydicom's 98892003 tree: folders MR1/MR2/MR700 mix three studies."""
    d = tmp_path / "in"
    shutil.copytree(DICOMDIR_STUDY, d)
    report = run(hier, store, d)
    assert len(report.sessions) == 3 and len(report.files) == 7
    assert {s.unsorted_reason for s in report.sessions} == {
        "AccessionNumber does not match the routing pattern"
    }
    angio = next(f for f in report.files if f.name.startswith("700 - "))
    assert angio.name == "700 - ANGIO Projected from C.dicom.zip" and angio.members == 7
    assert angio.classification["Features"][:2] == ["Angio", "MIP"]
    pilot = [f for f in report.files if f.name == "2 - T_S_C RF FAST PILOT.dicom.zip"]
    assert sorted(f.members or 0 for f in pilot) == [3, 3]
    assert {f.classification["Intent"][0] for f in pilot} == {"Localizer"}
    # reclassify: files from an older classifier version get the current result
    with hier.session() as s:
        row = s.scalar(select(File).where(File.name == angio.name))
        assert row is not None
        row.classification = {"Intent": ["Structural"]}
        row.info = {**row.info, "hpcgear": {**row.info["hpcgear"], "classifier_version": "0.1"}}
        row_id = row.id
    with hier.session() as s:
        outcomes = reclassify(s, "admin", f"{GROUP}/Unsorted")
        assert [(o.old_version, o.changed) for o in outcomes] == [("0.1", True)]
    with hier.session() as s:
        f = s.get(File, row_id)
        assert f is not None and f.classification == angio.classification
        assert f.info["hpcgear"]["classifier_version"] == CLASSIFIER_VERSION
        assert reclassify(s, "admin", f"{GROUP}/Unsorted") == []  # up to date
        assert len(reclassify(s, "admin", f"{GROUP}/Unsorted", force=True, dry_run=True)) == 7
        with pytest.raises(PermissionDeniedError):
            reclassify(s, "ro", f"{GROUP}/Unsorted")


DEID_PROFILE = """\
name: site-deid
description: test profile
deid-log: /nonexistent/deid/site-deid.csv
dicom:
  date-increment: -10
  patient-age-from-birthdate: true
  patient-age-units: Y
  remove-private-tags: true
  salt: pepper
  fields:
    - name: PatientName
      remove: true
    - name: PatientBirthDate
      remove: true
    - name: PatientID
      hash: true
    - name: InstitutionName
      replace-with: ANONYMIZED
    - name: StudyDate
      increment-date: true
    - name: AccessionNumber
      remove: true
    - name: StudyInstanceUID
      hashuid: true
    - name: SeriesInstanceUID
      hashuid: true
    - name: SOPInstanceUID
      hashuid: true
"""


def test_deid_profiles_applied_before_storing(
    hier: Any, store: ObjectStore, tmp_path: Path
) -> None:
    from hpcgear.db.models import DeidMapEntry
    from hpcgear.ingest.deid import with_baseline

    d = tmp_path / "in"
    write_series(d, study="D", series="s", number=2, description="t1_mprage", count=2,
                 accession="demo/sub-01/ses-01", patient_id="MRN-424242",
                 patient_name="Secret^Person",
                 extra={"InstitutionName": "General Hospital",
                        "OtherPatientIDs": "OTHER-77", "ReferringPhysicianName": "Dr^Who",
                        "PatientAddress": "1 Main St"})
    for p in d.iterdir():  # a private tag to strip
        ds = pydicom.dcmread(p)
        block = ds.private_block(0x0009, "ACME", create=True)
        block.add_new(0x01, "LO", "private secret")
        ds.save_as(p)
    profile_path = tmp_path / "deid.yaml"
    profile_path.write_text(DEID_PROFILE)
    profile = with_baseline(load_profile(profile_path))  # as --deid-profile does
    assert profile.reid_map
    report = run(hier, store, d, profile=profile)
    assert report.files[0].status == "new"
    assert not Path("/nonexistent/deid").exists()  # the map goes to the DB, not that path
    # routed by AccessionNumber although the profile removes it (read before de-id)
    sess = containers(hier)[f"{GROUP}/demo/sub-01/ses-01"]
    # PS3.15 removes SeriesDescription (free text), so the label falls back to the modality
    acq = containers(hier)[f"{GROUP}/demo/sub-01/ses-01/2 - MR"]
    f = files_of(hier, acq)["2 - MR.dicom.zip"]
    members = read_zip(store, hier, f)
    assert len(members) == 2
    originals = {uid("sop", "D", "s", i) for i in range(2)}
    for m in members:
        for gone in ("PatientName", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
                     "PatientAddress"):
            assert gone not in m or not m.get(gone), gone
        assert m.PatientID != "MRN-424242" and len(m.PatientID) == 16
        assert m.InstitutionName == "ANONYMIZED"
        assert m.ReferringPhysicianName == ""  # PS3.15 Z (the profile does not name it)
        assert m.StudyDate == "20200305"  # shifted by -10 days
        assert m.PatientAge == "040Y"
        assert m.PatientIdentityRemoved == "YES"
        assert m.StudyInstanceUID == sess.natural_key != uid("study", "D")
        assert m.SOPInstanceUID not in originals
        assert m.file_meta.MediaStorageSOPInstanceUID == m.SOPInstanceUID
        assert not any(e.tag.is_private for e in m.iterall())
    assert acq.natural_key == members[0].SeriesInstanceUID
    log = f.info["hpcgear"]["deid"]
    assert log["profile"] == "site-deid" and log["profile_sha256"] == profile.sha256
    assert {"AccessionNumber", "PatientBirthDate", "PatientName"} <= set(log["removed"])
    assert {"PatientID", "InstitutionName", "StudyDate", "SOPInstanceUID"} <= set(log["changed"])
    assert log["private_tags_removed"] == 4 and log["reid_map"] is True
    # no original identifier anywhere in what the file/container rows hold
    stored = json.dumps([f.info, acq.info, sess.info])
    for secret in ("MRN-424242", "Secret", "General Hospital", "20200315", "pepper", "OTHER-77"):
        assert secret not in stored
    # ... but the re-identification map (asked for by deid-log) has them
    with hier.session() as s:
        rows = s.query(DeidMapEntry).all()
        assert len(rows) == 1 and len(rows[0].entries) == 2
        assert rows[0].entries[0]["PatientID"][0] == "MRN-424242"
    # de-identification is deterministic, so a rerun is a no-op too
    assert [x.status for x in run(hier, store, d, profile=profile).files] == ["unchanged"]
    # the same data again without de-identification: its UIDs are the originals, so it
    # is another study to hpcgear; the de-identified file is never given a new version
    again = run(hier, store, d)
    assert [x.status for x in again.files] == ["new"]
    assert again.files[0].container != f"{GROUP}/demo/sub-01/ses-01/2 - MR"

    # --de-identify alone: the subject label is opaque, never the MRN nor a hash of it
    e = tmp_path / "in2"
    write_series(e, study="E", series="s", number=1, description="T1w", count=1,
                 patient_id="MRN-1", accession="ACC-123",
                 extra={"StudyComments": f"fw://{GROUP}/demo", "OtherPatientIDs": "OTHER-9",
                        "PatientAddress": "2 High St", "InstitutionName": "St Elsewhere",
                        "ReferringPhysicianName": "Dr^House"})
    report = run(hier, store, e, profile=default_profile())
    assert report.sessions[0].path.startswith(f"{GROUP}/demo/anon-0001/")
    assert "MRN" not in report.sessions[0].path
    f = next(iter(files_of(hier, containers(hier)[f"{report.sessions[0].path}/1 - MR"]).values()))
    m = read_zip(store, hier, f)[0]
    assert m.PatientName == "" and m.PatientID == "" and m.get("PatientBirthDate", "") == ""
    # the five the issue found after --de-identify
    assert "OtherPatientIDs" not in m and "PatientAddress" not in m
    assert m.InstitutionName == "ANONYMIZED" and m.ReferringPhysicianName == ""
    assert m.AccessionNumber == ""


def test_stored_header_and_version_shapes() -> None:
    """Ingest and the dicom-header gear keep the header at info.header.dicom."""
    from hpcgear.ingest.service import stored_classifier_version, stored_header

    gear = {"header": {"dicom": {"SeriesDescription": "T1w"}},
            "classifier": {"name": "hpcgear.ingest.classifier", "version": "0.9.0"}}
    ingest = {"header": {"dicom": {"SeriesDescription": "T2w"}},
              "hpcgear": {"classifier_version": "1.0.0"}}
    legacy = {"SeriesDescription": "FLAIR"}
    assert stored_header(gear) == {"SeriesDescription": "T1w"}
    assert stored_header(legacy) == legacy
    assert stored_classifier_version(gear) == "0.9.0"
    assert stored_classifier_version(ingest) == "1.0.0"
    assert stored_classifier_version(legacy) is None


def test_no_identifying_version_over_a_deidentified_file(
    hier: Any, store: ObjectStore, tmp_path: Path
) -> None:
    """A profile that keeps the UIDs: the same series again without de-identification
    would be a new version of the de-identified file; it is skipped instead."""
    from hpcgear.ingest.deid import parse_profile_text, with_baseline

    keep = with_baseline(parse_profile_text(
        "name: keep-uids\ndicom:\n  fields:\n"
        "    - {name: StudyInstanceUID, keep: true}\n"
        "    - {name: SeriesInstanceUID, keep: true}\n"
        "    - {name: SOPInstanceUID, keep: true}\n"
        "    - {name: SeriesDescription, keep: true}\n", "p"))
    d = tmp_path / "in"
    write_series(d, study="K", series="s", number=1, description="T1w", count=1,
                 accession="demo/sub-01/ses-01", patient_name="Secret^Person")
    assert [f.status for f in run(hier, store, d, profile=keep).files] == ["new"]
    report = run(hier, store, d)
    assert report.files == []
    assert [s.reason for s in report.skipped] == ["would_reidentify"]
    assert "stored de-identified" in report.skipped[0].detail


def test_header_scan_in_processes_matches_one_process(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--jobs N reads headers in N processes (no GIL); the result is the sequential one."""
    from hpcgear.ingest import dicom

    fields = ("AccessionNumber", "StudyComments")
    profile = default_profile()
    one = dicom.scan_dicom(mixed, route_fields=fields, profile=profile, jobs=1)
    monkeypatch.setattr(dicom, "PROCESS_MIN_FILES", 1)
    with dicom.start_scan(mixed, route_fields=fields, profile=profile, jobs=2) as started:
        assert started.workers is not None  # the reads run in worker processes
        many = started.collect()
    assert started.workers is None
    assert many == one
    assert len(one.instances) == 10 and len(one.skipped) == 3


def test_header_scan_in_processes_without_a_profile_matches_one_process(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain reader (no profile) in worker processes gives the sequential result."""
    from hpcgear.ingest import dicom

    fields = ("AccessionNumber", "StudyComments")
    one = dicom.scan_dicom(mixed, route_fields=fields, profile=None, jobs=1)
    monkeypatch.setattr(dicom, "PROCESS_MIN_FILES", 1)
    many = dicom.scan_dicom(mixed, route_fields=fields, profile=None, jobs=2)
    assert many == one
    assert len(one.instances) == 10 and len(one.skipped) == 3


def _mark_pid(folder: str) -> None:
    import os

    Path(folder, str(os.getpid())).touch()


def test_parallel_map_runs_the_initializer_here_and_in_each_worker(tmp_path: Path) -> None:
    import functools
    import os

    from hpcgear.ingest.dicom import parallel_map

    init = functools.partial(_mark_pid, str(tmp_path))
    with parallel_map(abs, list(range(-50, 50)), 2, "t", processes=True, initializer=init) as r:
        assert list(r) == [abs(i) for i in range(-50, 50)]
    pids = {int(p.name) for p in tmp_path.iterdir()}
    assert os.getpid() in pids
    assert len(pids - {os.getpid()}) >= 1  # the workers ran it too


class _RecordingExecutor:
    """Hands work to a real executor and records the name of each function."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.calls: list[str] = []

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(fn.__name__)
        return self.pool.submit(fn, *args, **kwargs)


def test_a_started_scan_is_used_and_its_workers_build_the_same_zips(
    hier: Any, store: ObjectStore, mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI starts the scan before the database layer is imported; the ingest
    takes its result and builds the zips in its worker processes: the same
    files, metadata and skips as an ingest in one process."""
    from hpcgear.db.session import Database, create_db_engine, upgrade
    from hpcgear.ingest import dicom

    engine = create_db_engine(f"sqlite:///{tmp_path / 'reference.db'}", create_dirs=True)
    upgrade(engine)
    reference_db = make_hier(Database(engine))
    reference_store = ObjectStore(tmp_path / "reference-storage")
    reference = run(reference_db, reference_store, mixed, jobs=1)
    reference_db.dispose()

    monkeypatch.setattr(dicom, "PROCESS_MIN_FILES", 1)
    opts = options(jobs=2)
    fields = opts.routing.header_fields
    events: list[ProgressEvent] = []
    with dicom.start_scan(mixed, route_fields=fields, profile=None, jobs=2) as started:
        assert started.workers is not None
        recording = _RecordingExecutor(started.workers)
        monkeypatch.setattr(started, "workers", recording)
        with hier.session() as s:
            report = ingest_dicom(
                s, store, "admin", mixed, opts, progress=events.append, started=started
            )
    assert recording.calls == ["build_series_zip"] * 5
    assert started.workers is None  # closed with the block

    def outcome(f: Any) -> tuple[Any, ...]:
        return (f.container, f.name, f.status, f.hash, f.size, f.members, f.classification)

    assert sorted(map(outcome, report.files)) == sorted(map(outcome, reference.files))
    assert report.skipped == reference.skipped
    assert report.sessions == reference.sessions
    assert store_listing(store) == store_listing(reference_store)
    scans = [e for e in events if e.phase == "scan"]
    assert scans[-1] == ProgressEvent("scan", 13, 13)


def test_a_started_scan_defers_its_errors_and_is_dropped_when_it_reads_something_else(
    hier: Any, store: ObjectStore, mixed: Path, tmp_path: Path
) -> None:
    from hpcgear.errors import IngestError
    from hpcgear.ingest import dicom

    fields = options().routing.header_fields
    missing = dicom.start_scan(tmp_path / "nosuch", route_fields=fields, jobs=2)
    with pytest.raises(IngestError, match="is not a directory"):
        missing.collect()
    elsewhere = tmp_path / "elsewhere"
    write_series(elsewhere, study="Z", series="z", number=1, description="other", count=1,
                 accession="demo/sub-09/ses-01", prefix="z")  # fmt: skip
    with dicom.start_scan(elsewhere, route_fields=fields, jobs=2) as other:
        report = run(hier, store, mixed, started=other)
        assert other.workers is None  # stopped: it scanned another folder
    assert sorted(f.name for f in report.files) == sorted(
        ["1 - localizer.dicom.zip", "3 - t1_mprage_sag.dicom.zip", "5 - t2_tse_tra.dicom.zip",
         "7 - ep2d_bold_rest.dicom.zip", "9 - DTI_64dir.dicom.zip"]
    )  # fmt: skip
    assert not any("sub-09" in f.container for f in report.files)


def test_further_series_of_a_study_go_to_its_session_without_a_new_lookup(
    hier: Any, store: ObjectStore, mixed: Path
) -> None:
    """The session a series was committed to is reused for the study's next
    series (a lookup by natural key per study, not per series); the report and
    the hierarchy are those of per-series lookups."""
    from sqlalchemy import event

    lookups: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        select_by_key = statement.lstrip().startswith("SELECT") and "natural_key" in statement
        if select_by_key and "'session'" in repr(params):
            lookups.append(statement)

    event.listen(hier.engine, "before_cursor_execute", record)
    try:
        report = run(hier, store, mixed)
        # three studies, five series: a new session is looked up twice (by the
        # ingest, then by _keyed_child before it creates it), once per study
        assert len(lookups) == 3 * 2
        lookups.clear()
        again = run(hier, store, mixed)
        assert len(lookups) == 3  # found, once per study
    finally:
        event.remove(hier.engine, "before_cursor_execute", record)
    assert sorted(f.status for f in report.files) == ["new"] * 5
    assert [f.status for f in again.files] == ["unchanged"] * 5
    by_container = {(f.container, f.name) for f in report.files}
    assert by_container == {(f.container, f.name) for f in again.files}
    c = containers(hier)
    for container, _name in by_container:
        acq = c[container]
        assert acq.type == "acquisition"
        assert c[container.rsplit("/", 1)[0]].id == acq.parent_id == acq.session_id
    assert sorted(s.status for s in report.sessions) == ["new"] * 3
    assert sorted(s.status for s in again.sessions) == ["existing"] * 3


def _sigint_handler() -> Any:
    import signal

    return signal.getsignal(signal.SIGINT)


def test_worker_processes_leave_ctrl_c_to_the_process_that_owns_them() -> None:
    """Ctrl-C reaches the whole process group; the workers ignore it (no
    traceback from each) and the owning process stops the pool."""
    import signal

    from hpcgear.procs import process_pool

    pool = process_pool(1)
    try:
        assert pool.submit(_sigint_handler).result() == signal.SIG_IGN
    finally:
        pool.shutdown()
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # not here


def test_list_files_order_and_links(tmp_path: Path) -> None:
    """Files of a folder (sorted) before its subfolders (sorted), as os.walk
    gives them; symlinked files are listed, symlinked folders and broken links
    are not (the listing reads entry types, it does not stat each file)."""
    from hpcgear.ingest.dicom import list_files

    root = tmp_path / "in"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    for rel in ("z.dcm", "c.dcm", "b/2.dcm", "b/1.dcm", "b/deep/x.dcm", "a/y.dcm"):
        (root / rel).write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.dcm").write_bytes(b"x")
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    (root / "linked.dcm").symlink_to(root / "c.dcm")
    (root / "broken.dcm").symlink_to(tmp_path / "missing")
    rels = [str(p.relative_to(root)) for p in list_files(root)]
    assert rels == ["c.dcm", "linked.dcm", "z.dcm", "a/y.dcm", "b/1.dcm", "b/2.dcm", "b/deep/x.dcm"]
    expected = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        expected += [
            str((Path(dirpath) / n).relative_to(root))
            for n in sorted(filenames)
            if (Path(dirpath) / n).is_file()
        ]
    assert rels == expected


def test_a_changed_file_stops_its_series_zip(tmp_path: Path) -> None:
    """The zip reads each file once and checks it still has the scanned size."""
    from hpcgear.ingest.dicom import build_series_zip, scan_dicom

    src = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(src.read_bytes())
    scan = scan_dicom(folder, route_fields=("AccessionNumber",), jobs=1)
    (inst,) = scan.instances
    built = build_series_zip([inst], tmp_path / "one.zip", "s")
    with zipfile.ZipFile(built.path) as zf:
        assert zf.read(zf.namelist()[0]) == src.read_bytes()
    (folder / "a.dcm").write_bytes(src.read_bytes() + b"more")
    with pytest.raises(IngestError, match="changed while it was being ingested"):
        build_series_zip([inst], tmp_path / "two.zip", "s")


def _row_shapes(db: Any) -> dict[str, list[Any]]:
    """The rows of an ingest, ids and times replaced by container paths (so two
    databases compare); checks every container's ancestor ids on the way."""
    with db.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(Container.__table__))}
        file_rows = {r.id: r for r in conn.execute(select(File.__table__))}
        versions = conn.execute(select(FileVersion.__table__)).all()
        changes = conn.execute(select(ChangeLog.__table__)).all()

    def path(cid: str | None) -> str | None:
        parts = []
        node = rows.get(cid) if cid else None
        while node is not None:
            parts.append(node.id if node.type == "group" else node.label)
            node = rows.get(node.parent_id) if node.parent_id else None
        return "/".join(reversed(parts)) or None

    for r in rows.values():
        chain, node = {}, r
        while node is not None:
            chain[node.type] = node.id
            node = rows.get(node.parent_id) if node.parent_id else None
        for level in ("group", "project", "subject", "session", "acquisition"):
            assert getattr(r, f"{level}_id") == chain.get(level), (path(r.id), level)
    return {
        "containers": sorted(
            repr((path(r.id), r.type, r.label, r.label_key, r.natural_key, r.info, r.tags,
                  r.created_by))
            for r in rows.values()
        ),
        "files": sorted(
            repr((path(f.container_id), f.name, f.current_version, f.type, f.modality,
                  f.classification, f.tags, f.info, path(f.project_id)))
            for f in file_rows.values()
        ),
        "versions": sorted(
            repr((path(file_rows[v.file_id].container_id), file_rows[v.file_id].name, v.version,
                  v.hash, v.size, v.origin_type, v.origin_id))
            for v in versions
        ),
        "changes": sorted(
            repr((c.kind, path(c.container_id),
                  file_rows[c.file_id].name if c.file_id else None, c.file_version, c.actor))
            for c in changes
        ),
    }  # fmt: skip


def test_a_core_connection_and_an_orm_session_write_the_same_rows(
    tmp_path: Path, mixed: Path
) -> None:
    """The CLI ingests on a Core connection, the services on an ORM session: the
    same containers (ancestor ids included), files, versions and change log,
    through an adopted session, a rerun and a new version."""
    from hpcgear.db.session import Database, create_db_engine, upgrade

    shapes = []
    for how in ("session", "connection"):
        folder = tmp_path / f"in-{how}"
        shutil.copytree(mixed, folder)
        engine = create_db_engine(f"sqlite:///{tmp_path / how}.db", create_dirs=True)
        upgrade(engine)
        db = Database(engine)
        try:
            make_hier(db)
            store = ObjectStore(tmp_path / f"storage-{how}")
            note = tmp_path / "notes.txt"
            note.write_text("scan notes")
            with db.session() as s:  # a plain upload: the ingest adopts its session
                upload_files(s, store, "admin", f"{GROUP}/demo/sub-01/ses-01", [note])
            for late in (False, False, True):
                if late:  # a late instance: a new version of the series
                    write_series(folder, study="A", series="t1", number=3, count=4,
                                 description="t1_mprage_sag", accession="demo/sub-01/ses-01",
                                 prefix="late")  # fmt: skip
                if how == "session":
                    run(db, store, folder)
                else:
                    with db.engine.connect() as conn:
                        ingest_dicom(conn, store, "admin", folder, options())
                        conn.commit()
            shapes.append(_row_shapes(db))
        finally:
            db.dispose()
    assert shapes[0] == shapes[1]
    assert any("container.meta" in c for c in shapes[0]["changes"])  # the adopted session
    assert any("', 2, 'sha256:" in v for v in shapes[0]["versions"])  # the new version


def _zipfile_bytes(members: list[tuple[str, bytes, bool]]) -> bytes:
    """What build_series_zip's zipfile path writes for these members."""
    from hpcgear.ingest.dicom import ZIP_EPOCH, ZIP_LEVEL, ZIP_MODE

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as zf:
        for name, data, deflate in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = ZIP_MODE
            method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            info.compress_type = method
            zf.writestr(info, data, compress_type=method, compresslevel=ZIP_LEVEL)
    return buf.getvalue()


def test_the_plain_zip_writer_writes_zipfiles_bytes() -> None:
    """With zlib as its deflater the writer's bytes are zipfile's; with its own
    (ISA-L's) every member reads back the same through zipfile."""
    from hpcgear.ingest.dicom import PlainZipWriter, zlib_raw_deflate

    mr = MR_SMALL.read_bytes()
    members = [
        ("1 - T1/1.2.3.dcm", mr, True),
        ("1 - T1/1.2.4.dcm", mr[::-1], False),
        ("1 - T1/empty.dcm", b"", True),
        ("1 - T1/empty-stored.dcm", b"", False),
        ("1 - Tête/1.2.5.dcm", mr[:1000], True),  # not ASCII: the UTF-8 flag
        ("1 - T1/1.2\\3.4.dcm", mr[:10], True),  # a two-valued UID
        ("1 - T1/cut\0here.dcm", mr[:10], True),  # zipfile cuts names at NUL
    ]

    def written(deflate: Any) -> bytes:
        buf = io.BytesIO()
        writer = PlainZipWriter(buf, deflate)
        for name, data, compress in members:
            writer.add(name, data, deflate=compress)
        writer.close()
        return buf.getvalue()

    assert written(zlib_raw_deflate) == _zipfile_bytes(members)
    own = written(None)
    with zipfile.ZipFile(io.BytesIO(own)) as zf:
        assert zf.testzip() is None
        assert zf.read("1 - T1/1.2.3.dcm") == mr
        assert [(i.filename, i.compress_type, zf.read(i)) for i in zf.infolist()] == [
            (name.split("\0")[0], zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED, data)
            for name, data, compress in members
        ]
    assert PlainZipWriter.fits([10_000] * 100)
    assert not PlainZipWriter.fits([2**31 - 2**20])  # zipfile would write ZIP64
    assert not PlainZipWriter.fits([1] * 65_535)


def test_series_zips_are_zipfiles_bytes(
    tmp_path: Path, mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_series_zip writes the same bytes with or without PlainZipWriter (given
    zlib as its deflater), and the same members and members_sha256 with its own."""
    from hpcgear.ingest import dicom

    scan = dicom.scan_dicom(mixed, route_fields=("AccessionNumber",), jobs=1)
    grouped = [m for series in dicom.group_instances(scan.instances).values()
               for m in series.values()]  # fmt: skip
    own = [dicom.build_series_zip(m, tmp_path / f"o{i}.zip", f"s{i}")
           for i, m in enumerate(grouped)]  # fmt: skip
    monkeypatch.setattr(dicom, "raw_deflate", dicom.zlib_raw_deflate)
    plain = [dicom.build_series_zip(m, tmp_path / f"p{i}.zip", f"s{i}")
             for i, m in enumerate(grouped)]  # fmt: skip
    monkeypatch.setattr(dicom.PlainZipWriter, "fits", staticmethod(lambda sizes: False))
    classic = [dicom.build_series_zip(m, tmp_path / f"z{i}.zip", f"s{i}")
               for i, m in enumerate(grouped)]  # fmt: skip
    assert len(plain) == 5
    for a, b, o in zip(plain, classic, own, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()
        assert a.members_sha256 == b.members_sha256 == o.members_sha256
        with zipfile.ZipFile(o.path) as mine, zipfile.ZipFile(b.path) as theirs:
            assert mine.testzip() is None
            assert [(i.filename, mine.read(i)) for i in mine.infolist()] == [
                (i.filename, theirs.read(i)) for i in theirs.infolist()
            ]


def test_a_series_raced_by_another_writer_is_retried_into_its_acquisition(
    hier: Any, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another ingest commits the same acquisition between this one's lookup and
    its insert: the IntegrityError rolls the series back, the retry finds that
    acquisition by its natural key and stores the series there (on the CLI's
    Core connection)."""
    from hpcgear.ingest import dicom_ingest

    folder = tmp_path / "in"
    write_series(folder, study="S", series="a", number=1, description="T1", count=2,
                 accession="demo/sub-01/ses-01", prefix="a")  # fmt: skip
    run(hier, store, folder)
    write_series(folder, study="S", series="b", number=2, description="T2", count=2,
                 accession="demo/sub-01/ses-01", prefix="b")  # fmt: skip
    real = dicom_ingest._create_child
    raced: list[str] = []

    def racing(session: Any, parent: Any, ctype: str, label: str, actor: str,
               **kw: Any) -> Any:  # fmt: skip
        if ctype == "acquisition" and not raced:
            raced.append(label)
            with hier.engine.connect() as other:  # the other writer wins
                real(other, parent, ctype, label, "ga", **kw)
                other.commit()
        return real(session, parent, ctype, label, actor, **kw)

    monkeypatch.setattr(dicom_ingest, "_create_child", racing)
    with hier.engine.connect() as conn:
        report = ingest_dicom(conn, store, "admin", folder, options())
        conn.commit()
    assert raced == ["2 - T2"]
    assert sorted((f.container, f.name, f.status) for f in report.files) == [
        (f"{GROUP}/demo/sub-01/ses-01/1 - T1", "1 - T1.dicom.zip", "unchanged"),
        (f"{GROUP}/demo/sub-01/ses-01/2 - T2", "2 - T2.dicom.zip", "new"),
    ]
    assert report.skipped == []
    tree = containers(hier)
    acq = tree[f"{GROUP}/demo/sub-01/ses-01/2 - T2"]
    assert acq.created_by == "ga"  # the other writer's acquisition, not a second one
    assert list(files_of(hier, acq)) == ["2 - T2.dicom.zip"]
    assert sum(1 for path in tree if path.endswith("T2")) == 1
