"""``hpcgear ingest`` through the real CLI entry point, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import nibabel
import pytest
from sqlalchemy import MetaData, select

from tests.conftest import CliEnv, CliResult
from tests.unit.test_ingest_dicom import GROUP, PYDICOM_DATA, write_series

NIB_DATA = Path(nibabel.__file__).parent / "tests" / "data"
# Test accessions like "demo/sub-01/ses-01" exceed SH's 16 characters, as real ones do.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")


def snapshot(env: CliEnv) -> dict[str, list[tuple[Any, ...]]]:
    from hpcgear.config.settings import load_settings
    from hpcgear.db.session import create_db_engine

    engine = create_db_engine(load_settings(env.config).database_url)
    md = MetaData()
    md.reflect(engine)
    with engine.connect() as conn:
        out = {
            name: sorted(tuple(map(repr, r)) for r in conn.execute(select(t)).all())
            for name, t in sorted(md.tables.items())
        }
    engine.dispose()
    return out


def one_clear_error(res: CliResult, needle: str) -> None:
    assert res.code != 0, res.out
    lines = res.err.strip().splitlines()
    assert lines[0].startswith("error: ") and needle in lines[0], res.err
    assert len(lines) == 2 and lines[1].startswith("hint: "), res.err


@pytest.fixture
def env(cli_env: CliEnv, tmp_path: Path) -> CliEnv:
    cli_env.ok("group", "create", GROUP)
    cli_env.ok("project", "create", f"{GROUP}/demo")
    d = tmp_path / "dicom"
    write_series(d, study="A", series="t1", number=3, description="t1_mprage_sag", count=2,
                 accession="demo/sub-01/ses-01")
    write_series(d, study="B", series="x", number=1, description="localizer", count=1,
                 accession="12345")
    shutil.copy(PYDICOM_DATA / "README.txt", d / "README.txt")
    return cli_env


def test_dicom_dry_run_json_and_rerun(env: CliEnv, tmp_path: Path) -> None:
    d = str(tmp_path / "dicom")
    before = snapshot(env)
    res = env.ok("ingest", "dicom", d, "--group", GROUP, "--dry-run")
    assert snapshot(env) == before
    assert "would create project imaging/Unsorted" in res.out
    assert f"session {GROUP}/demo/sub-01/ses-01 (new)" in res.out
    assert "planned     3 - t1_mprage_sag.dicom.zip 2 instance(s) [Structural T1" in res.out
    assert "README.txt: not_dicom" in res.out
    assert "would store 2 file(s) in 2 session(s); 1 skipped of 4 seen" in res.err
    out = env.ok("ingest", "dicom", d, "--group", GROUP, "--json", "--jobs", "2").json()
    assert out["summary"]["new"] == 2 and out["summary"]["skipped"] == 1
    assert out["skipped"] == [{"path": "README.txt", "reason": "not_dicom",
                               "detail": "no DICOM preamble or file meta information"}]
    paths = {f["path"] for f in out["files"]}
    assert f"{GROUP}/demo/sub-01/ses-01/3 - t1_mprage_sag/3 - t1_mprage_sag.dicom.zip" in paths
    unsorted = [s for s in out["sessions"] if s["unsorted_reason"]]
    assert len(unsorted) == 1 and unsorted[0]["path"].startswith(f"{GROUP}/Unsorted/")
    acq = env.ok("ls", f"{GROUP}/demo/sub-01/ses-01/3 - t1_mprage_sag", "--json").json()
    assert acq[0]["type"] == "dicom" and acq[0]["classification"]["Measurement"] == ["T1"]
    before = snapshot(env)
    again = env.ok("ingest", "dicom", d, "--group", GROUP)
    assert "unchanged   3 - t1_mprage_sag.dicom.zip v1" in again.out
    assert "0 new, 0 new version(s), 2 unchanged; 1 skipped of 4 seen" in again.err
    assert snapshot(env) == before
    res = env.ok("ingest", "reclassify", f"{GROUP}/demo", "--force", "--dry-run", "--json")
    assert [f["changed"] for f in res.json()["files"]] == [False]
    res = env.ok("ingest", "reclassify", f"{GROUP}/demo")
    assert "re-classified 0 file(s)" in res.err


def test_errors_deidentify_and_nifti(env: CliEnv, tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("name: p\ndicom:\n  remove-privat-tags: true\n")
    before = snapshot(env)
    res = env.run("ingest", "dicom", str(tmp_path / "dicom"), "--group", GROUP,
                  "--deid-profile", str(profile))
    one_clear_error(res, "unknown key 'remove-privat-tags'")
    assert "remove-private-tags" in res.err  # the hint lists the valid keys
    res = env.run("ingest", "dicom", str(tmp_path / "dicom"), "--group", GROUP,
                  "--route-field", "AccesionNumber")
    one_clear_error(res, "'AccesionNumber' is not a DICOM keyword")
    assert "AccessionNumber" in res.err
    res = env.run("ingest", "nifti", str(tmp_path / "dicom"), "--group", GROUP)
    one_clear_error(res, "needs --project")
    assert snapshot(env) == before
    # --de-identify with explicit project/subject
    out = env.ok("ingest", "dicom", str(tmp_path / "dicom"), "--group", GROUP,
                 "--project", "demo", "--subject", "s1", "--de-identify", "--json").json()
    paths = {s["path"] for s in out["sessions"]}
    # PS3.15 empties StudyDate/StudyTime, so the unnamed session is study-<UID tail>
    assert f"{GROUP}/demo/s1/ses-01" in paths and len(paths) == 2
    assert all("20200315" not in p for p in paths)
    f = env.ok("ls", f"{GROUP}/demo/s1/ses-01/3 - MR", "--json").json()[0]
    deid = f["info"]["hpcgear"]["deid"]
    # classified before de-identification removed SeriesDescription ("t1_mprage_sag")
    assert f["classification"]["Measurement"] == ["T1"]
    assert "SeriesDescription" not in f["info"]["header"]["dicom"]
    redo = env.ok("ingest", "reclassify", f"{GROUP}/demo/s1", "--force", "--json").json()
    assert redo["files"] == []  # the stored header cannot re-classify it as well
    assert deid["profile"] == "ps3.15-basic"
    assert {"PatientID", "PatientName", "AccessionNumber"} <= set(deid["changed"])
    # NIfTI
    anat = tmp_path / "bids" / "sub-07" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(NIB_DATA / "anatomical.nii", anat / "sub-07_T1w.nii")
    out = env.ok("ingest", "nifti", str(tmp_path / "bids"), "--group", GROUP,
                 "--project", "demo", "--json").json()
    assert [f["path"] for f in out["files"]] == [
        f"{GROUP}/demo/sub-07/default/anat/sub-07_T1w.nii"
    ]
