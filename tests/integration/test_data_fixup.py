"""The seeds' fix-up story on the real dev SLURM + Apptainer (issue 12 A).

A study whose accession names a project that does not exist lands in
Unsorted; it is moved into its project, an analysis gear runs on it, the
analysis is downloaded (hash-verified, at its hierarchy path) and the project
is viewed as CSV for a statistics package.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tests.integration.conftest import DevEnv
from tests.integration.test_controller_slurm import Instance, _make_instance

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def inst(dev_env: DevEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Instance:
    return _make_instance(dev_env, tmp_path, monkeypatch)


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_unsorted_subject_moved_analysed_downloaded_viewed(inst: Instance, tmp_path: Path) -> None:
    from hpcgear.storage.objects import sha256_file
    from tests.unit.test_ingest_dicom import write_series

    cli = inst.cli
    dicom = tmp_path / "dicom"
    write_series(dicom, study="fix", series="t1", number=2, description="t1_mprage_sag",
                 count=2, accession="typo-project/sub-07/ses-01")
    res = cli.ok("ingest", "dicom", str(dicom), "--group", "lab", "--json").json()
    unsorted = [s for s in res["sessions"] if s["unsorted_reason"]]
    assert len(unsorted) == 1 and unsorted[0]["path"].startswith("lab/Unsorted/")
    subject_path = "/".join(unsorted[0]["path"].split("/")[:3])
    subject = subject_path.rsplit("/", 1)[1]
    moved = cli.ok("mv", subject_path, "lab/p", "--json").json()
    assert moved["to"] == f"lab/p/{subject}"
    assert cli.run("ls", subject_path).code == 3
    session_path = f"lab/p/{subject}/{unsorted[0]['path'].split('/')[3]}"
    acqs = [e for e in cli.ok("ls", session_path, "--json").json() if e["kind"] == "acquisition"]
    acq_path = f"{session_path}/{acqs[0]['label']}"
    dicom_zip = next(e["name"] for e in cli.ok("ls", acq_path, "--json").json())
    cli.ok("gear", "build", str(REPO / "containers" / "test-analysis"))
    job = cli.ok("run", "test-analysis", "--dest", session_path, "--tag", "hpc",
                 "--input", f"input_file={acq_path}/{dicom_zip}", "--json").json()
    inst.cycle_until(lambda: inst.state(job["id"]) in ("complete", "failed"), 300,
                     "analysis done")
    assert inst.state(job["id"]) == "complete", cli.ok("job", "logs", job["id"]).out
    analysis = next(e for e in cli.ok("ls", session_path, "--json").json()
                    if e["kind"] == "analysis")
    analysis_path = f"{session_path}/{analysis['label']}"
    listed = {e["name"]: e for e in cli.ok("ls", analysis_path, "--json").json()}
    assert listed, "the analysis has outputs"
    out = tmp_path / "dl"
    report = cli.ok("download", analysis_path, "--out", str(out), "--json").json()
    assert report["written"] == len(listed)
    for name, entry in listed.items():
        assert sha256_file(out / analysis_path / name) == entry["hash"]
    # the analysis output is an input of the next gear, by path
    first_out = sorted(listed)[0]
    again = cli.ok("run", "test-gear", "--dest", session_path, "--dry-run",
                   "--input", f"input_file={analysis_path}/{first_out}")
    assert first_out in again.out
    table = cli.ok("view", "lab/p", "--columns",
                   "subject.label,session.label,acquisition.label,file.name,"
                   "file.classification.Measurement", "--format", "csv").out
    rows = list(csv.DictReader(io.StringIO(table)))
    mine = [r for r in rows if r["subject.label"] == subject]
    assert [r["file.name"] for r in mine] == [dicom_zip]
    assert mine[0]["file.classification.Measurement"] == '["T1"]'
    hist = cli.ok("history", f"lab/p/{subject}", "--json").json()
    assert [(h["action"], h["from"], h["to"]) for h in hist] == [
        ("move", subject_path, f"lab/p/{subject}")]
