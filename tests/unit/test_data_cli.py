"""Issue 12 A through the real CLI, on SQLite and PostgreSQL: analyses as containers,
mv/rename/rm/trash, versions, info unset, classification, bulk download, views, find.

Analyses are made by the real publish and provenance code (``run_job`` from the
provenance tests: only the scheduler and the gear's execution are skipped).
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliEnv
from tests.unit.test_cli_core import assert_one_clear_error, db_snapshot
from tests.unit.test_provenance import _open_db, run_job
from tests.unit.test_publish import World

SESSION = "imaging/study1/sub-01/ses-01"
ACQ = f"{SESSION}/T1w"


@dataclass
class Data:
    env: CliEnv
    db: Any
    store: Any
    tmp: Path
    analysis: dict[str, Any]  # ls entry of the published analysis
    job_id: str

    @property
    def apath(self) -> str:
        return f"{SESSION}/{self.analysis['label']}"

    def publish(self, dest_id: str, input_file_id: str, outputs: dict[str, bytes],
                gear: str = "mriqc") -> str:
        world = World(self.db, self.store, dest_id, "", input_file_id, self.tmp)
        job_id, _ = run_job(world, gear, "analysis", dest_id, input_file_id, outputs,
                            origin_id=getpass.getuser())
        return job_id


def _file_id(env: CliEnv, path: str, name: str) -> str:
    return next(e["id"] for e in env.ok("ls", path, "--json").json() if e.get("name") == name)


def _container_id(env: CliEnv, parent: str, label: str) -> str:
    return next(e["id"] for e in env.ok("ls", parent, "--json").json() if e.get("label") == label)


@pytest.fixture
def data(cli_env: CliEnv, tmp_path: Path) -> Iterator[Data]:
    from hpcgear.storage.objects import ObjectStore

    env = cli_env
    env.ok("group", "create", "imaging")
    env.ok("project", "create", "imaging/study1")
    env.ok("project", "create", "imaging/study2")
    src = tmp_path / "src"
    src.mkdir()
    (src / "scan.nii.gz").write_bytes(b"\x1f\x8b" + b"T1" * 500)
    (src / "scan.json").write_text('{"RepetitionTime": 2.3}')
    env.ok("upload", ACQ, str(src / "scan.nii.gz"), str(src / "scan.json"))
    (src / "bold.nii.gz").write_bytes(b"\x1f\x8b" + b"BOLD" * 300)
    env.ok("upload", f"{SESSION}/rest", str(src / "bold.nii.gz"))
    (src / "notes.txt").write_text("sub-02 data")
    env.ok("upload", "imaging/study1/sub-02/ses-01/T1w", str(src / "notes.txt"))
    db, settings = _open_db(env)
    store = ObjectStore(settings.storage_root)
    scan_id = _file_id(env, ACQ, "scan.nii.gz")
    session_id = _container_id(env, "imaging/study1/sub-01", "ses-01")
    d = Data(env, db, store, tmp_path, {}, "")
    d.job_id = d.publish(session_id, scan_id, {"report.html": b"<p>ok</p>", "qc.json": b"{}"})
    d.analysis = next(e for e in env.ok("ls", SESSION, "--json").json()
                      if e["kind"] == "analysis")
    yield d
    db.dispose()


# ------------------------------------------------------------------ analyses


def test_analysis_is_a_container_by_label_and_by_id(data: Data, tmp_path: Path) -> None:
    env, a = data.env, data.analysis
    assert " " in a["label"] and ":" in a["label"], "label carries a timestamp"
    files = env.ok("ls", data.apath, "--json").json()
    assert {f["name"] for f in files} >= {"report.html", "qc.json"}
    by_id = env.ok("ls", f"{SESSION}/@{a['id']}", "--json").json()
    assert by_id == files
    assert env.ok("ls", f"{SESSION}/@{a['id'][:8]}", "--json").json() == files
    out = tmp_path / "one"
    env.ok("download", f"{data.apath}/report.html", "--out", str(out))
    assert (out / "report.html").read_bytes() == b"<p>ok</p>"
    # label, notes, tags and info are editable
    env.ok("tag", "add", data.apath, "qc-passed")
    env.ok("info", "set", data.apath, "reviewer=amy")
    notes = env.ok("note", "add", data.apath, "looks fine", "--json").json()
    assert notes[0]["text"] == "looks fine" and notes[0]["user"] == getpass.getuser()
    assert env.ok("note", "list", data.apath, "--json").json() == notes
    env.ok("rename", data.apath, "mriqc final run")
    entry = next(e for e in env.ok("ls", SESSION, "--json").json() if e["kind"] == "analysis")
    assert entry["label"] == "mriqc final run" and entry["tags"] == ["qc-passed"]
    assert entry["info"]["reviewer"] == "amy"
    # an analysis holds files only
    res = env.run("ls", f"{SESSION}/mriqc final run/deeper")
    assert res.code == 3 and "holds files only" in res.err


def test_repeated_analysis_labels_need_the_id(data: Data) -> None:
    env, a = data.env, data.analysis
    session_id = _container_id(env, "imaging/study1/sub-01", "ses-01")
    scan_id = _file_id(env, ACQ, "scan.nii.gz")
    data.publish(session_id, scan_id, {"other.txt": b"x"})
    second = [e for e in env.ok("ls", SESSION, "--json").json() if e["kind"] == "analysis"]
    assert len(second) == 2
    other = next(e for e in second if e["id"] != a["id"])
    if other["label"] != a["label"]:  # same second: same label already
        env.ok("rename", f"{SESSION}/@{other['id']}", a["label"])  # analyses may share labels
    res = env.run("ls", data.apath)
    assert res.code == 5
    assert_one_clear_error(res, "analyses")
    assert f"@{a['id']}" in res.err and f"@{other['id']}" in res.err
    # download paths then use the id, so they resolve back
    plan = env.ok("download", SESSION, "-r", "--include-analyses", "--dry-run", "--json").json()
    assert f"{SESSION}/@{other['id']}/other.txt" in {f["path"] for f in plan["files"]}
    for e in second:
        assert env.ok("ls", f"{SESSION}/@{e['id']}", "--json").json()
    # uploads never go into an analysis (nor silently create a look-alike acquisition)
    f = data.tmp / "x.txt"
    f.write_text("x")
    assert_one_clear_error(env.run("upload", f"{SESSION}/@{a['id']}", str(f)), "is an analysis")
    # an acquisition labelled like an analysis wins; the analysis stays reachable by id
    env.ok("rename", f"{SESSION}/rest", a["label"])
    names = {e["name"] for e in env.ok("ls", f"{SESSION}/{a['label']}", "--json").json()}
    assert names == {"bold.nii.gz"}
    assert env.ok("ls", f"{SESSION}/@{a['id']}", "--json").json()


def test_analysis_file_as_gear_input(data: Data) -> None:
    env = data.env
    from tests.conftest import REPO

    env.ok("gear", "install", str(REPO / "containers" / "test-gear"))
    res = env.ok("run", "test-gear", "--dest", "imaging/study1/sub-01",
                 "--input", f"input_file={data.apath}/qc.json", "--json")
    job = res.json()
    shown = env.ok("job", "show", job["id"], "--json").json()
    inputs = shown.get("inputs") or shown.get("job", {}).get("inputs")
    text = json.dumps(inputs)
    assert "qc.json" in text and data.analysis["id"] in text
    batch = env.ok("batch", "test-gear", "--over", "imaging/study1/*",
                   "--input", f"input_file={data.apath}/qc.json", "--json").json()
    assert len(batch["jobs"]) == 2
    for j in batch["jobs"]:
        shown_b = env.ok("job", "show", j["id"], "--json").json()
        assert data.analysis["id"] in json.dumps(shown_b.get("inputs"))
    bad = env.run("run", "test-gear", "--dest", "imaging/study1/sub-01",
                  "--input", f"input_file={data.apath}/missing.json")
    assert bad.code == 5 and "missing.json" in bad.err


# --------------------------------------------------------- mv / rename / rm


def test_move_subject_between_projects_keeps_ids_and_records_it(data: Data) -> None:
    env = data.env
    sub_id = _container_id(env, "imaging/study1", "sub-01")
    scan_id = _file_id(env, ACQ, "scan.nii.gz")
    moved = env.ok("mv", "imaging/study1/sub-01", "imaging/study2", "--json").json()
    assert moved == {"kind": "subject", "id": sub_id, "from": "imaging/study1/sub-01",
                     "to": "imaging/study2/sub-01"}
    assert env.run("ls", "imaging/study1/sub-01").code == 3
    new_acq = "imaging/study2/sub-01/ses-01/T1w"
    assert _file_id(env, new_acq, "scan.nii.gz") == scan_id
    # ancestor ids follow: the view of study2 sees the files, study1's does not
    rows = env.ok("view", "imaging/study2", "--columns", "subject.label,file.name",
                  "--format", "json").json()
    assert {"subject.label": "sub-01", "file.name": "scan.nii.gz"} in rows
    assert all(r["subject.label"] != "sub-01" for r in env.ok(
        "view", "imaging/study1", "--columns", "subject.label,file.name", "--json").json())
    # the analysis moved along and still resolves; provenance still shows the job
    assert env.ok("ls", f"imaging/study2/sub-01/ses-01/{data.analysis['label']}", "--json").json()
    assert "report.html" in env.ok("provenance", "show", data.job_id).out
    hist = env.ok("history", "imaging/study2/sub-01", "--json").json()
    assert [(h["action"], h["from"], h["to"], h["actor"]) for h in hist] == [
        ("move", "imaging/study1/sub-01", "imaging/study2/sub-01", getpass.getuser())]
    # a taken label is refused and changes nothing
    env.ok("upload", "imaging/study1/sub-01/ses-01", str(data.tmp / "src" / "notes.txt"))
    before = db_snapshot(env)
    res = env.run("mv", "imaging/study1/sub-01", "imaging/study2")
    assert res.code == 6
    assert_one_clear_error(res, "already has a subject")
    assert db_snapshot(env) == before
    # wrong level
    assert_one_clear_error(env.run("mv", "imaging/study1/sub-02", "imaging/study2/sub-01"),
                           "cannot go into")


def test_move_and_rename_files_and_sessions(data: Data) -> None:
    env = data.env
    env.ok("mv", f"{ACQ}/scan.json", f"{SESSION}/rest")
    assert "scan.json" in {e["name"] for e in env.ok("ls", f"{SESSION}/rest", "--json").json()}
    env.ok("rename", f"{SESSION}/rest/scan.json", "bold.json")
    env.ok("rename", f"{SESSION}/rest", "task-rest")
    env.ok("rename", SESSION, "ses-baseline")
    files = env.ok("ls", "imaging/study1/sub-01/ses-baseline/task-rest", "--json").json()
    assert {f["name"] for f in files} == {"bold.nii.gz", "bold.json"}
    env.ok("mv", "imaging/study1/sub-01/ses-baseline", "imaging/study1/sub-02")
    assert env.ok("ls", "imaging/study1/sub-02/ses-baseline/T1w", "--json").json()
    assert_one_clear_error(env.run("rename", "imaging/study1/sub-02", "sub-01"), "already exists")
    assert_one_clear_error(env.run("rename", "imaging/study1/sub-02", "bad/label"), "'/'")
    assert_one_clear_error(env.run("mv", "imaging/study1", "imaging/study2"), "cannot be moved")


def test_rm_into_trash_restore_purge_keeps_provenance(data: Data) -> None:
    env = data.env
    scan = f"{ACQ}/scan.nii.gz"
    scan_hash = next(e["hash"] for e in env.ok("ls", ACQ, "--json").json()
                     if e["name"] == "scan.nii.gz")
    dry = env.ok("rm", "imaging/study1/sub-01", "--dry-run", "--json").json()
    assert dry[0]["dry_run"] is True and dry[0]["files"] == 5
    assert env.ok("ls", "imaging/study1/sub-01", "--json").json()
    gone = env.ok("rm", "imaging/study1/sub-01", "--json").json()[0]
    assert gone["kind"] == "subject" and gone["files"] == 5
    assert env.run("ls", "imaging/study1/sub-01").code == 3
    assert env.run("download", scan, "--out", str(data.tmp / "x")).code == 3
    trash = env.ok("trash", "list", "--json").json()
    assert [t["trash_id"] for t in trash] == [gone["trash_id"]]
    # the label is free again; restoring into a taken place is refused
    unique = data.tmp / "unique.txt"
    unique.write_text("only here")
    up = env.ok("upload", "imaging/study1/sub-01", str(unique), "--json").json()
    unique_hash = up[0]["hash"]
    assert_one_clear_error(env.run("trash", "restore", gone["trash_id"]), "has a new subject")
    env.ok("rm", "imaging/study1/sub-01")
    trash = env.ok("trash", "list", "--json").json()
    newer = next(t for t in trash if t["trash_id"] != gone["trash_id"])
    env.ok("user", "add", "pa")
    env.ok("role", "grant", "pa", "imaging", "admin")  # group admins do not restore
    before = db_snapshot(env)
    denied = env.run("--as", "pa", "trash", "restore", gone["trash_id"])
    assert denied.code == 4 and "site-admin" in denied.err
    assert db_snapshot(env) == before
    env.ok("trash", "restore", gone["trash_id"][:10])
    out = data.tmp / "back"
    env.ok("download", scan, "--out", str(out))
    assert (out / "scan.nii.gz").read_bytes().startswith(b"\x1f\x8bT1")
    assert env.ok("ls", data.apath, "--json").json(), "the analysis came back too"
    # delete again, then purge: bytes provenance names stay in storage
    again = env.ok("rm", "imaging/study1/sub-01", "--json").json()[0]
    purged = env.ok("trash", "purge", again["trash_id"], "--json").json()
    assert purged["objects_kept"][scan_hash] == "a provenance record"
    assert data.store.exists(scan_hash)
    shown = env.ok("provenance", "show", data.job_id, "--json").json()
    assert shown["verified"] is True
    assert scan_hash in json.dumps(shown["record"])
    # bytes nothing references are removed
    assert data.store.exists(unique_hash)
    res = env.ok("trash", "purge", "--older-than", "0", "--json").json()
    assert [p["trash_id"] for p in res["purged"]] == [newer["trash_id"]]
    assert res["objects_removed"] == 1 and not data.store.exists(unique_hash)
    assert env.ok("trash", "list", "--json").json() == []
    actions = [h["action"] for h in env.ok("history", "--json").json()]
    assert actions == ["delete", "delete", "restore", "delete", "purge", "purge"]
    sub = env.ok("history", "--id", deleted_item_id(env, gone), "--json")
    assert [h["action"] for h in sub.json()] == ["delete", "restore", "delete", "purge"]
    assert_one_clear_error(env.run("trash", "restore", "ffffffffff"), "no trash entry")
    assert_one_clear_error(env.run("trash", "purge"), "nothing to purge")


def test_restore_follows_a_parent_that_moved(data: Data) -> None:
    env = data.env
    gone = env.ok("rm", SESSION, "--json").json()[0]
    env.ok("mv", "imaging/study1/sub-01", "imaging/study2")
    env.ok("trash", "restore", gone["trash_id"])
    rows = env.ok("view", "imaging/study2", "--columns", "session.label,file.name",
                  "--json").json()
    assert {"session.label": "ses-01", "file.name": "scan.nii.gz"} in rows
    assert env.ok("ls", f"imaging/study2/sub-01/ses-01/{data.analysis['label']}",
                  "--json").json()
    assert env.ok("find", "imaging/study2", "--label", "scan.json", "--json").json()


def deleted_item_id(env: CliEnv, gone: dict[str, Any]) -> str:
    """The id of the subject deleted first (its history outlives it)."""
    rows = env.ok("history", "--json").json()
    return str(next(h["id"] for h in rows if h["detail"].get("trash_id") == gone["trash_id"]))


def test_rm_file_then_versions(data: Data) -> None:
    env = data.env
    f = data.tmp / "src" / "scan.json"
    f.write_text('{"RepetitionTime": 2.5}')
    env.ok("upload", ACQ, str(f))
    versions = env.ok("versions", f"{ACQ}/scan.json", "--json").json()
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["current"] for v in versions] == [False, True]
    assert versions[0]["hash"] != versions[1]["hash"]
    assert "v2*" in env.ok("versions", f"{ACQ}/scan.json").out
    assert_one_clear_error(env.run("versions", ACQ), "not a file")
    env.ok("rm", f"{ACQ}/scan.json")
    assert "scan.json" not in {e["name"] for e in env.ok("ls", ACQ, "--json").json()}
    tid = env.ok("trash", "list", "--json").json()[0]["trash_id"]
    env.ok("trash", "restore", tid)
    assert len(env.ok("versions", f"{ACQ}/scan.json", "--json").json()) == 2


def test_info_unset_and_classification(data: Data) -> None:
    env = data.env
    env.ok("info", "set", ACQ, "scanner.model=prisma", "scanner.site=x", "tesla=3")
    info = env.ok("info", "unset", ACQ, "scanner.site", "tesla", "--json").json()
    assert info == {"scanner": {"model": "prisma"}}
    before = db_snapshot(env)
    res = env.run("info", "unset", ACQ, "scanner.model", "nope")
    assert res.code == 3 and "'nope'" in res.err
    assert db_snapshot(env) == before, "all keys or none"
    path = f"{ACQ}/scan.nii.gz"
    cls = env.ok("classification", "set", path, "Measurement=T1", "Intent=Structural",
                 "--json").json()
    assert cls == {"Measurement": ["T1"], "Intent": ["Structural"]}
    cls = env.ok("classification", "add", path, "Features=3D,MPRAGE", "--json").json()
    assert cls["Features"] == ["3D", "MPRAGE"]
    cls = env.ok("classification", "rm", path, "Features=3D", "Intent", "--json").json()
    assert cls == {"Measurement": ["T1"], "Features": ["MPRAGE"]}
    assert_one_clear_error(env.run("classification", "rm", path, "Features=2D"), "not in")
    assert_one_clear_error(env.run("classification", "set", ACQ, "Measurement=T1"),
                           "container")
    assert_one_clear_error(env.run("classification", "set", path, "Measurement"), "KEY=VALUE")


# -------------------------------------------------------------- download


def test_recursive_download_resume_filter_and_tar(data: Data, tmp_path: Path) -> None:
    env = data.env
    out = tmp_path / "tree"
    plan = env.ok("download", "imaging/study1", "-r", "--dry-run", "--json").json()
    paths = {f["path"] for f in plan["files"]}
    assert paths == {f"{ACQ}/scan.nii.gz", f"{ACQ}/scan.json", f"{SESSION}/rest/bold.nii.gz",
                     "imaging/study1/sub-02/ses-01/T1w/notes.txt"}
    first = env.ok("download", "imaging/study1", "--recursive", "--out", str(out),
                   "--json").json()
    assert first["written"] == 4 and first["skipped"] == 0
    for p in paths:  # every written path is also a path hpcgear resolves
        got = out / p
        listed = env.ok("ls", p.rsplit("/", 1)[0], "--json").json()
        want = next(e["hash"] for e in listed if e.get("name") == p.rsplit("/", 1)[1])
        from hpcgear.storage.objects import sha256_file

        assert sha256_file(got) == want
    (out / ACQ / "scan.json").write_text("tampered")
    again = env.ok("download", "imaging/study1", "-r", "--out", str(out), "--json").json()
    assert again["written"] == 1 and again["skipped"] == 3
    assert json.loads((out / ACQ / "scan.json").read_text()) == {"RepetitionTime": 2.3}
    nifti = env.ok("download", "imaging/study1", "-r", "--type", "nifti", "--dry-run",
                   "--json").json()
    assert {f["path"].rsplit("/", 1)[1] for f in nifti["files"]} == {"scan.nii.gz",
                                                                     "bold.nii.gz"}
    with_an = env.ok("download", "imaging/study1", "-r", "--include-analyses", "--dry-run",
                     "--json").json()
    assert f"{data.apath}/report.html" in {f["path"] for f in with_an["files"]}
    # an analysis downloads by its path
    an_out = tmp_path / "analysis"
    env.ok("download", data.apath, "--out", str(an_out))
    assert (an_out / data.apath / "report.html").read_bytes() == b"<p>ok</p>"
    tar_path = tmp_path / "s.tar.gz"
    res = env.ok("download", SESSION, "-r", "--include-analyses", "--tar", str(tar_path),
                 "--json").json()
    with tarfile.open(tar_path) as tf:
        names = set(tf.getnames())
        assert f"{data.apath}/qc.json" in names and f"{ACQ}/scan.nii.gz" in names
        member = tf.extractfile(f"{ACQ}/scan.json")
        assert member is not None and member.read() == b'{"RepetitionTime": 2.3}'
    assert res["written"] == len(names)
    assert_one_clear_error(env.run("download", "imaging/study1", "-r"), "exactly one")


def test_ls_recursive(data: Data) -> None:
    env = data.env
    tree = env.ok("ls", "imaging/study1/sub-01", "-r", "--json").json()
    paths = [e["path"] for e in tree]
    assert paths == sorted(paths)
    assert {SESSION, ACQ, f"{ACQ}/scan.nii.gz", data.apath, f"{data.apath}/qc.json"} <= set(paths)
    kinds = {e["path"]: e["kind"] for e in tree}
    assert kinds[data.apath] == "analysis" and kinds[f"{ACQ}/scan.json"] == "file"
    text = env.ok("ls", "imaging/study1/sub-01", "--recursive").out
    assert f"analysis    {data.apath}\n" in text
    assert_one_clear_error(env.run("ls", "-r", f"{ACQ}/scan.json"), "is a file")


def test_download_reports_progress(data: Data, tmp_path: Path) -> None:
    from hpcgear.hierarchy.export import download_tree, plan_download

    with data.db.session() as s:
        items = plan_download(s, getpass.getuser(), "imaging/study1", recursive=True)
    calls: list[tuple[int, int, int, int, str]] = []
    report = download_tree(data.store, items, tmp_path / "p",
                           progress=lambda *a: calls.append(a))
    total = sum(i.size for i in items)
    assert [c[0] for c in calls] == list(range(1, len(items) + 1))
    assert calls[-1][1:4] == (len(items), total, total)
    assert report.bytes_written == total


# ------------------------------------------------------------------ views


def test_view_csv_tsv_json_filters_and_saved_views(data: Data) -> None:
    env = data.env
    env.ok("info", "set", f"{ACQ}/scan.nii.gz", "RepetitionTime=2.3")
    env.ok("info", "set", f"{SESSION}/rest/bold.nii.gz", "RepetitionTime=0.8")
    env.ok("classification", "set", f"{ACQ}/scan.nii.gz", "Measurement=T1")
    cols = ("subject.label,session.label,acquisition.label,file.name,"
            "file.classification.Measurement,file.info.RepetitionTime")
    res = env.ok("view", "imaging/study1", "--columns", cols, "--filter", "file.type=nifti")
    rows = list(csv.reader(io.StringIO(res.out)))
    assert rows[0] == cols.split(",")
    assert rows[1:] == [
        ["sub-01", "ses-01", "T1w", "scan.nii.gz", '["T1"]', "2.3"],
        ["sub-01", "ses-01", "rest", "bold.nii.gz", "", "0.8"],
    ] or sorted(rows[1:]) == sorted([
        ["sub-01", "ses-01", "T1w", "scan.nii.gz", '["T1"]', "2.3"],
        ["sub-01", "ses-01", "rest", "bold.nii.gz", "", "0.8"],
    ])
    tsv = env.ok("view", "imaging/study1", "--columns", "file.name,file.info.RepetitionTime",
                 "--filter", "file.info.RepetitionTime>1", "--format", "tsv").out
    assert tsv.splitlines() == ["file.name\tfile.info.RepetitionTime", "scan.nii.gz\t2.3"]
    js = env.ok("view", "imaging/study1", "--columns", "file.name",
                "--filter", "file.classification.Measurement=T1", "--json").json()
    assert js == [{"file.name": "scan.nii.gz"}]
    sessions = env.ok("view", "imaging/study1", "--columns", "subject.label,session.label",
                      "--level", "session", "--json").json()
    assert sessions == [{"subject.label": "sub-01", "session.label": "ses-01"},
                        {"subject.label": "sub-02", "session.label": "ses-01"}]
    regex = env.ok("view", "imaging/study1", "--columns", "acquisition.label",
                   "--filter", "acquisition.label=~^T", "--json").json()
    assert {r["acquisition.label"] for r in regex} == {"T1w"}
    outputs = env.ok("view", "imaging/study1", "--columns",
                     "session.label,acquisition.label,analysis.label,file.name",
                     "--filter", "analysis.label=~^mriqc", "--json").json()
    assert sorted(r["file.name"] for r in outputs) == ["qc.json", "report.html"]
    assert all(r["acquisition.label"] is None and r["session.label"] == "ses-01"
               for r in outputs)
    env.ok("view", "save", "imaging/study1", "tr-table", "--columns", cols,
           "--filter", "file.type=nifti")
    assert env.ok("view", "run", "imaging/study1", "tr-table").out == res.out
    listed = env.ok("view", "list", "imaging/study1", "--json").json()
    assert listed[0]["name"] == "tr-table" and listed[0]["filters"] == ["file.type=nifti"]
    assert env.run("view", "save", "imaging/study1", "tr-table", "--columns", "file.name"
                   ).code == 6
    env.ok("view", "save", "imaging/study1", "tr-table", "--columns", "file.name", "--replace")
    env.ok("view", "rm", "imaging/study1", "tr-table")
    assert env.ok("view", "list", "imaging/study1", "--json").json() == []
    for argv, needle in [
        (["--columns", "bogus"], "LEVEL.FIELD"),
        (["--columns", "file.nope"], "unknown field"),
        (["--columns", "file.name", "--filter", "file.name"], "COLUMN OP VALUE"),
        (["--columns", "file.name", "--level", "session"], "--level file"),
        (["--columns", "acquisition.label", "--level", "session"], "below"),
    ]:
        assert_one_clear_error(env.run("view", "imaging/study1", *argv), needle)
    assert_one_clear_error(env.run("view", "run", "imaging/study1", "nope"), "no view")


def test_file_level_view_lists_files_of_every_level(data: Data) -> None:
    """Files attached to a subject, a session or the project are rows too (their lower
    levels' columns empty), and filters and saved views see them."""
    env, src = data.env, data.tmp / "src"
    (src / "consent.pdf").write_bytes(b"%PDF-1.4 consent")
    (src / "sub-01_scans.tsv").write_text("filename\tacq_time\n")
    (src / "participants.tsv").write_text("participant_id\nsub-01\n")
    env.ok("upload", "imaging/study1/sub-01", str(src / "consent.pdf"))
    env.ok("upload", SESSION, str(src / "sub-01_scans.tsv"))
    env.ok("upload", "imaging/study1", str(src / "participants.tsv"))
    env.ok("info", "set", f"{SESSION}/sub-01_scans.tsv", "kind=scans")
    cols = "subject.label,session.label,acquisition.label,file.name,file.path"
    rows = env.ok("view", "imaging/study1", "--columns", cols, "--level", "file",
                  "--format", "json").json()
    by_name = {r["file.name"]: r for r in rows}
    assert set(by_name) == {"scan.nii.gz", "scan.json", "bold.nii.gz", "notes.txt",
                            "consent.pdf", "sub-01_scans.tsv", "participants.tsv"}
    assert by_name["consent.pdf"] == {
        "subject.label": "sub-01", "session.label": None, "acquisition.label": None,
        "file.name": "consent.pdf", "file.path": "imaging/study1/sub-01/consent.pdf"}
    assert by_name["sub-01_scans.tsv"]["session.label"] == "ses-01"
    assert by_name["sub-01_scans.tsv"]["acquisition.label"] is None
    assert by_name["participants.tsv"]["subject.label"] is None
    assert by_name["scan.nii.gz"]["acquisition.label"] == "T1w"
    info = env.ok("view", "imaging/study1", "--columns", "session.label,file.name",
                  "--filter", "file.info.kind=scans", "--format", "csv").out
    assert info.splitlines() == ["session.label,file.name", "ses-01,sub-01_scans.tsv"]
    only_subject = env.ok("view", "imaging/study1", "--columns", "file.name",
                          "--filter", "subject.label=sub-01", "--filter",
                          "file.name=~\\.(pdf|tsv)$", "--json").json()
    assert only_subject == [{"file.name": "consent.pdf"}, {"file.name": "sub-01_scans.tsv"}]
    # a recursive download takes them too, at their hierarchy paths
    plan = env.ok("download", "imaging/study1", "-r", "--dry-run", "--json").json()
    assert {"imaging/study1/participants.tsv", "imaging/study1/sub-01/consent.pdf",
            f"{SESSION}/sub-01_scans.tsv"} <= {f["path"] for f in plan["files"]}


def test_find(data: Data) -> None:
    env = data.env
    env.ok("tag", "add", "imaging/study1/sub-02", "pilot")
    env.ok("classification", "set", f"{ACQ}/scan.nii.gz", "Measurement=T1")
    env.ok("info", "set", f"{ACQ}/scan.json", "task=rest")
    hits = env.ok("find", "--tag", "pilot", "--json").json()
    assert [(h["kind"], h["path"]) for h in hits] == [("subject", "imaging/study1/sub-02")]
    hits = env.ok("find", "imaging/study1", "--type", "nifti", "--json").json()
    assert {h["label"] for h in hits} == {"scan.nii.gz", "bold.nii.gz"}
    hits = env.ok("find", "--classification", "Measurement=T1", "--json").json()
    assert [h["path"] for h in hits] == [f"{ACQ}/scan.nii.gz"]
    hits = env.ok("find", "--info", "task=rest", "--json").json()
    assert [h["path"] for h in hits] == [f"{ACQ}/scan.json"]
    hits = env.ok("find", "imaging", "--label", "sub-0*", "--kind", "subject", "--json").json()
    assert [h["label"] for h in hits] == ["sub-01", "sub-02"]
    hits = env.ok("find", "--kind", "analysis", "--json").json()
    assert [h["path"] for h in hits] == [data.apath]
    assert_one_clear_error(env.run("find"), "no search criterion")


# ------------------------------------------------------------------ roles

USERS = ("pa", "rw", "ro", "nobody")
# command -> (argv, users allowed besides the site admin)
ROLE_CASES: dict[str, tuple[list[str], set[str]]] = {
    "mv file": (["mv", f"{ACQ}/scan.json", f"{SESSION}/rest"], {"pa", "rw"}),
    "mv subject": (["mv", "imaging/study1/sub-02", "imaging/study2"], {"pa", "rw"}),
    "rename": (["rename", f"{SESSION}/rest", "rest2"], {"pa", "rw"}),
    "rm file": (["rm", f"{ACQ}/scan.json"], {"pa", "rw"}),
    "rm session": (["rm", SESSION], {"pa"}),
    "rm analysis": (["rm", "@ANALYSIS@"], {"pa"}),
    "rm analysis file": (["rm", "@ANALYSIS@/qc.json"], {"pa"}),
    "tag analysis": (["tag", "add", "@ANALYSIS@", "ok"], {"pa", "rw"}),
    "versions": (["versions", f"{ACQ}/scan.json"], {"pa", "rw", "ro"}),
    "find": (["find", "imaging/study1", "--label", "*"], {"pa", "rw", "ro"}),
    "info unset": (["info", "unset", ACQ, "k"], {"pa", "rw"}),
    "classification set": (["classification", "set", f"{ACQ}/scan.json", "Intent=x"],
                           {"pa", "rw"}),
    "note add": (["note", "add", SESSION, "hello"], {"pa", "rw"}),
    "view save": (["view", "save", "imaging/study1", "v", "--columns", "file.name"],
                  {"pa", "rw"}),
    "trash list": (["trash", "list"], set()),
    "trash purge": (["trash", "purge", "--older-than", "0"], set()),
    "history all": (["history"], set()),
    "history by id": (["history", "--id", "0" * 24], set()),
    "download": (["download", "imaging/study1", "-r", "--out", "@OUT@"], {"pa", "rw", "ro"}),
    "view": (["view", "imaging/study1", "--columns", "file.name"], {"pa", "rw", "ro"}),
}


@pytest.mark.parametrize("case", sorted(ROLE_CASES))
def test_role_checks_denials_change_nothing(data: Data, case: str, tmp_path: Path) -> None:
    env = data.env
    study2_only = "imaging/study2"
    for u in USERS:
        env.ok("user", "add", u)
    env.ok("role", "grant", "pa", "imaging/study1", "admin")
    env.ok("role", "grant", "pa", study2_only, "read-write")
    env.ok("role", "grant", "rw", "imaging/study1", "read-write")
    env.ok("role", "grant", "rw", study2_only, "read-write")
    env.ok("role", "grant", "ro", "imaging/study1", "read-only")
    env.ok("info", "set", ACQ, "k=v")
    argv, allowed = ROLE_CASES[case]
    argv = [a.replace("@ANALYSIS@", data.apath).replace("@OUT@", str(tmp_path / "o"))
            for a in argv]
    for user in USERS:
        if user in allowed:
            continue
        before = db_snapshot(env)
        res = env.run("--as", user, *argv)
        assert res.code == 4, f"{user} should be denied {case}: {res.code} {res.err}"
        assert_one_clear_error(res, "needs")
        assert db_snapshot(env) == before, f"denied {case} by {user} changed the DB"
    who = sorted(allowed)[0] if allowed else None
    res = env.run(*(["--as", who] if who else []), *argv)
    assert res.code == 0, f"{who or 'site admin'} should be allowed {case}: {res.err}"


def test_moving_into_a_project_needs_write_there(data: Data) -> None:
    env = data.env
    env.ok("user", "add", "rw")
    env.ok("role", "grant", "rw", "imaging/study1", "read-write")
    before = db_snapshot(env)
    res = env.run("--as", "rw", "mv", "imaging/study1/sub-02", "imaging/study2")
    assert res.code == 4 and "study2" in res.err
    assert db_snapshot(env) == before


def test_ls_json_of_an_analysis_path_on_parent_listing(data: Data) -> None:
    listed = data.env.ok("ls", SESSION, "--json").json()
    kinds = sorted(e["kind"] for e in listed)
    assert kinds == ["acquisition", "acquisition", "analysis"]
    assert data.analysis["job_id"] == data.job_id


# ------------------------------------------------------- the fix-up story


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_fixup_story_unsorted_move_analyse_download_view(data: Data, tmp_path: Path) -> None:
    """Ingest mis-routed -> Unsorted, mv into the project, analyse, download, view as CSV.

    The gear's run is the real publish + provenance code without the scheduler;
    tests/integration/test_data_fixup.py runs the same story on SLURM + Apptainer.
    """
    from hpcgear.storage.objects import sha256_file
    from tests.unit.test_ingest_dicom import write_series

    env = data.env
    dicom = tmp_path / "dicom"
    write_series(dicom, study="fix", series="t1", number=2, description="t1_mprage_sag",
                 count=2, accession="typo/sub-07/ses-01")
    res = env.ok("ingest", "dicom", str(dicom), "--group", "imaging", "--json").json()
    session = next(s for s in res["sessions"] if s["unsorted_reason"])
    parts = session["path"].split("/")
    assert parts[:2] == ["imaging", "Unsorted"]
    subject_path = "/".join(parts[:3])
    env.ok("mv", subject_path, "imaging/study1")
    session_path = f"imaging/study1/{parts[2]}/{parts[3]}"
    acq = next(e for e in env.ok("ls", session_path, "--json").json()
               if e["kind"] == "acquisition")
    acq_path = f"{session_path}/{acq['label']}"
    zip_entry = env.ok("ls", acq_path, "--json").json()[0]
    session_id = _container_id(env, f"imaging/study1/{parts[2]}", parts[3])
    data.publish(session_id, zip_entry["id"], {"stats.csv": b"roi,vol\nhippo,4100\n"},
                 gear="volumetry")
    analysis = next(e for e in env.ok("ls", session_path, "--json").json()
                    if e["kind"] == "analysis")
    analysis_path = f"{session_path}/{analysis['label']}"
    out = tmp_path / "results"
    env.ok("download", analysis_path, "--out", str(out))
    got = out / analysis_path / "stats.csv"
    assert got.read_bytes() == b"roi,vol\nhippo,4100\n"
    listed = env.ok("ls", analysis_path, "--json").json()
    assert sha256_file(got) == next(e["hash"] for e in listed if e["name"] == "stats.csv")
    table = env.ok("view", "imaging/study1", "--columns",
                   "subject.label,session.label,acquisition.label,file.name,"
                   "file.classification.Measurement", "--format", "csv").out
    rows = [r for r in csv.DictReader(io.StringIO(table)) if r["subject.label"] == parts[2]]
    assert [(r["acquisition.label"], r["file.name"], r["file.classification.Measurement"])
            for r in rows] == [(acq["label"], zip_entry["name"], '["T1"]')]


def test_moving_into_a_project_runs_its_rules(data: Data) -> None:
    """A subject rescued into a project is treated as if it had been routed there."""
    env = data.env
    from tests.conftest import REPO

    env.ok("gear", "install", str(REPO / "containers" / "test-gear"))
    env.ok("rule", "add", "imaging/study2", "--name", "nifti-qc", "--gear", "test-gear",
           "--when", "file.type=nifti")
    assert env.ok("rules", "evaluate", "--json").json()["jobs_created"] == 0
    env.ok("mv", "imaging/study1/sub-01", "imaging/study2")
    out = env.ok("rules", "evaluate", "--json").json()
    assert out["jobs_created"] == 2, out  # scan.nii.gz and bold.nii.gz
    dests = {j["destination"] for j in env.ok("jobs", "--json").json()
             if j["gear"].startswith("test-gear")}
    assert dests == {"imaging/study2/sub-01/ses-01/T1w", "imaging/study2/sub-01/ses-01/rest"}
    # files never move into an analysis (it holds one job's outputs)
    assert_one_clear_error(
        env.run("mv", "imaging/study1/sub-02/ses-01/T1w/notes.txt",
                f"imaging/study2/sub-01/ses-01/{data.analysis['label']}"),
        "is an analysis")


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_moving_a_second_copy_of_a_study_is_refused(data: Data, tmp_path: Path) -> None:
    from tests.unit.test_ingest_dicom import write_series

    env = data.env
    dicom = tmp_path / "dicom"
    write_series(dicom, study="dup", series="t1", number=2, description="t1", count=1,
                 accession="typo/sub-07/ses-01")
    first = env.ok("ingest", "dicom", str(dicom), "--group", "imaging", "--json").json()
    subject_path = "/".join(first["sessions"][0]["path"].split("/")[:3])
    env.ok("mv", subject_path, "imaging/study1")
    env.ok("ingest", "dicom", str(dicom), "--group", "imaging")  # Unsorted again: a copy
    env.ok("rename", subject_path, "copy")
    before = db_snapshot(env)
    res = env.run("mv", "imaging/Unsorted/copy", "imaging/study1")
    assert res.code == 6
    assert_one_clear_error(res, "same study/series")
    assert db_snapshot(env) == before


@pytest.mark.postgres
def test_concurrent_classification_edits_both_land(tmp_path: Path) -> None:
    """Two editors at once on PostgreSQL: the row lock serialises them, nothing is lost.

    PostgreSQL only: SQLite admits one writer at a time, so the race cannot happen there.
    """
    from tests.conftest import _pg_create, _pg_drop

    db_url, name = _pg_create()
    try:
        _race(db_url, tmp_path)
    finally:
        _pg_drop(name)


def _race(db_url: str, tmp_path: Path) -> None:
    import threading
    import time

    from hpcgear.db.session import Database, create_db_engine, upgrade
    from hpcgear.hierarchy import metadata, service
    from hpcgear.storage.objects import ObjectStore

    engine = create_db_engine(db_url)
    upgrade(engine)
    db = Database(engine)
    store = ObjectStore(tmp_path / "s")
    store.ensure()
    src = tmp_path / "f.nii.gz"
    src.write_bytes(b"x")
    with db.session() as s:
        service.add_user(s, None, "admin", site_admin=True)
        service.create_group(s, "admin", "g")
        service.create_project(s, "admin", "g/p")
        service.upload_files(s, store, "admin", "g/p/s/ses/a", [src])
    path = "g/p/s/ses/a/f.nii.gz"
    a_locked, errors = threading.Event(), []

    def first() -> None:
        try:
            with db.session() as s:
                metadata.add_classification(s, "admin", path, ["Features=A"])
                a_locked.set()
                time.sleep(1.0)  # hold the row lock while the other editor starts
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def second() -> None:
        a_locked.wait(10)
        try:
            with db.session() as s:
                metadata.add_classification(s, "admin", path, ["Features=B"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with db.session() as s:
        _c, f = service.resolve_file(s, "admin", path, service.RoleName.READ_ONLY)
        assert sorted(f.classification["Features"]) == ["A", "B"]
    db.dispose()


def test_move_an_acquisition_and_an_analysis(data: Data) -> None:
    """mv takes every kind the issue names: here an acquisition and an analysis, each
    keeping its id, its files and the job that made the analysis, each move recorded."""
    env = data.env
    acq_id = _container_id(env, SESSION, "rest")
    other = "imaging/study1/sub-02/ses-01"
    before = db_snapshot(env)
    assert_one_clear_error(env.run("mv", ACQ, other), "already has an acquisition 'T1w'")
    assert db_snapshot(env) == before
    moved = env.ok("mv", f"{SESSION}/rest", other, "--json").json()
    assert (moved["kind"], moved["id"], moved["to"]) == ("acquisition", acq_id, f"{other}/rest")
    assert {e["name"] for e in env.ok("ls", f"{other}/rest", "--json").json()} == {
        "bold.nii.gz"}
    moved = env.ok("mv", data.apath, other, "--json").json()
    assert (moved["kind"], moved["id"]) == ("analysis", data.analysis["id"])
    entry = next(e for e in env.ok("ls", other, "--json").json() if e["kind"] == "analysis")
    assert entry["job_id"] == data.job_id
    assert "report.html" in {e["name"] for e in env.ok(
        "ls", f"{other}/{entry['label']}", "--json").json()}
    assert "report.html" in env.ok("provenance", "show", data.job_id).out
    hist = env.ok("history", "--json").json()
    assert [(h["action"], h["to"]) for h in hist][-2:] == [
        ("move", f"{other}/rest"), ("move", f"{other}/{entry['label']}")]
    # an analysis holds files, not containers: nothing moves into it
    assert_one_clear_error(env.run("mv", f"{other}/rest", f"{other}/{entry['label']}"), "")
