"""End to end on the real dev SLURM + Apptainer: bundled gears through the controller.

The staging issue's "done when": the bundled dcm2niix gear converts a DICOM
series shipped with pydicom into NIfTI that appears in the hierarchy with
correct hashes, versions and a provenance record whose exports validate; an
analysis gear creates an analysis container; a gear that fails keeps its log
and publishes nothing; a gear writing 200 MB to /tmp and $HOME works.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import DevEnv
from tests.integration.test_controller_slurm import Instance, _make_instance

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def inst(dev_env: DevEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Instance:
    return _make_instance(dev_env, tmp_path, monkeypatch)


def _series_zip(tmp: Path) -> tuple[Path, int, tuple[int, int]]:
    import pydicom

    # A real five-slice CT series shipped with pydicom (one orientation: one volume).
    src = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001"
    files = sorted((src / "CT5N").iterdir())
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    out = tmp / "CT5N.dicom.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for f in files:
            zf.write(f, f.name)
    return out, len(files), (int(ds.Rows), int(ds.Columns))


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _files(inst: Instance, path: str) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in inst.cli.ok("ls", path, "--json").json() if e["kind"] == "file"}


def test_dcm2niix_converts_a_series(inst: Instance, tmp_path: Path) -> None:
    import nibabel as nib

    inst.cli.ok("gear", "build", str(REPO / "containers" / "dcm2niix"))
    series, n_files, (rows, cols) = _series_zip(tmp_path)
    inst.cli.ok("upload", "lab/p/s1/ses1/CT5N", str(series))
    out = inst.cli.ok("run", "dcm2niix", "--dest", "lab/p/s1/ses1/CT5N", "--tag", "hpc",
                      "--input", f"dicom=lab/p/s1/ses1/CT5N/{series.name}", "--json").json()
    jid = out["id"]
    inst.cycle_until(lambda: inst.state(jid) in ("complete", "failed"), 300, "dcm2niix done")
    job = inst.job(jid)
    assert job["state"] == "complete", (job, inst.cli.ok("job", "logs", jid).out)
    files = _files(inst, "lab/p/s1/ses1/CT5N")
    niftis = [n for n in files if n.endswith((".nii.gz", ".nii"))]
    assert niftis, files
    dl = tmp_path / "dl"
    for name in niftis:
        inst.cli.ok("download", f"lab/p/s1/ses1/CT5N/{name}", "--out", str(dl))
        assert _sha(dl / name) == files[name]["hash"], "stored hash matches the bytes"
        assert files[name]["version"] == 1
        img = nib.load(str(dl / name))
        assert img.shape[:2] in ((rows, cols), (cols, rows)), img.shape
        assert img.shape[2] == n_files, (img.shape, n_files)
    assert any(n.endswith(".json") for n in files), "BIDS sidecar"
    # provenance: the record and its exports
    prov = inst.cli.ok("provenance", "show", jid, "--json").json()
    text = json.dumps(prov)
    assert files[niftis[0]]["hash"].split(":")[1] in text
    pj = inst.cli.ok("provenance", "export", jid, "--format", "prov-json").out
    from prov.model import ProvDocument

    doc = ProvDocument.deserialize(content=pj, format="json")
    assert len(list(doc.get_records())) > 3
    crate = json.loads(inst.cli.ok("provenance", "export", jid, "--format", "ro-crate").out)
    ctx = crate["@context"]
    assert any(str(c).startswith("https://w3id.org/ro/crate/") for c in
               (ctx if isinstance(ctx, list) else [ctx]))
    bids = json.loads(inst.cli.ok("provenance", "export", jid, "--format", "bids").out)
    assert "GeneratedBy" in json.dumps(bids)
    trace = inst.cli.ok("provenance", "trace", f"lab/p/s1/ses1/CT5N/{niftis[0]}",
                        "--json").json()
    assert series.name in json.dumps(trace)


def test_analysis_gear_creates_analysis(inst: Instance) -> None:
    inst.cli.ok("gear", "build", str(REPO / "containers" / "test-analysis"))
    out = inst.cli.ok("run", "test-analysis", "--dest", "lab/p/s1/ses1", "--tag", "hpc",
                      "--input", "input_file=lab/p/s1/ses1/in.txt", "--json").json()
    jid = out["id"]
    inst.cycle_until(lambda: inst.state(jid) in ("complete", "failed"), 180, "analysis done")
    assert inst.state(jid) == "complete"
    children = inst.cli.ok("ls", "lab/p/s1/ses1", "--json").json()
    analyses = [c for c in children if c["kind"] == "analysis"]
    assert len(analyses) == 1 and analyses[0]["job_id"] == jid
    before = _files(inst, "lab/p/s1/ses1")
    assert set(before) == {"in.txt"}, "outputs went into the analysis, not the session"


def test_failing_gear_keeps_log_and_publishes_nothing(inst: Instance) -> None:
    jid = inst.run("--config", "exit_code=3", "--config", "num_files=2",
                   "--config", "fail_message=deliberate failure")
    inst.cycle_until(lambda: inst.state(jid) == "failed", 180, "job failed")
    job = inst.job(jid)
    assert job["failure_kind"] == "gear_error", job
    inst.cycle_until(lambda: "log_archived" in [e["kind"] for e in inst.job(jid)["events"]],
                     60, "log archived")
    log = inst.cli.ok("job", "logs", jid).out
    assert "deliberate failure" in log
    assert set(_files(inst, "lab/p/s1/ses1")) == {"in.txt"}, "nothing published"


def test_gear_writing_200mb_to_tmp_and_home(inst: Instance) -> None:
    jid = inst.run("--config", "scratch_mb=200", "--tag", "ram=256M")
    inst.cycle_until(lambda: inst.state(jid) in ("complete", "failed"), 240, "job done")
    job = inst.job(jid)
    assert job["state"] == "complete", (job, inst.cli.ok("job", "logs", jid).out)


@pytest.mark.parametrize("ssh", [pytest.param(False, id="local"),
                                 pytest.param(True, id="ssh", marks=pytest.mark.ssh)])
def test_bids_app_gets_the_bids_view_it_asks_for(dev_env: DevEnv, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 ssh: bool) -> None:
    """test-bids-app (manifest: bids-view, bids-app-data-types anat+func) run on a session
    finds exactly what `export bids` writes for that session in /flywheel/v0/work/bids,
    staged locally and over SSH; provenance names every stored file it was given."""
    from tests.unit.test_bids import check_bids, make_bids

    inst = _make_instance(dev_env, tmp_path, monkeypatch, ssh=ssh)
    inst.cli.ok("gear", "build", str(REPO / "containers" / "test-bids-app"))
    inst.cli.ok("ingest", "bids", str(make_bids(tmp_path / "ds")), "--group", "lab",
                "--project", "p")
    dest = "lab/p/sub-01/default"
    jid = inst.cli.ok("run", "test-bids-app", "--dest", dest, "--tag", "hpc",
                      "--config", "num_files=0", "--json").json()["id"]
    inst.cycle_until(lambda: inst.state(jid) in ("complete", "failed"), 300, "BIDS app done")
    job = inst.job(jid)
    assert job["state"] == "complete", (job, inst.cli.ok("job", "logs", jid).out)
    analysis = next(e for e in inst.cli.ok("ls", dest, "--json").json()
                    if e["kind"] == "analysis")
    got = tmp_path / "got"
    inst.cli.ok("download", f"{dest}/{analysis['label']}/bids-view.sha256", "--out", str(got))
    seen = {line.split("  ./", 1)[1]: line.split()[0]
            for line in (got / "bids-view.sha256").read_text().splitlines()}
    exported = tmp_path / "export"
    inst.cli.ok("export", "bids", dest, "--out", str(exported))
    check_bids(exported)
    want = {str(p.relative_to(exported)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in exported.rglob("*") if p.is_file()}
    assert seen == want
    assert "sub-01/func/sub-01_task-rest_bold.nii.gz" in seen
    prov = inst.cli.ok("provenance", "show", jid, "--json").json()
    viewed = {i["name"] for i in prov["record"]["inputs"] if i.get("role") == "bids-view"}
    assert viewed == set(want), "every file of the view is a stored one here"
    if not ssh:  # job debug stages a copy with its view, and the copy runs the same way
        plan = inst.cli.ok("job", "debug", jid, "--json").json()
        copy = Path(plan["job_dir"]) / "flywheel/v0/work/bids"
        assert {str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()} == set(want)
        run = inst.cli.run("job", "debug", jid, "--run")
        assert run.code == 0, run.err
