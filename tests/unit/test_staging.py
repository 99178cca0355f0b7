"""Stage-in, stage-out and scratch GC against real directories.

Two transports run every path: ``LocalTransport`` (the in-process code path)
and ``ShellTransport``, which is not a LocalTransport, so staging takes its
*remote* code path (SFTP-style put/get plus ``find``/``sha256sum`` run as real
subprocesses) on this host's file system. Only what the SSH transport itself
does differently is left to tests/integration/test_staging_ssh.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcgear.errors import StagingError
from hpcgear.render.paths import JobPaths
from hpcgear.scheduler.runner import CompletedCommand
from hpcgear.scheduler.transport import FileStat, LocalTransport, PathLike, Transport
from hpcgear.spec import GearRef, InputSpec, JobSpec, Resources, TreeFile
from hpcgear.staging.checksums import parse_sha256sum
from hpcgear.staging.gc import GcDecision, ScratchDir, list_scratch, plan_gc, remove_scratch
from hpcgear.staging.metadata import InvalidMetadataError
from hpcgear.staging.stagein import stage_in
from hpcgear.staging.stageout import (
    RawEntry,
    build_scan,
    fetch_file,
    fetch_outputs,
    parse_find_listing,
    read_metadata,
    read_text_file,
    remove_job_dir,
    scan_outputs,
)
from hpcgear.storage.objects import ObjectStore


class ShellTransport:
    """A Transport that is not LocalTransport: staging's remote path, on this host."""

    def __init__(self) -> None:
        self.local = LocalTransport()
        self.commands: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        self.commands.append(tuple(argv))
        return self.local.run(argv, timeout=timeout, input=input)

    def put(self, local: PathLike, remote: PathLike, *, mode: int | None = None) -> None:
        self.local.put(local, remote, mode=mode)

    def get(self, remote: PathLike, local: PathLike) -> None:
        self.local.get(remote, local)

    def read_text(self, path: PathLike) -> str:
        return self.local.read_text(path)

    def write_text(self, path: PathLike, text: str, *, mode: int = 0o600) -> None:
        self.local.write_text(path, text, mode=mode)

    def mkdir(self, path: PathLike, *, mode: int = 0o700, parents: bool = True) -> None:
        self.local.mkdir(path, mode=mode, parents=parents)

    def remove_tree(self, path: PathLike) -> None:
        self.local.remove_tree(path)

    def exists(self, path: PathLike) -> bool:
        return self.local.exists(path)

    def listdir(self, path: PathLike) -> list[str]:
        return self.local.listdir(path)

    def stat(self, path: PathLike) -> FileStat:
        return self.local.stat(path)

    def close(self) -> None:
        return None


class CorruptingTransport(ShellTransport):
    """Puts arrive damaged (a flaky link): stage-in must notice."""

    def put(self, local: PathLike, remote: PathLike, *, mode: int | None = None) -> None:
        super().put(local, remote, mode=mode)
        with open(remote, "ab") as fh:
            fh.write(b"!")


class DyingTransport(ShellTransport):
    """The stager dies half-way: the n-th get raises."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.gets = 0

    def get(self, remote: PathLike, local: PathLike) -> None:
        self.gets += 1
        if self.gets == self.fail_at:
            Path(local).write_bytes(b"partial")
            raise KeyboardInterrupt("killed mid-copy")
        super().get(remote, local)


TRANSPORTS = [pytest.param(LocalTransport, id="local"), pytest.param(ShellTransport, id="shell")]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    s = ObjectStore(tmp_path / "storage")
    s.ensure()
    return s


def make_spec(store: ObjectStore, inputs: dict[str, tuple[str, bytes]]) -> JobSpec:
    specs = []
    for name, (file_name, data) in inputs.items():
        obj = store.put_bytes(data)
        specs.append(InputSpec(name=name, base="file", file_id=f"id-{name}", version=1,
                               file_name=file_name, sha256=obj.hash, size=obj.size))
    gear = GearRef("test-gear", "1.0.0", "sha256:" + "0" * 64, "/img.sif", "sha256:" + "1" * 64,
                   "/img.sif", None)
    return JobSpec(job_id="job1", attempt=1, gear=gear, config={"x": 1}, inputs=tuple(specs),
                   destination_type="acquisition", destination_id="acq1", resources=Resources(),
                   site="local", user="alice")


@pytest.fixture
def paths(tmp_path: Path) -> JobPaths:
    return JobPaths.for_job(str(tmp_path / "scratch"), "job1", 1)


def do_stage_in(t: Transport, store: ObjectStore, spec: JobSpec, paths: JobPaths):  # type: ignore[no-untyped-def]
    return stage_in(t, store, spec, paths, config_json={"config": {"x": 1}},
                    gear_env="A='1'\n", script_text="#!/bin/bash\necho hi\n")


# --------------------------------------------------------------------- stage-in


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_stage_in_layout_modes_and_fresh_mtimes(transport_cls: type, store: ObjectStore,
                                                 paths: JobPaths) -> None:
    t = transport_cls()
    spec = make_spec(store, {"dicom": ("scan one.dcm", b"DICM" * 100),
                             "extra": ("$(x) notes.txt", b"hello")})
    for inp in spec.inputs:  # an old stored object must not give the scratch copy its mtime
        os.utime(store.path_for(inp.sha256 or ""), (1e9, 1e9))
    res = do_stage_in(t, store, spec, paths)
    for d in paths.directories():
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(paths.env_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(paths.config_json).st_mode) == 0o600
    assert json.loads(Path(paths.config_json).read_text()) == {"config": {"x": 1}}
    assert Path(paths.sbatch).read_text() == "#!/bin/bash\necho hi\n"
    assert res.script_sha256 == sha(b"#!/bin/bash\necho hi\n")
    staged = Path(paths.input_file("dicom", "scan one.dcm"))
    assert staged.read_bytes() == b"DICM" * 100
    assert time.time() - staged.stat().st_mtime < 60
    assert not stat.S_IMODE(staged.stat().st_mode) & 0o077
    assert [f.copied for f in res.inputs] == [True, True]
    assert {f.sha256 for f in res.inputs} == {i.sha256 for i in spec.inputs}
    if isinstance(t, ShellTransport):  # verified on the far side with sha256sum
        assert any(c[0] == "sha256sum" for c in t.commands)


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_stage_in_rerun_finishes_a_half_staged_dir(transport_cls: type, store: ObjectStore,
                                                   paths: JobPaths) -> None:
    t = transport_cls()
    spec = make_spec(store, {"a": ("a.txt", b"aaa"), "b": ("b.txt", b"bbb"),
                             "c": ("c.txt", b"ccc")})
    do_stage_in(t, store, spec, paths)
    # a crash left: one input missing, one damaged, a temp file, a stray input dir,
    # outputs and an exit record of the try that never got submitted
    os.unlink(paths.input_file("a", "a.txt"))
    Path(paths.input_file("b", "b.txt")).write_bytes(b"bXb")
    Path(paths.input_dir, "b", ".b.txt.tmp-1234").write_bytes(b"partial")
    os.mkdir(os.path.join(paths.input_dir, "stale"))
    Path(paths.output_dir, "old.txt").write_text("old")
    Path(paths.exit_json).write_text("{}")
    res = do_stage_in(t, store, spec, paths)
    assert {f.input_name: f.copied for f in res.inputs} == {"a": True, "b": True, "c": False}
    assert Path(paths.input_file("b", "b.txt")).read_bytes() == b"bbb"
    assert sorted(os.listdir(paths.input_dir)) == ["a", "b", "c"]
    assert os.listdir(os.path.join(paths.input_dir, "b")) == ["b.txt"]
    assert os.listdir(paths.output_dir) == []
    assert not os.path.exists(paths.exit_json)
    # and once more: nothing to copy
    again = do_stage_in(t, store, spec, paths)
    assert not any(f.copied for f in again.inputs)


def test_stage_in_detects_a_damaged_remote_copy(store: ObjectStore, paths: JobPaths) -> None:
    spec = make_spec(store, {"a": ("a.txt", b"payload")})
    with pytest.raises(StagingError, match="arrived as"):
        do_stage_in(CorruptingTransport(), store, spec, paths)


def test_stage_array_writes_trees_and_fails_only_the_bad_task(store: ObjectStore,
                                                               tmp_path: Path) -> None:
    """A BIDS view goes into tasks.dat under its directory; a task whose tree directory
    is unsafe, or whose object is corrupt in storage, fails alone."""
    from dataclasses import replace

    from hpcgear.staging.stagein import ArrayTask, stage_array

    spec = make_spec(store, {"in": ("a.txt", b"input")})
    nifti = store.put_bytes(b"nifti bytes")
    bad = store.put_bytes(b"will be damaged")
    bad.path.chmod(0o600)
    bad.path.write_bytes(b"damaged bytes")
    tree = [TreeFile("dataset_description.json", text="{}\n"),
            TreeFile("sub-01/anat/sub-01_T1w.nii.gz", sha256=nifti.hash, size=nifti.size)]
    root = tmp_path / "scratch"
    tasks = [
        ArrayTask(spec, JobPaths.for_job(str(root), "job1", 1), {"config": {}}, "A='1'\n",
                  tree, "work/bids"),
        ArrayTask(replace(spec, job_id="job2"), JobPaths.for_job(str(root), "job2", 1),
                  {"config": {}}, "A='1'\n", tree, "../escape"),
        ArrayTask(replace(spec, job_id="job3", inputs=(replace(spec.inputs[0],
                                                                 sha256=bad.hash),)),
                  JobPaths.for_job(str(root), "job3", 1), {"config": {}}, "A='1'\n"),
    ]
    root.mkdir()
    dat = str(root / "tasks.dat")
    res = stage_array(LocalTransport(), store, dat, tasks)
    assert sorted(res.errors) == [1, 2]
    assert "tree directory" in res.errors[1].message
    assert "corrupt" in res.errors[2].message
    files = res.files[0]
    assert files is not None and res.files[1] is None and res.files[2] is None
    data = Path(dat).read_bytes()
    got = {f.relpath: data[f.offset:f.offset + f.length] for f in files}
    assert got == {
        "flywheel/v0/config.json": b'{\n  "config": {}\n}\n',
        ".hpcgear/gear.env": b"A='1'\n",
        "flywheel/v0/input/in/a.txt": b"input",
        "flywheel/v0/work/bids/dataset_description.json": b"{}\n",
        "flywheel/v0/work/bids/sub-01/anat/sub-01_T1w.nii.gz": b"nifti bytes",
    }
    assert all(hashlib.sha256(got[f.relpath]).hexdigest() == f.sha256 for f in files)
    # the corrupt object's bytes were taken back out of the file
    assert b"damaged" not in data
    assert stat.S_IMODE(os.stat(dat).st_mode) == 0o600


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_stage_in_missing_object_is_a_staging_error(transport_cls: type, store: ObjectStore,
                                                    paths: JobPaths) -> None:
    spec = make_spec(store, {"a": ("a.txt", b"gone")})
    store.delete(spec.inputs[0].sha256 or "")
    with pytest.raises(StagingError, match="missing from storage"):
        do_stage_in(transport_cls(), store, spec, paths)


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
@pytest.mark.parametrize("where", ["work/bids", "input/bids"])
def test_stage_in_writes_a_tree_afresh_and_verified(transport_cls: type, where: str,
                                                    store: ObjectStore, paths: JobPaths) -> None:
    """A BIDS view: stored objects copied hash-checked, generated text written, the tree
    rewritten on every stage-in (nothing stale survives), input dirs left alone."""
    t = transport_cls()
    spec = make_spec(store, {"a": ("a.txt", b"aaa")})
    nii = store.put_bytes(b"NIFTI" * 50)
    tree = [TreeFile("sub-01/anat/sub-01_T1w.nii", sha256=nii.hash, size=nii.size,
                     file_id="f1", version=1),
            TreeFile("sub-01/anat/sub-01_T1w.json", text='{"RepetitionTime": 2.3}'),
            TreeFile("dataset_description.json", text='{"Name": "x"}')]

    def stage(files: Sequence[TreeFile]):  # type: ignore[no-untyped-def]
        return stage_in(t, store, spec, paths, config_json={}, gear_env="", script_text="",
                        tree=files, tree_dir=where)

    res = stage(tree)
    root = Path(paths.flywheel) / where
    assert res.tree_dir == str(root) and res.tree_files == 3
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert got == sorted(f.path for f in tree)
    assert (root / "sub-01/anat/sub-01_T1w.nii").read_bytes() == b"NIFTI" * 50
    assert json.loads((root / "sub-01/anat/sub-01_T1w.json").read_text()) == {
        "RepetitionTime": 2.3}
    for p in root.rglob("*"):
        assert not stat.S_IMODE(p.stat().st_mode) & 0o077, p
    assert Path(paths.input_file("a", "a.txt")).read_bytes() == b"aaa"
    if isinstance(t, ShellTransport):
        assert any(c[0] == "sha256sum" and any("T1w.nii" in a for a in c) for c in t.commands)
    # staged again with a smaller tree: the old files are gone
    (root / "stale.txt").write_text("from an earlier try")
    stage(tree[1:])
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert got == sorted(f.path for f in tree[1:])


@pytest.mark.parametrize("bad", [
    TreeFile("../escape.txt", text="x"),
    TreeFile("/etc/x", text="x"),
    TreeFile("a//b", text="x"),
    TreeFile("both.txt", text="x", sha256="sha256:" + "0" * 64),
    TreeFile("none.txt"),
])
def test_stage_in_refuses_a_bad_tree(bad: TreeFile, store: ObjectStore, paths: JobPaths) -> None:
    spec = make_spec(store, {})
    with pytest.raises(StagingError, match="tree file"):
        stage_in(LocalTransport(), store, spec, paths, config_json={}, gear_env="",
                 script_text="", tree=[bad], tree_dir="work/bids")
    assert not (Path(paths.root).parent / "escape.txt").exists()
    for where in ("bids", "work", "work/../../x", "/work/bids", "output/bids"):
        with pytest.raises(StagingError, match="not below"):
            stage_in(LocalTransport(), store, spec, paths, config_json={}, gear_env="",
                     script_text="", tree=[], tree_dir=where)


def test_stage_in_tree_object_missing_from_storage(store: ObjectStore, paths: JobPaths) -> None:
    spec = make_spec(store, {})
    gone = TreeFile("sub-01/anat/x.nii", sha256="sha256:" + "ab" * 32, size=3)
    with pytest.raises(StagingError, match="missing from storage"):
        stage_in(LocalTransport(), store, spec, paths, config_json={}, gear_env="",
                 script_text="", tree=[gone], tree_dir="work/bids")


# -------------------------------------------------------------------- stage-out


def hostile_outputs(out: Path) -> None:
    (out / "good.txt").write_bytes(b"good")
    (out / "sub" / "deeper").mkdir(parents=True)
    (out / "sub" / "a.txt").write_bytes(b"a")
    (out / "sub" / "deeper" / "b.txt").write_bytes(b"b")
    (out / "sub" / "link-up.txt").symlink_to("../good.txt")  # in-tree: accepted
    (out / "alias.txt").symlink_to("good.txt")  # in-tree: accepted
    (out / "passwd").symlink_to("/etc/passwd")  # absolute
    (out / "escape").symlink_to("../../../../../../etc/passwd")  # relative, outside
    (out / "sneaky").symlink_to("sub/../../flywheel")  # outside via ..
    (out / "dirlink").symlink_to("sub")  # symlinked directory
    (out / "sub" / "etc").symlink_to("/etc")  # absolute, inside a zipped dir
    (out / "sub" / "dl").symlink_to("deeper")  # symlinked dir inside a zipped dir
    (out / "dangling").symlink_to("nope.txt")
    (out / "loop1").symlink_to("loop2")
    (out / "loop2").symlink_to("loop1")
    os.mkfifo(out / "pipe")
    (out / ".metadata.json").write_text('{"acquisition": {}}')


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_scan_refuses_escapes_and_special_files(transport_cls: type, paths: JobPaths) -> None:
    out = Path(paths.output_dir)
    out.mkdir(parents=True)
    hostile_outputs(out)
    scan = scan_outputs(transport_cls(), paths)
    refused = {r.relpath: r.reason for r in scan.refused}
    assert set(refused) == {"passwd", "escape", "sneaky", "dirlink", "sub/etc", "sub/dl",
                            "dangling", "loop1", "loop2", "pipe"}
    assert "absolute symlink" in refused["passwd"]
    assert "outside" in refused["escape"] and "outside" in refused["sneaky"]
    assert "symlinked directory" in refused["dirlink"]
    assert "absolute symlink" in refused["sub/etc"]
    assert "symlinked directory" in refused["sub/dl"]
    assert "fifo" in refused["pipe"]
    assert "loop" in refused["loop1"]
    assert scan.output_names == ("alias.txt", "good.txt", "sub.zip")
    by_rel = {f.relpath: f for f in scan.files}
    assert by_rel["alias.txt"].sha256 == sha(b"good") and by_rel["alias.txt"].source == "good.txt"
    assert by_rel["sub/link-up.txt"].source == "good.txt"
    assert by_rel["sub/deeper/b.txt"].sha256 == sha(b"b")
    assert scan.metadata is not None and scan.metadata.relpath == ".metadata.json"
    assert ".metadata.json" not in scan.output_names


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_output_dir_replaced_by_a_symlink_is_refused(transport_cls: type, paths: JobPaths,
                                                     tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret").write_text("s")
    Path(paths.output_dir).parent.mkdir(parents=True)
    Path(paths.output_dir).symlink_to(elsewhere)
    with pytest.raises(StagingError, match="not a plain directory"):
        scan_outputs(transport_cls(), paths)


def test_crafted_listing_with_dotdot_is_refused() -> None:
    # what a hostile or broken `find` could print; nothing in it may be read
    stdout = "".join(f"{k}\0{s}\0{lnk}\0{p}\0" for k, s, lnk, p in [
        ("f", "4", "", "../x"), ("f", "4", "", "a/../../y"), ("f", "1", "", "ok.txt"),
        ("f", "1", "", "/etc/shadow"), ("d", "0", "", "d"), ("f", "1", "", "d/./z"),
    ])
    raw = parse_find_listing(stdout)
    scan = build_scan("/scratch/out", raw, {"../x": sha(b"x"), "ok.txt": sha(b"1"),
                                            "a/../../y": sha(b"y")})
    assert scan.output_names == ("ok.txt",)
    assert {r.relpath for r in scan.refused} == {"../x", "a/../../y", "/etc/shadow", "d/./z"}
    with pytest.raises(StagingError, match="truncated"):
        parse_find_listing("f\x004\x00")


def test_names_the_hierarchy_cannot_hold_are_refused() -> None:
    raw = [RawEntry("tab\there.txt", "f", 1), RawEntry("back\\slash", "f", 1),
           RawEntry("fine", "f", 1)]
    scan = build_scan("/o", raw, {r.relpath: sha(b"1") for r in raw})
    assert scan.output_names == ("fine",)
    assert {r.relpath for r in scan.refused} == {"tab\there.txt", "back\\slash"}


def test_sha256sum_escaped_names_round_trip() -> None:
    line = "\\" + "a" * 64 + "  dir/new\\nline\\\\x\n" + "b" * 64 + "  plain name\n"
    assert parse_sha256sum(line) == {"dir/new\nline\\x": "sha256:" + "a" * 64,
                                     "plain name": "sha256:" + "b" * 64}


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_fetch_outputs_verified_and_zip_is_reproducible(transport_cls: type, store: ObjectStore,
                                                        paths: JobPaths) -> None:
    out = Path(paths.output_dir)
    out.mkdir(parents=True)
    hostile_outputs(out)
    t = transport_cls()
    scan = scan_outputs(t, paths)
    stored = fetch_outputs(t, store, scan)
    by_name = {s.name: s for s in stored}
    assert set(by_name) == {"alias.txt", "good.txt", "sub.zip"}
    assert by_name["good.txt"].sha256 == sha(b"good") and store.exists(sha(b"good"))
    zpath = store.path_for(by_name["sub.zip"].sha256)
    with zipfile.ZipFile(zpath) as zf:
        assert sorted(zf.namelist()) == ["sub/a.txt", "sub/deeper/b.txt", "sub/link-up.txt"]
        assert zf.read("sub/link-up.txt") == b"good"
    assert by_name["sub.zip"].members == 3
    time.sleep(0.01)
    os.utime(out / "sub" / "a.txt")  # mtimes do not change the archive
    again = fetch_outputs(t, store, scan_outputs(t, paths))
    assert {s.name: s.sha256 for s in again} == {s.name: s.sha256 for s in stored}
    assert list((store.root / "tmp").iterdir()) == []


def test_zip_name_does_not_collide_with_a_file(store: ObjectStore, paths: JobPaths) -> None:
    out = Path(paths.output_dir)
    (out / "res").mkdir(parents=True)
    (out / "res" / "x").write_bytes(b"x")
    (out / "res.zip").write_bytes(b"the gear's own zip")
    scan = scan_outputs(LocalTransport(), paths)
    assert scan.output_names == ("res.dir.zip", "res.zip")


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_file_changed_after_scan_is_refused(transport_cls: type, store: ObjectStore,
                                            paths: JobPaths) -> None:
    out = Path(paths.output_dir)
    (out / "d").mkdir(parents=True)
    (out / "f.txt").write_bytes(b"before")
    (out / "d" / "g.txt").write_bytes(b"before")
    t = transport_cls()
    scan = scan_outputs(t, paths)
    (out / "f.txt").write_bytes(b"after!")
    (out / "d" / "g.txt").write_bytes(b"after!")
    with pytest.raises(StagingError):
        fetch_outputs(t, store, scan)
    assert not store.exists(sha(b"after!"))


def test_swapped_in_symlink_is_not_followed(store: ObjectStore, paths: JobPaths) -> None:
    out = Path(paths.output_dir)
    out.mkdir(parents=True)
    (out / "f.txt").write_bytes(b"x")
    scan = scan_outputs(LocalTransport(), paths)
    (out / "f.txt").unlink()
    (out / "f.txt").symlink_to("/etc/passwd")
    with pytest.raises(StagingError):
        fetch_outputs(LocalTransport(), store, scan)


def test_killed_mid_copy_then_rerun_stores_exactly_the_outputs(store: ObjectStore,
                                                               paths: JobPaths) -> None:
    out = Path(paths.output_dir)
    out.mkdir(parents=True)
    for i in range(4):
        (out / f"f{i}.txt").write_bytes(f"content {i}".encode())
    scan = scan_outputs(ShellTransport(), paths)
    with pytest.raises(KeyboardInterrupt):
        fetch_outputs(DyingTransport(fail_at=3), store, scan)
    stored = fetch_outputs(ShellTransport(), store, scan)
    assert sorted(s.name for s in stored) == [f"f{i}.txt" for i in range(4)]
    for s in stored:
        assert store.path_for(s.sha256).read_bytes() == (out / s.name).read_bytes()
    assert not any(p.is_file() and p.read_bytes() == b"partial"
                   for p in store.objects.rglob("*"))


def test_metadata_symlink_and_size(store: ObjectStore, paths: JobPaths) -> None:
    out = Path(paths.output_dir)
    out.mkdir(parents=True)
    (out / "m.json").write_text("{}")
    (out / ".metadata.json").symlink_to("m.json")
    scan = scan_outputs(LocalTransport(), paths)
    with pytest.raises(InvalidMetadataError, match="symlink"):
        read_metadata(LocalTransport(), scan)
    (out / ".metadata.json").unlink()
    (out / ".metadata.json").write_text('{"acquisition": {}}')
    for t in (LocalTransport(), ShellTransport()):
        scan = scan_outputs(t, paths)
        assert read_metadata(t, scan) == '{"acquisition": {}}'
        with pytest.raises(InvalidMetadataError, match="at most"):
            read_metadata(t, scan, max_bytes=5)


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_logs_read_and_stored(transport_cls: type, store: ObjectStore, paths: JobPaths) -> None:
    t = transport_cls()
    Path(paths.meta_dir).mkdir(parents=True)
    log = Path(paths.log_file("42"))
    log.write_bytes(b"line 1\n\xff bad utf8\nlast line\n")
    assert read_text_file(t, str(log), max_bytes=10) == "last line\n"
    assert "\ufffd bad utf8" in (read_text_file(t, str(log)) or "")
    assert read_text_file(t, str(log) + ".none") is None
    stored = fetch_file(t, store, str(log), name="gear.log")
    assert stored is not None and stored.sha256 == sha(log.read_bytes())
    assert store.path_for(stored.sha256).read_bytes() == log.read_bytes()
    assert fetch_file(t, store, str(log) + ".none") is None


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_remove_job_dir(transport_cls: type, store: ObjectStore, paths: JobPaths) -> None:
    spec = make_spec(store, {"a": ("a.txt", b"a")})
    do_stage_in(transport_cls(), store, spec, paths)
    other = JobPaths.for_job(str(Path(paths.root).parents[2]), "job1", 2)
    os.makedirs(other.root)
    remove_job_dir(transport_cls(), paths)
    assert not os.path.exists(paths.root)
    assert os.path.exists(other.root)  # a sibling attempt keeps the job dir
    remove_job_dir(transport_cls(), other)
    assert not os.path.exists(os.path.dirname(other.root))


# ---------------------------------------------------------------------------- gc


def test_plan_gc_never_removes_a_live_job() -> None:
    now = 1_000_000.0
    dirs = [ScratchDir("live", 1, "/s/hpcgear/live/a1", now - 90 * 86400),
            ScratchDir("done", 1, "/s/hpcgear/done/a1", now - 9 * 86400),
            ScratchDir("recent", 1, "/s/hpcgear/recent/a1", now - 3600),
            ScratchDir("ghost", 2, "/s/hpcgear/ghost/a2", now - 30 * 86400)]
    got = {d.job_id: d for d in plan_gc(dirs, live_job_ids={"live"},
                                        known_job_ids={"live", "done", "recent"}, now=now,
                                        older_than_seconds=7 * 86400)}
    assert got["live"].action == "keep" and got["live"].reason == "job is live"
    assert got["done"].action == "remove"
    assert got["recent"].action == "keep"
    assert got["ghost"].action == "remove" and "unknown job" in got["ghost"].reason


@pytest.mark.parametrize("transport_cls", TRANSPORTS)
def test_list_and_remove_scratch(transport_cls: type, tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    old = time.time() - 30 * 86400
    for job in ("live", "done"):
        meta = root / "hpcgear" / job / "a1" / ".hpcgear"
        meta.mkdir(parents=True)
        (meta / "slurm-1.out").write_text("x")
        for p in (meta / "slurm-1.out", meta, meta.parent):
            os.utime(p, (old, old))
    (root / "hpcgear" / "arrays" / "arr1").mkdir(parents=True)
    (root / "hpcgear" / "not a job" / "a1").mkdir(parents=True)
    t = transport_cls()
    dirs = list_scratch(t, str(root))
    assert [(d.job_id, d.attempt) for d in dirs] == [("done", 1), ("live", 1)]
    assert all(abs(d.activity - old) < 5 for d in dirs)
    decisions = plan_gc(dirs, live_job_ids={"live"}, now=time.time(),
                        older_than_seconds=86400)
    removed = remove_scratch(t, decisions)
    assert [d.job_id for d in removed] == ["done"]
    assert (root / "hpcgear" / "live" / "a1" / ".hpcgear" / "slurm-1.out").exists()
    assert not (root / "hpcgear" / "done").exists()
    assert (root / "hpcgear" / "arrays" / "arr1").exists()
    assert list_scratch(t, str(tmp_path / "nowhere")) == []
    assert remove_scratch(t, [GcDecision("x", 1, str(root / "hpcgear" / "live" / "a1"), 0.0,
                                         "keep", "")]) == []

