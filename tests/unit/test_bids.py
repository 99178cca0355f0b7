"""``ingest bids`` / ``ingest folder --template`` / ``export bids`` through the CLI, the export
checked with the BIDS validator (bids-validator, the schema's path rules) and the spec's
dataset rules (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel
import pytest

from tests.conftest import CliEnv
from tests.unit.test_ingest_cli import one_clear_error

NIB_DATA = Path(nibabel.__file__).parent / "tests" / "data"
GROUP = "lab"


def make_bids(root: Path) -> Path:
    """A small raw BIDS dataset made from nibabel's test images."""
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-01" / "func").mkdir(parents=True)
    (root / "sub-02" / "anat").mkdir(parents=True)
    (root / "derivatives" / "x").mkdir(parents=True)
    shutil.copy(NIB_DATA / "anatomical.nii", root / "sub-01/anat/sub-01_T1w.nii")
    (root / "sub-01/anat/sub-01_T1w.json").write_text('{"RepetitionTime": 2.3}')
    bold = nibabel.load(NIB_DATA / "example4d.nii.gz")
    bold.header.set_xyzt_units("mm", "msec")  # its TR is 2000: ms, as the sidecar's 2.0 s says
    nibabel.save(bold, root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    (root / "sub-01/func/sub-01_task-rest_bold.json").write_text(
        '{"RepetitionTime": 2.0, "TaskName": "rest"}'
    )
    (root / "sub-01/func/sub-01_task-rest_events.tsv").write_text(
        "onset\tduration\ttrial_type\n0\t10\trest\n"
    )
    shutil.copy(NIB_DATA / "anatomical.nii", root / "sub-02/anat/sub-02_T1w.nii")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "seeds study", "BIDSVersion": "1.9.0"})
    )
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t40\n")
    (root / "README").write_text("the seeds' study\n")
    (root / "derivatives/x/out.txt").write_text("not raw")
    return root


def check_bids(out: Path) -> None:
    """The BIDS validator (bids-validator-deno: the specification's schema, sidecars, NIfTI
    headers) finds no error; the path rules of the ``bids_validator`` package hold for every
    file; plus the spec's dataset-level rules spelled out."""
    from bids_validator import BIDSValidator

    errors = [f"{i['code']} {i.get('subCode') or ''} {i.get('location')}"
              for i in run_bids_validator(out) if i["severity"] == "error"]
    assert errors == []
    validator = BIDSValidator()
    files = [p for p in out.rglob("*") if p.is_file()]
    bad = [str(p.relative_to(out)) for p in files if not validator.is_bids(
        "/" + str(p.relative_to(out)))]
    assert bad == []
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["Name"] and desc["BIDSVersion"]  # REQUIRED keys
    for img in out.rglob("*.nii*"):
        stem = img.name.split(".nii")[0]
        assert (img.parent / f"{stem}.json").is_file(), img  # a sidecar for every image
        assert stem.startswith(img.relative_to(out).parts[0])  # sub- prefix = its folder
    header = (out / "participants.tsv").read_text().splitlines()[0].split("\t")
    assert header[0] == "participant_id"
    subjects = {p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("sub-")}
    listed = {line.split("\t")[0]
              for line in (out / "participants.tsv").read_text().splitlines()[1:]}
    assert subjects <= listed


def run_bids_validator(root: Path) -> list[dict[str, Any]]:
    """Every issue the BIDS validator (``bids-validator-deno``, a test dependency) reports."""
    exe = shutil.which("bids-validator-deno", path=str(Path(sys.executable).parent)) or \
        shutil.which("bids-validator-deno")
    assert exe, "bids-validator-deno is missing: pip install -e '.[test]'"
    res = subprocess.run([exe, str(root), "--format", "json"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "NO_COLOR": "1"})
    try:
        issues: list[dict[str, Any]] = json.loads(res.stdout)["issues"]["issues"]
    except (ValueError, KeyError):
        pytest.fail(f"bids-validator-deno gave no JSON (exit {res.returncode}): "
                    f"{res.stdout[:300]} {res.stderr[:300]}")
    return issues


def test_the_validator_catches_a_broken_dataset(tmp_path: Path) -> None:
    """It can fail: no dataset_description.json, a sidecar without its required keys."""
    root = make_bids(tmp_path / "ds")
    (root / "dataset_description.json").unlink()
    (root / "sub-01/func/sub-01_task-rest_bold.json").write_text("{}")
    codes = {i["code"] for i in run_bids_validator(root) if i["severity"] == "error"}
    assert {"MISSING_DATASET_DESCRIPTION", "SIDECAR_KEY_REQUIRED"} <= codes, codes


@pytest.fixture
def env(cli_env: CliEnv) -> CliEnv:
    cli_env.ok("group", "create", GROUP)
    cli_env.ok("project", "create", f"{GROUP}/study")
    return cli_env


def test_ingest_bids_keeps_every_file_and_exports_valid_bids(env: CliEnv, tmp_path: Path) -> None:
    src = make_bids(tmp_path / "ds")
    dry = env.ok("ingest", "bids", str(src), "--group", GROUP, "--project", "study",
                 "--dry-run", "--json").json()
    assert all(f["status"] == "planned" for f in dry["files"])
    out = env.ok("ingest", "bids", str(src), "--group", GROUP, "--project", "study",
                 "--json").json()
    paths = {f["path"] for f in out["files"]}
    assert f"{GROUP}/study/sub-01/default/func/sub-01_task-rest_events.tsv" in paths
    assert f"{GROUP}/study/participants.tsv" in paths
    assert f"{GROUP}/study/dataset_description.json" in paths
    assert f"{GROUP}/study/README" in paths
    assert [s["reason"] for s in out["skipped"]] == ["not_bids_raw"]
    # rerun: nothing new
    again = env.ok("ingest", "bids", str(src), "--group", GROUP, "--project", "study",
                   "--json").json()
    assert {f["status"] for f in again["files"]} == {"unchanged"}
    # export the project and check it
    dest = tmp_path / "export"
    dry = env.ok("export", "bids", f"{GROUP}/study", "--out", str(dest), "--dry-run",
                 "--json").json()
    assert dry["dry_run"] is True and not dest.exists()
    res = env.ok("export", "bids", f"{GROUP}/study", "--out", str(dest), "--json").json()
    assert res["written"] == dry["written"]
    assert res["skipped"] == []
    assert "sub-01/func/sub-01_task-rest_events.tsv" in res["written"]
    assert "sub-01/func/sub-01_task-rest_bold.json" in res["written"]
    assert (dest / "participants.tsv").read_text().startswith("participant_id\tage")
    assert json.loads((dest / "dataset_description.json").read_text())["Name"] == "seeds study"
    assert json.loads((dest / "sub-01/anat/sub-01_T1w.json").read_text()) == {
        "RepetitionTime": 2.3}
    check_bids(dest)
    # one subject only
    one = tmp_path / "one"
    res = env.ok("export", "bids", f"{GROUP}/study/sub-02", "--out", str(one), "--json").json()
    assert not any(w.startswith("sub-01") for w in res["written"])
    check_bids(one)
    assert json.loads((one / "sub-02/anat/sub-02_T1w.json").read_text()) == {}
    one_clear_error(env.run("export", "bids", f"{GROUP}/nope", "--out", str(one)), "nope")


def test_export_a_subject_or_a_session_path(env: CliEnv, tmp_path: Path) -> None:
    """``export bids G/P/SUBJECT`` and ``G/P/SUBJECT/SESSION``: that subject's or session's
    tree only, with the project's top-level files and the subject's ``*_sessions.tsv``."""
    src = tmp_path / "ds"
    for ses in ("ses-1", "ses-2"):
        (src / "sub-01" / ses / "anat").mkdir(parents=True)
        shutil.copy(NIB_DATA / "anatomical.nii", src / f"sub-01/{ses}/anat/sub-01_{ses}_T1w.nii")
        (src / f"sub-01/{ses}/anat/sub-01_{ses}_T1w.json").write_text('{"RepetitionTime": 2}')
        (src / f"sub-01/{ses}/sub-01_{ses}_scans.tsv").write_text(
            f"filename\tacq_time\nanat/sub-01_{ses}_T1w.nii\tn/a\n")
    (src / "sub-02" / "ses-1" / "anat").mkdir(parents=True)
    shutil.copy(NIB_DATA / "anatomical.nii", src / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii")
    (src / "sub-01/sub-01_sessions.tsv").write_text("session_id\nses-1\nses-2\n")
    (src / "dataset_description.json").write_text(json.dumps({"Name": "s", "BIDSVersion": "1.9.0"}))
    env.ok("ingest", "bids", str(src), "--group", GROUP, "--project", "study", "--json")
    sub = env.ok("export", "bids", f"{GROUP}/study/sub-01", "--out", str(tmp_path / "sub"),
                 "--json").json()
    assert sub["written"] == [
        "README", "dataset_description.json", "participants.tsv",
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.json", "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii",
        "sub-01/ses-1/sub-01_ses-1_scans.tsv",
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.json", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii",
        "sub-01/ses-2/sub-01_ses-2_scans.tsv",
        "sub-01/sub-01_sessions.tsv"]
    check_bids(tmp_path / "sub")
    ses = env.ok("export", "bids", f"{GROUP}/study/sub-01/ses-2", "--out",
                 str(tmp_path / "ses"), "--json").json()
    assert ses["written"] == [
        "README", "dataset_description.json", "participants.tsv",
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.json", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii",
        "sub-01/ses-2/sub-01_ses-2_scans.tsv", "sub-01/sub-01_sessions.tsv"]
    check_bids(tmp_path / "ses")
    assert (tmp_path / "ses/participants.tsv").read_text() == "participant_id\nsub-01\n"
    # too deep, or not there: one clear error each
    one_clear_error(env.run("export", "bids", f"{GROUP}/study/sub-01/ses-2/anat", "--out",
                            str(tmp_path / "x")), "anat")
    one_clear_error(env.run("export", "bids", f"{GROUP}/study/sub-09", "--out",
                            str(tmp_path / "x")), "sub-09")


def test_export_refuses_a_bids_path_that_leaves_the_dataset(env: CliEnv, tmp_path: Path) -> None:
    """info.BIDS is user-editable; a Path with '..' is skipped and named, never followed."""
    (tmp_path / "evil.tsv").write_text("x\n")
    env.ok("upload", f"{GROUP}/study", str(tmp_path / "evil.tsv"))
    env.ok("info", "set", f"{GROUP}/study/evil.tsv",
           'BIDS={"Path": "../../escaped", "Filename": "evil.tsv"}')
    out = tmp_path / "deep" / "out"
    res = env.ok("export", "bids", f"{GROUP}/study", "--out", str(out), "--json").json()
    assert "leaves the dataset" in res["skipped"][0]["reason"]
    assert res["skipped"][0]["path"] == f"{GROUP}/study/evil.tsv"
    assert not (tmp_path / "escaped").exists()
    assert "evil.tsv" not in {p.name for p in out.rglob("*")}


def test_export_names_from_classification(env: CliEnv, tmp_path: Path) -> None:
    """Files without BIDS names are named from their classification (and run-N on clashes)."""
    a = tmp_path / "scan_a.nii"
    b = tmp_path / "scan_b.nii"
    other = tmp_path / "mystery.nii"
    for p in (a, b, other):
        shutil.copy(NIB_DATA / "anatomical.nii", p)
    env.ok("upload", f"{GROUP}/study/Pat 7/visit1/mprage", str(a), str(b), str(other))
    for name in ("scan_a.nii", "scan_b.nii"):
        env.ok("info", "set", f"{GROUP}/study/Pat 7/visit1/mprage/{name}",
               "RepetitionTime=2.3")
        _classify(env, f"{GROUP}/study/Pat 7/visit1/mprage/{name}")
    dest = tmp_path / "out"
    res = env.ok("export", "bids", f"{GROUP}/study", "--out", str(dest), "--json").json()
    assert "sub-Pat7/ses-visit1/anat/sub-Pat7_ses-visit1_T1w.nii" in res["written"]
    assert "sub-Pat7/ses-visit1/anat/sub-Pat7_ses-visit1_run-2_T1w.nii" in res["written"]
    assert [s["path"].endswith("mystery.nii") for s in res["skipped"]] == [True]
    check_bids(dest)


def _classify(env: CliEnv, path: str) -> None:
    from sqlalchemy import update

    from hpcgear.config.settings import load_settings
    from hpcgear.db.models import File
    from hpcgear.db.session import create_db_engine

    name = path.rsplit("/", 1)[1]
    engine = create_db_engine(load_settings(env.config).database_url)
    with engine.begin() as conn:  # what `classification set` (the data helper's) does
        conn.execute(update(File).where(File.name == name).values(
            classification={"Intent": ["Structural"], "Measurement": ["T1"]}))
    engine.dispose()


def test_ingest_folder_template(env: CliEnv, tmp_path: Path) -> None:
    src = tmp_path / "dump"
    for rel in ("sub-A/v1/T1/a.nii", "sub-A/v1/T1/a.json", "sub-B/v2/rest/b.nii",
                "notes.txt", "sub-C/v1/too/deep/c.nii"):
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)
    tpl = "sub-{subject}/{session}/{acquisition}/*"
    dry = env.ok("ingest", "folder", str(src), "--group", GROUP, "--project", "study",
                 "--template", tpl, "--dry-run", "--json").json()
    assert sorted(f["path"] for f in dry["files"]) == [
        f"{GROUP}/study/A/v1/T1/a.json", f"{GROUP}/study/A/v1/T1/a.nii",
        f"{GROUP}/study/B/v2/rest/b.nii"]
    assert sorted(s["path"] for s in dry["skipped"]) == ["notes.txt", "sub-C/v1/too/deep/c.nii"]
    assert {s["reason"] for s in dry["skipped"]} == {"no_template_match"}
    out = env.ok("ingest", "folder", str(src), "--group", GROUP, "--project", "study",
                 "--template", tpl, "--json").json()
    assert {f["status"] for f in out["files"]} == {"new"}
    listed = env.ok("ls", f"{GROUP}/study/A/v1/T1", "--json").json()
    assert sorted(f["name"] for f in listed) == ["a.json", "a.nii"]
    again = env.ok("ingest", "folder", str(src), "--group", GROUP, "--project", "study",
                   "--template", tpl, "--json").json()
    assert {f["status"] for f in again["files"]} == {"unchanged"}
    # no session level: files go to session "default", on the session
    flat = tmp_path / "flat"
    (flat / "S9").mkdir(parents=True)
    (flat / "S9" / "x.txt").write_text("x")
    out = env.ok("ingest", "folder", str(flat), "--group", GROUP, "--project", "study",
                 "--template", "{subject}/*", "--json").json()
    assert out["files"][0]["path"] == f"{GROUP}/study/S9/default/x.txt"
    one_clear_error(env.run("ingest", "folder", str(flat), "--group", GROUP, "--project",
                            "study", "--template", "{subjekt}/*"), "--template")
    one_clear_error(env.run("ingest", "folder", str(flat), "--group", GROUP, "--project",
                            "study", "--template", "{subject}/{acquisition}/*"), "{session}")
