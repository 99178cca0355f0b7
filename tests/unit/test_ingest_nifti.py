"""NIfTI ingest (nibabel's shipped test images) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel
import pytest

from hpcgear.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from hpcgear.ingest.nifti import parse_bids_name
from hpcgear.ingest.service import NiftiIngestOptions, ingest_nifti
from hpcgear.storage.objects import ObjectStore
from tests.unit.test_ingest_dicom import (  # shared fixtures and helpers
    GROUP,
    containers,
    counts,
    db_snapshot,
    files_of,
    hier,
    store,
    store_listing,
)

__all__ = ["hier", "store"]  # fixtures re-exported for pytest

NIB_DATA = Path(nibabel.__file__).parent / "tests" / "data"


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    anat = root / "sub-01" / "ses-01" / "anat"
    func = root / "sub-01" / "ses-01" / "func"
    dwi = root / "sub-02" / "dwi"
    for d in (anat, func, dwi):
        d.mkdir(parents=True)
    shutil.copy(NIB_DATA / "anatomical.nii", anat / "sub-01_ses-01_T1w.nii")
    (anat / "sub-01_ses-01_T1w.json").write_text(
        json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.003, "Manufacturer": "Siemens"})
    )
    shutil.copy(NIB_DATA / "functional.nii", func / "sub-01_ses-01_task-rest_run-1_bold.nii")
    (func / "sub-01_ses-01_task-rest_run-1_bold.json").write_text(
        json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"})
    )
    shutil.copy(NIB_DATA / "example4d.nii.gz", dwi / "sub-02_dwi.nii.gz")
    (dwi / "sub-02_dwi.bval").write_text("0 1000\n")
    (dwi / "sub-02_dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    # junk: top-level BIDS files, a truncated image, a sidecar without an image
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    (root / "README").write_text("hello")
    data = (NIB_DATA / "anatomical.nii").read_bytes()
    (anat / "sub-01_ses-01_T2w.nii").write_bytes(data[: len(data) // 2])
    gz = (NIB_DATA / "example4d.nii.gz").read_bytes()
    (dwi / "sub-02_acq-cut_dwi.nii.gz").write_bytes(gz[: len(gz) // 2])
    (func / "sub-01_ses-01_task-other_bold.json").write_text("{}")
    return root


def run(db: Any, store: ObjectStore, root: Path, actor: str = "admin", **kw: Any) -> Any:
    dry = kw.pop("dry_run", False)
    progress = kw.pop("progress", None)
    opts = NiftiIngestOptions(group=GROUP, project=kw.pop("project", "demo"), jobs=2, **kw)
    with db.session() as s:
        return ingest_nifti(s, store, actor, root, opts, dry_run=dry, progress=progress)


def test_bids_placement_sidecars_and_header_facts(
    hier: Any, store: ObjectStore, bids: Path
) -> None:
    snap = db_snapshot(hier)
    planned = run(hier, store, bids, dry_run=True)
    assert {f.status for f in planned.files} == {"planned"} and len(planned.files) == 7
    assert db_snapshot(hier) == snap and store_listing(store) == []
    events: list[Any] = []
    report = run(hier, store, bids, progress=events.append)
    assert sorted(f"{f.container}/{f.name}" for f in report.files) == sorted(
        f"{f.container}/{f.name}" for f in planned.files
    )
    c = containers(hier)
    anat = files_of(hier, c[f"{GROUP}/demo/sub-01/ses-01/anat"])
    assert sorted(anat) == ["sub-01_ses-01_T1w.json", "sub-01_ses-01_T1w.nii"]
    t1 = anat["sub-01_ses-01_T1w.nii"]
    assert t1.type == "nifti" and t1.modality == "MR"
    assert t1.classification == {"Intent": ["Structural"], "Measurement": ["T1"], "Features": []}
    facts = t1.info["nifti"]
    assert facts["dims"] == [33, 41, 25] and facts["voxel_size"] == [2.0, 2.0, 2.0]
    assert facts["orientation"] == "LAS" and facts["qform_code"] == 2
    assert facts["sform_code"] == 2 and facts["datatype"] == "int16"
    assert t1.info["RepetitionTime"] == 2.3  # sidecar keys copied into info
    assert t1.info["BIDS"]["Suffix"] == "T1w" and t1.info["BIDS"]["Folder"] == "anat"
    assert anat["sub-01_ses-01_T1w.json"].type == "JSON"
    bold = files_of(hier, c[f"{GROUP}/demo/sub-01/ses-01/func"])[
        "sub-01_ses-01_task-rest_run-1_bold.nii"
    ]
    assert bold.info["nifti"]["tr"] == 2.0 and bold.info["nifti"]["tr_units"] == "sec"
    assert bold.info["nifti"]["volumes"] == 20
    assert bold.info["BIDS"]["Entities"] == {"task": "rest", "run": "1"}
    assert bold.classification["Intent"] == ["Functional"]
    # no ses- entity: the default session; bval/bvec beside the image
    dwi = files_of(hier, c[f"{GROUP}/demo/sub-02/default/dwi"])
    assert sorted(dwi) == ["sub-02_dwi.bval", "sub-02_dwi.bvec", "sub-02_dwi.nii.gz"]
    assert dwi["sub-02_dwi.bval"].type == "bval"
    assert dwi["sub-02_dwi.nii.gz"].info["nifti"]["tr_seconds"] == 2000.0
    assert {(s.path, s.reason) for s in report.skipped} == {
        ("README", "not_nifti"),
        ("dataset_description.json", "orphan_sidecar"),
        ("sub-01/ses-01/anat/sub-01_ses-01_T2w.nii", "unreadable"),
        ("sub-01/ses-01/func/sub-01_ses-01_task-other_bold.json", "orphan_sidecar"),
        ("sub-02/dwi/sub-02_acq-cut_dwi.nii.gz", "unreadable"),
    }
    assert report.summary()["new"] == 7
    assert events[-1].phase == "store" and events[-1].done == events[-1].total == 7
    # rerun: nothing changes
    before, objects = counts(hier), store_listing(store)
    again = run(hier, store, bids)
    assert {f.status for f in again.files} == {"unchanged"}
    assert counts(hier) == before and store_listing(store) == objects


def test_explicit_subject_session_non_bids_names_and_refusals(
    hier: Any, store: ObjectStore, tmp_path: Path
) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    shutil.copy(NIB_DATA / "anatomical.nii", d / "anatomical.nii")
    snap = db_snapshot(hier)
    with pytest.raises(PermissionDeniedError):
        run(hier, store, d, actor="ro")
    with pytest.raises(NotFoundError, match="'nope' does not exist"):
        run(hier, store, d, project="nope")
    with pytest.raises(InvalidInputError, match="needs --project"):
        run(hier, store, d, project=None)
    skipped = run(hier, store, d)
    assert [(s.path, s.reason) for s in skipped.skipped] == [("anatomical.nii", "no_subject")]
    assert db_snapshot(hier) == snap and store_listing(store) == []
    report = run(hier, store, d, actor="rw", subject="P01", session="baseline")
    assert [f"{f.container}/{f.name}" for f in report.files] == [
        f"{GROUP}/demo/P01/baseline/anatomical/anatomical.nii"
    ]
    assert report.files[0].classification == {} and report.files[0].modality is None
    assert report.sessions[0].status == "new"


def test_bids_name_parsing(tmp_path: Path) -> None:
    b = parse_bids_name(tmp_path / "anat" / "sub-A1_ses-2_acq-mprage_run-02_T1w.nii.gz")
    assert b is not None
    assert (b.subject, b.session, b.suffix, b.datatype) == ("sub-A1", "ses-2", "T1w", "anat")
    assert b.entities == {"acq": "mprage", "run": "02"}
    assert parse_bids_name(tmp_path / "T1w.nii") is None
    assert parse_bids_name(tmp_path / "sub-01_T1w.json") is None
