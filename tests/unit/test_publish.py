"""Publishing stored outputs into the hierarchy (SQLite and PostgreSQL).

Outputs go from a real scratch directory through scan_outputs/fetch_outputs
into the object store and then through publish_outputs, as the controller
does it; a crash between any two steps is followed by a rerun.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpcgear.controller.publish import find_analysis, publish_outputs
from hpcgear.db.models import ChangeLog, Container, File, FileVersion, Gear, Job, JobEvent
from hpcgear.hierarchy.service import (
    add_user,
    create_group,
    create_project,
    new_id,
    upload_files,
)
from hpcgear.render.paths import JobPaths
from hpcgear.scheduler.transport import LocalTransport
from hpcgear.staging.metadata import InvalidMetadataError, parse_metadata
from hpcgear.staging.stageout import (
    StoredOutput,
    fetch_file,
    fetch_outputs,
    read_metadata,
    scan_outputs,
)
from hpcgear.storage.objects import ObjectStore

ADMIN = "admin"
CONTROLLER = "hpcgear-controller"


@dataclass
class World:
    db: Any
    store: ObjectStore
    acq_id: str
    session_id: str
    input_file_id: str
    tmp: Path


def make_world(db: Any, tmp_path: Path) -> World:
    store = ObjectStore(tmp_path / "storage")
    store.ensure()
    src = tmp_path / "scan.dicom.zip"
    src.write_bytes(b"DICM" * 64)
    with db.session() as s:
        add_user(s, None, ADMIN, site_admin=True)
        create_group(s, ADMIN, "lab")
        create_project(s, ADMIN, "lab/p1")
        res = upload_files(s, store, ADMIN, "lab/p1/sub1/ses1/T1w", [src])
        acq = s.get(Container, s.get(File, res[0].file_id).container_id)
        assert acq is not None
        return World(db, store, acq.id, acq.session_id or "", res[0].file_id, tmp_path)


def make_gear(s: Session, name: str, category: str) -> Gear:
    gear = Gear(name=name, version="1.0.0", manifest={"name": name, "version": "1.0.0",
                                                       "license": "MIT",
                                                       "source": f"https://example.org/{name}"},
                manifest_sha256="sha256:" + "a" * 64, category=category,
                image_ref=f"/images/{name}.sif", image_digest="sha256:" + "b" * 64,
                installed_by=ADMIN)
    s.add(gear)
    s.flush()
    return gear


def make_job(s: Session, gear: Gear, dest: Container, inputs: list[dict[str, Any]],
             origin_id: str = ADMIN) -> Job:
    job = Job(id=new_id(), attempt=1, gear_id=gear.id, state="staging", state_seq=0, site="local",
              config={"num_files": 2}, inputs=inputs, resources={"cpus": 1, "partition": "debug"},
              destination_type=dest.type, destination_id=dest.id, project_id=dest.project_id,
              tags=[], priority="medium", origin_type="user", origin_id=origin_id,
              native_id="4242")
    s.add(job)
    s.flush()
    s.add(JobEvent(job_id=job.id, actor=origin_id, kind="created", message=f"user {origin_id}",
                   new_state="pending", data={}))
    s.flush()
    return job


def input_of(s: Session, file_id: str, name: str = "input_file") -> dict[str, Any]:
    f = s.get(File, file_id)
    assert f is not None
    fv = s.scalar(select(FileVersion).where(FileVersion.file_id == f.id,
                                            FileVersion.version == f.current_version))
    assert fv is not None
    c = s.get(Container, f.container_id)
    assert c is not None
    return {"name": name, "base": "file", "file_id": f.id, "version": fv.version,
            "file_name": f.name, "sha256": fv.hash, "size": fv.size, "container_type": c.type,
            "container_id": c.id}


def write_outputs(out: Path, files: dict[str, bytes]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def counts(s: Session) -> dict[str, int]:
    return {m.__name__: s.scalar(select(func.count()).select_from(m)) or 0
            for m in (Container, File, FileVersion, ChangeLog, JobEvent)}


def stage(world: World, job_id: str, files: dict[str, bytes], metadata: str | None = None
          ) -> tuple[JobPaths, list[StoredOutput]]:
    paths = JobPaths.for_job(str(world.tmp / "scratch"), job_id, 1)
    write_outputs(Path(paths.output_dir), files)
    if metadata is not None:
        Path(paths.output_dir, ".metadata.json").write_text(metadata)
    t = LocalTransport()
    return paths, fetch_outputs(t, world.store, scan_outputs(t, paths))


@pytest.fixture
def world(db: Any, tmp_path: Path) -> World:
    return make_world(db, tmp_path)


def test_utility_outputs_become_versions_once(world: World) -> None:
    with world.db.session() as s:
        gear = make_gear(s, "converter", "converter")
        acq = s.get(Container, world.acq_id)
        job = make_job(s, gear, acq, [input_of(s, world.input_file_id)])
        job_id, gear_id = job.id, gear.id
    paths, stored = stage(world, job_id, {"a.nii.gz": b"nifti", "b.json": b"{}",
                                          "qa/report.html": b"<p>"})
    log = Path(paths.log_file("4242"))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("gear says hi\n")
    stored_log = fetch_file(LocalTransport(), world.store, str(log))
    assert stored_log is not None
    for attempt in (1, 2):  # the second publish is a rerun after a crash before commit... or not
        with world.db.session() as s:
            job = s.get(Job, job_id)
            gear = s.get(Gear, gear_id)
            assert job is not None and gear is not None
            before = counts(s)
            res = publish_outputs(s, job=job, gear=gear, outputs=stored, plan=None,
                                  log_digest=stored_log.sha256, log_size=stored_log.size,
                                  actor=CONTROLLER)
            assert res.container_id == world.acq_id and res.analysis_id is None
            assert sorted(f.name for f in res.files) == ["a.nii.gz", "b.json", "qa.zip"]
            assert res.log is None and res.log_sha256 == stored_log.sha256
            if attempt == 2:
                assert res.new_versions == 0
                assert counts(s) == before
    with world.db.session() as s:
        rows = s.scalars(select(FileVersion).where(FileVersion.origin_type == "job")).all()
        assert sorted((r.origin_id, r.version) for r in rows) == [(job_id, 1)] * 3
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                  JobEvent.kind == "log.stored")).all()
        assert [e.data["sha256"] for e in events] == [stored_log.sha256]
        assert s.scalar(select(func.count()).select_from(Container)
                        .where(Container.type == "analysis")) == 0


def test_analysis_gear_creates_one_analysis_with_log(world: World) -> None:
    with world.db.session() as s:
        gear = make_gear(s, "fmriprep", "analysis")
        ses = s.get(Container, world.session_id)
        job = make_job(s, gear, ses, [input_of(s, world.input_file_id, "bold")])
        job_id, gear_id = job.id, gear.id
    _paths, stored = stage(world, job_id, {"fmriprep.log": b"the gear's own log",
                                           "report.html": b"<html>"})
    log = world.store.put_bytes(b"slurm log")
    ids = set()
    for _ in range(2):
        with world.db.session() as s:
            job = s.get(Job, job_id)
            gear = s.get(Gear, gear_id)
            assert job is not None and gear is not None
            res = publish_outputs(s, job=job, gear=gear, outputs=stored, plan=None,
                                  log_digest=log.hash, log_size=log.size, actor=CONTROLLER)
            ids.add(res.analysis_id)
            assert res.log is not None
            assert res.log.name == f"fmriprep.job-{job_id}.log"  # fmriprep.log is an output
    assert len(ids) == 1
    with world.db.session() as s:
        analysis = find_analysis(s, job_id)
        assert analysis is not None and analysis.parent_id == world.session_id
        assert analysis.label.startswith("fmriprep 20")
        info = analysis.info["hpcgear"]
        assert info["gear"]["name"] == "fmriprep" and info["config"] == {"num_files": 2}
        assert info["inputs"][0]["file_id"] == world.input_file_id
        names = sorted(s.scalars(select(File.name).where(File.container_id == analysis.id)))
        assert names == sorted(["fmriprep.log", "report.html", f"fmriprep.job-{job_id}.log"])
        assert s.scalar(select(func.count()).select_from(Container)
                        .where(Container.type == "analysis")) == 1


def test_metadata_applied_in_the_same_transaction(world: World) -> None:
    with world.db.session() as s:
        gear = make_gear(s, "dicom-header", "classifier")
        acq = s.get(Container, world.acq_id)
        job = make_job(s, gear, acq, [input_of(s, world.input_file_id, "dicom")])
        job_id, gear_id = job.id, gear.id
    metadata = """{
      "acquisition": {
        "info": {"header": {"Modality": "MR"}},
        "tags": ["classified"],
        "files": [
          {"name": "scan.dicom.zip", "modality": "MR",
           "classification": {"Intent": ["Structural"], "Measurement": ["T1"]},
           "info": {"header": {"dicom": {"EchoTime": 2.1}}}, "tags": ["header-read"]},
          {"name": "summary.json", "type": "JSON", "info": {"count": 3}}
        ]
      },
      "session": {"info": {"reviewed": false}}
    }"""
    paths, stored = stage(world, job_id, {"summary.json": b'{"n": 3}'}, metadata)
    t = LocalTransport()
    scan = scan_outputs(t, paths)
    text = read_metadata(t, scan)
    assert text is not None
    plan = parse_metadata(text, destination_type="acquisition", analysis=False,
                          output_names=scan.output_names)
    with world.db.session() as s:
        f = s.get(File, world.input_file_id)
        assert f is not None
        f.classification = {"Features": ["3D"]}  # kept: classification merges per key
    for _ in range(2):
        with world.db.session() as s:
            job = s.get(Job, job_id)
            gear = s.get(Gear, gear_id)
            assert job is not None and gear is not None
            res = publish_outputs(s, job=job, gear=gear, outputs=stored, plan=plan,
                                  log_digest=None, actor=CONTROLLER)
    assert res.metadata_applied == ()  # the second run changed nothing
    with world.db.session() as s:
        f = s.get(File, world.input_file_id)
        assert f is not None and f.current_version == 1  # metadata is not a new version
        assert f.classification == {"Features": ["3D"], "Intent": ["Structural"],
                                    "Measurement": ["T1"]}
        assert f.modality == "MR" and f.info["header"]["dicom"]["EchoTime"] == 2.1
        assert "header-read" in f.tags
        out = s.scalar(select(File).where(File.name == "summary.json"))
        assert out is not None and out.type == "JSON" and out.info == {"count": 3}
        acq = s.get(Container, world.acq_id)
        ses = s.get(Container, world.session_id)
        assert acq is not None and ses is not None
        assert acq.info["header"] == {"Modality": "MR"} and acq.tags == ["classified"]
        assert ses.info["reviewed"] is False


def test_invalid_metadata_publishes_nothing(world: World) -> None:
    with world.db.session() as s:
        gear = make_gear(s, "converter", "converter")
        acq = s.get(Container, world.acq_id)
        job = make_job(s, gear, acq, [input_of(s, world.input_file_id)])
        job_id, gear_id = job.id, gear.id
        before = counts(s)
    # 1. refused while parsing: the controller never calls publish
    paths, stored = stage(world, job_id, {"x.txt": b"x"},
                          '{"acquisition": {"files": [{"name": "x.txt", "info": {"a.b": 1}}]}}')
    t = LocalTransport()
    text = read_metadata(t, scan_outputs(t, paths))
    with pytest.raises(InvalidMetadataError, match=r"a\.b"):
        parse_metadata(text or "", destination_type="acquisition", analysis=False)
    # 2. parses, but names a file that is nowhere: publish refuses before writing anything
    plan = parse_metadata('{"acquisition": {"tags": ["t"], "files": [{"name": "ghost.txt"}]},'
                          ' "session": {"info": {"a": 1}}}',
                          destination_type="acquisition", analysis=False)
    with world.db.session() as s:
        job = s.get(Job, job_id)
        gear = s.get(Gear, gear_id)
        assert job is not None and gear is not None
        with pytest.raises(InvalidMetadataError, match=r"ghost\.txt"):
            publish_outputs(s, job=job, gear=gear, outputs=stored, plan=plan,
                            log_digest=None, actor=CONTROLLER)
        assert counts(s) == before  # nothing was even flushed
        s.rollback()
    with world.db.session() as s:
        assert counts(s) == before
        acq = s.get(Container, world.acq_id)
        assert acq is not None and acq.tags == []


STAGER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from hpcgear.render.paths import JobPaths
    from hpcgear.scheduler.transport import LocalTransport
    from hpcgear.staging.stageout import fetch_outputs, scan_outputs
    from hpcgear.storage.objects import ObjectStore

    store = ObjectStore(Path(sys.argv[1]))
    paths = JobPaths(sys.argv[2])
    marker = Path(sys.argv[3])
    scan = scan_outputs(LocalTransport(), paths)
    original = store.put_stream
    def put_stream(stream, *, expected=None):
        if expected == sys.argv[4]:
            chunk = stream.read(1024)       # half-way through the big file ...
            tmp = store.tmp / "put-killed"
            tmp.write_bytes(chunk)
            marker.write_text("copying")
            time.sleep(60)                  # ... the stager is killed here
        return original(stream, expected=expected)
    store.put_stream = put_stream
    fetch_outputs(LocalTransport(), store, scan)
""")


def test_stager_killed_mid_copy_then_rerun_publishes_each_file_once(world: World) -> None:
    with world.db.session() as s:
        gear = make_gear(s, "converter", "converter")
        acq = s.get(Container, world.acq_id)
        job = make_job(s, gear, acq, [input_of(s, world.input_file_id)])
        job_id, gear_id = job.id, gear.id
    paths = JobPaths.for_job(str(world.tmp / "scratch"), job_id, 1)
    big = os.urandom(3 * 1024 * 1024)
    write_outputs(Path(paths.output_dir), {"a.txt": b"a", "big.bin": big, "z.txt": b"z"})
    marker = world.tmp / "marker"
    big_hash = "sha256:" + hashlib.sha256(big).hexdigest()
    proc = subprocess.Popen([sys.executable, "-c", STAGER, str(world.store.root), paths.root,
                             str(marker), big_hash])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, "stager ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not world.store.exists(big_hash)  # the half copy never got its name
    assert any(world.store.tmp.iterdir())  # only a temp file is left
    t = LocalTransport()
    stored = fetch_outputs(t, world.store, scan_outputs(t, paths))
    for _ in range(2):
        with world.db.session() as s:
            job = s.get(Job, job_id)
            gear = s.get(Gear, gear_id)
            assert job is not None and gear is not None
            publish_outputs(s, job=job, gear=gear, outputs=stored, plan=None, log_digest=None,
                            actor=CONTROLLER)
    with world.db.session() as s:
        rows = s.execute(select(File.name, FileVersion.version, FileVersion.hash)
                         .join(FileVersion, FileVersion.file_id == File.id)
                         .where(FileVersion.origin_id == job_id)).all()
    assert sorted((n, v) for n, v, _h in rows) == [("a.txt", 1), ("big.bin", 1), ("z.txt", 1)]
    assert world.store.path_for(big_hash).read_bytes() == big
    world.store.clean_tmp()
