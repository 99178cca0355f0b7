"""Provenance: one immutable record per attempt, exports, trace (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prov.model import ProvDocument

from hpcgear.controller.publish import PublishResult, publish_outputs
from hpcgear.controller.record import collect_run_facts, get_record, record_provenance
from hpcgear.db.models import Container, Gear, Job, ProvenanceRecord
from hpcgear.provenance.export import (
    PROCESS_RUN_PROFILE,
    RO_CRATE_CONTEXT,
    bids_dataset_description,
    export_record,
    merge_generated_by,
    to_prov_json,
    to_ro_crate,
)
from hpcgear.provenance.record import canonical_json, record_sha256
from hpcgear.provenance.trace import jobs_in, raw_inputs, trace
from hpcgear.render.exit_record import ExitRecord
from hpcgear.scheduler.base import Accounting
from hpcgear.states import SchedulerState
from tests.conftest import CliEnv
from tests.unit.test_publish import (
    CONTROLLER,
    World,
    input_of,
    make_gear,
    make_job,
    make_world,
    stage,
)

START = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def exit_record(job_id: str) -> ExitRecord:
    return ExitRecord(complete=True, job_id=job_id, attempt=1, rc=0, signal=None,
                      timed_out=False, started=True, boot_failed=False, boot_attempts=1,
                      error=None, host="node7", runtime_version="apptainer version 1.3.4",
                      slurm_job_id="4242", slurm_array_task_id=None,
                      start_time="2024-05-01T12:00:05Z", end_time="2024-05-01T12:03:00Z",
                      elapsed_s=175)


def accounting() -> Accounting:
    return Accounting(native_id="4242", state=SchedulerState.COMPLETED, exit_code=0,
                      elapsed_seconds=180, submit_time=START, start_time=START,
                      end_time=START + dt.timedelta(minutes=3), nodes="node7",
                      partition="debug", qos="normal", account="lab", alloc_cpus=2,
                      max_rss_bytes=123_456_789, total_cpu_seconds=300.5)


def run_job(world: World, gear_name: str, category: str, dest_id: str, input_file_id: str,
            outputs: dict[str, bytes], origin_id: str = "admin") -> tuple[str, PublishResult]:
    """A job that read ``input_file_id`` and published ``outputs``, recorded."""
    with world.db.session() as s:
        gear = make_gear(s, gear_name, category) if s.query(Gear).filter_by(
            name=gear_name).first() is None else s.query(Gear).filter_by(name=gear_name).one()
        dest = s.get(Container, dest_id)
        job = make_job(s, gear, dest, [input_of(s, input_file_id)], origin_id)
        job_id = job.id
    _paths, stored = stage(world, job_id, outputs)
    with world.db.session() as s:
        job = s.get(Job, job_id)
        gear = s.get(Gear, job.gear_id)
        res = publish_outputs(s, job=job, gear=gear, outputs=stored, plan=None, log_digest=None,
                              actor=CONTROLLER)
        job.state = "complete"
        facts = collect_run_facts(s, job, published=res, exit_record=exit_record(job_id),
                                  accounting=accounting(), script_sha256="sha256:" + "5" * 64,
                                  apptainer_argv=["apptainer", "run", "--containall", "x.sif"],
                                  slurm_version="24.05.1")
        record_provenance(s, job, facts)
    return job_id, res


@pytest.fixture
def world(db: Any, tmp_path: Path) -> World:
    return make_world(db, tmp_path)


def test_one_immutable_record_per_attempt(world: World) -> None:
    job_id, res = run_job(world, "converter", "converter", world.acq_id, world.input_file_id,
                          {"out.nii.gz": b"nifti"})
    with world.db.session() as s:
        job = s.get(Job, job_id)
        row = get_record(s, job_id)
        assert row is not None
        rec = row.record
        assert row.sha256 == record_sha256(rec)
        assert json.loads(canonical_json(rec)) == rec
        assert rec["gear"]["name"] == "converter" and rec["image"]["digest"].startswith("sha256:")
        assert rec["inputs"][0]["file_id"] == world.input_file_id
        assert rec["outputs"][0]["id"] == f"urn:hpcgear:file:{res.files[0].file_id}:v1"
        assert rec["scheduler"]["partition"] == "debug" and rec["scheduler"]["nodes"] == "node7"
        assert rec["accounting"] == {"elapsed_seconds": 180, "cpu_seconds": 300.5,
                                     "max_rss_bytes": 123_456_789, "alloc_cpus": 2}
        assert rec["execution"]["argv"][:2] == ["apptainer", "run"]
        assert rec["execution"]["runtime"] == "apptainer"
        assert rec["times"]["end"] == "2024-05-01T12:03:00Z"
        assert rec["versions"]["slurm"] == "24.05.1"
        assert rec["started_by"] == {"id": "urn:hpcgear:user:admin", "type": "user",
                                     "name": "admin", "reason": "user admin"}
        # a second call with other facts returns the stored row untouched
        other = collect_run_facts(s, job, published=None)
        again = record_provenance(s, job, dataclasses.replace(other, state="failed"))
        assert again.id == row.id and again.record == rec
        assert s.query(ProvenanceRecord).filter_by(job_id=job_id).count() == 1
        with pytest.raises(Exception, match="not"):
            record_provenance(s, job, dataclasses.replace(other, job_id="someone-else"))


def test_prov_json_round_trips_through_the_prov_package(world: World) -> None:
    job_id, res = run_job(world, "converter", "converter", world.acq_id, world.input_file_id,
                          {"out.nii.gz": b"nifti", "b.txt": b"b"})
    with world.db.session() as s:
        rec = get_record(s, job_id).record  # type: ignore[union-attr]
    content = json.dumps(to_prov_json(rec))
    doc = ProvDocument.deserialize(content=content, format="json")
    uris = {str(r.identifier.uri) for r in doc.get_records() if r.identifier is not None}
    assert f"urn:hpcgear:job:{job_id}" in uris
    assert f"urn:hpcgear:file:{world.input_file_id}:v1" in uris
    assert all(f"urn:hpcgear:file:{f.file_id}:v{f.version}" in uris for f in res.files)
    assert "urn:hpcgear:gear:converter@1.0.0" in uris
    kinds = {type(r).__name__ for r in doc.get_records()}
    assert {"ProvActivity", "ProvEntity", "ProvAgent", "ProvUsage", "ProvGeneration",
            "ProvAssociation"} <= kinds
    # and back again: serialising the parsed document gives the same graph
    again = ProvDocument.deserialize(content=doc.serialize(format="json"), format="json")
    assert again == doc


def test_exports_of_chained_jobs_merge_into_one_graph(world: World) -> None:
    first, res1 = run_job(world, "converter", "converter", world.acq_id, world.input_file_id,
                          {"out.nii.gz": b"nifti"})
    second, _ = run_job(world, "qa-check", "qa", world.acq_id, res1.files[0].file_id,
                        {"qa.json": b"{}"})
    with world.db.session() as s:
        docs = [to_prov_json(get_record(s, j).record) for j in (first, second)]  # type: ignore[union-attr]
    merged = ProvDocument()
    for d in docs:
        merged.update(ProvDocument.deserialize(content=json.dumps(d), format="json"))
    merged = merged.unified()
    shared = f"urn:hpcgear:file:{res1.files[0].file_id}:v1"
    records = [r for r in merged.get_records() if r.identifier is not None
               and str(r.identifier.uri) == shared]
    assert len(records) == 1  # the output of job 1 and the input of job 2 are one node


def test_ro_crate_shape(world: World) -> None:
    job_id, res = run_job(world, "converter", "converter", world.acq_id, world.input_file_id,
                          {"out.nii.gz": b"nifti"})
    with world.db.session() as s:
        rec = get_record(s, job_id).record  # type: ignore[union-attr]
    crate = to_ro_crate(rec)
    assert crate["@context"][0] == RO_CRATE_CONTEXT
    graph = {e["@id"]: e for e in crate["@graph"]}
    assert len(graph) == len(crate["@graph"])  # ids are unique
    desc = graph["ro-crate-metadata.json"]
    assert desc["@type"] == "CreativeWork" and desc["about"] == {"@id": "./"}
    assert desc["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"}
    root = graph["./"]
    assert root["@type"] == "Dataset"
    for key in ("name", "description", "datePublished", "license"):
        assert root[key], key
    assert root["conformsTo"] == {"@id": PROCESS_RUN_PROFILE}
    assert graph[PROCESS_RUN_PROFILE]["@type"] == "CreativeWork"
    action = graph[root["mentions"][0]["@id"]]
    assert action["@type"] == "CreateAction" and action["@id"] == f"urn:hpcgear:job:{job_id}"
    assert graph[action["instrument"]["@id"]]["@type"] == "SoftwareApplication"
    assert action["object"] == [{"@id": f"urn:hpcgear:file:{world.input_file_id}:v1"}]
    assert action["result"] == [{"@id": f"urn:hpcgear:file:{res.files[0].file_id}:v1"}]
    assert action["endTime"] == "2024-05-01T12:03:00Z"
    assert graph[action["agent"]["@id"]]["@type"] == "Person"
    assert graph[action["containerImage"]["@id"]]["@type"] == "ContainerImage"
    # every data entity is reachable from the root, every reference is described
    files = [e for e in crate["@graph"] if e["@type"] == "File"]
    assert {f["@id"] for f in files} == {p["@id"] for p in root["hasPart"]}

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            here = {node["@id"]} if set(node) == {"@id"} else set()
            return here.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    external = {"https://w3id.org/ro/crate/1.1", "http://schema.org/CompletedActionStatus",
                "https://w3id.org/ro/terms/workflow-run#SIFImage"}
    assert refs(crate["@graph"]) - set(graph) <= external


def test_bids_generated_by(world: World) -> None:
    job_id, _ = run_job(world, "converter", "converter", world.acq_id, world.input_file_id,
                        {"out.nii.gz": b"nifti"})
    with world.db.session() as s:
        rec = get_record(s, job_id).record  # type: ignore[union-attr]
    desc = bids_dataset_description(rec)
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    entry = desc["GeneratedBy"][0]
    assert entry["Name"] == "converter" and entry["Version"] == "1.0.0"
    assert entry["CodeURL"] == "https://example.org/converter"
    assert entry["Container"] == {"Type": "apptainer", "Tag": "/images/converter.sif",
                                  "URI": "urn:hpcgear:image:sha256:" + "b" * 64}
    merged = merge_generated_by(merge_generated_by({"Name": "x", "GeneratedBy": []}, rec), rec)
    assert merged["GeneratedBy"] == [entry]
    with pytest.raises(ValueError, match="unknown export format"):
        export_record(rec, "xml")


def test_trace_walks_back_over_two_chained_jobs(world: World) -> None:
    first, res1 = run_job(world, "converter", "converter", world.acq_id, world.input_file_id,
                          {"out.nii.gz": b"nifti"})
    second, res2 = run_job(world, "qa-check", "qa", world.acq_id, res1.files[0].file_id,
                           {"qa.json": b"{}"})
    with world.db.session() as s:
        node = trace(s, res2.files[0].file_id, 1)
        assert node.produced_by is not None and node.produced_by.job_id == second
        assert node.produced_by.recorded
        assert jobs_in(node) == [second, first]
        leaves = raw_inputs(node)
        assert [(leaf.file_id, leaf.origin_type) for leaf in leaves] == [
            (world.input_file_id, "user")]
        as_dict = node.as_dict()
        mid = as_dict["produced_by"]["inputs"][0]
        assert mid["id"] == f"urn:hpcgear:file:{res1.files[0].file_id}:v1"
        assert mid["produced_by"]["gear"] == "converter@1.0.0"
        # a raw file traces to itself
        assert trace(s, world.input_file_id).produced_by is None


# ------------------------------------------------------------------------ CLI


def _open_db(env: CliEnv) -> Any:
    from hpcgear.config.settings import load_settings
    from hpcgear.db.session import Database, create_db_engine

    settings = load_settings(env.config)
    return Database(create_db_engine(settings.database_url)), settings


def test_cli_show_export_trace(cli_env: CliEnv, tmp_path: Path) -> None:
    from hpcgear.auth.identity import os_login
    from hpcgear.storage.objects import ObjectStore

    db, settings = _open_db(cli_env)
    login = os_login()
    src = tmp_path / "raw.dcm"
    src.write_bytes(b"raw bytes")
    cli_env.ok("group", "create", "lab")
    cli_env.ok("project", "create", "lab/p1")
    cli_env.ok("upload", "lab/p1/s1/ses1/acq1", str(src))
    store = ObjectStore(settings.storage_root)
    with db.session() as s:
        from hpcgear.db.models import File

        f = s.query(File).filter_by(name="raw.dcm").one()
        world = World(db, store, f.container_id, "", f.id, tmp_path)
    job_id, _res = run_job(world, "converter", "converter", world.acq_id, f.id,
                           {"out.nii.gz": b"nifti"}, origin_id=login)
    shown = cli_env.ok("provenance", "show", job_id)
    assert "converter@1.0.0" in shown.out and "out.nii.gz" in shown.out
    data = cli_env.ok("provenance", "show", job_id, "--json").json()
    assert data["record"]["job"]["id"] == job_id and data["sha256"].startswith("sha256:")
    assert data["verified"] is True and "(verified)" in shown.out
    out = tmp_path / "crate.json"
    cli_env.ok("provenance", "export", job_id, "--format", "ro-crate", "-o", str(out))
    assert json.loads(out.read_text())["@context"][0] == RO_CRATE_CONTEXT
    prov_text = cli_env.ok("provenance", "export", job_id, "--format", "prov-json").out
    ProvDocument.deserialize(content=prov_text, format="json")
    bids = cli_env.ok("provenance", "export", job_id, "--format", "bids").json()
    assert bids["GeneratedBy"][0]["Name"] == "converter"
    traced = cli_env.ok("provenance", "trace", "lab/p1/s1/ses1/acq1/out.nii.gz", "--json").json()
    assert traced["jobs"] == [job_id]
    assert traced["raw_inputs"] == [f"urn:hpcgear:file:{f.id}:v1"]
    text = cli_env.ok("provenance", "trace", "lab/p1/s1/ses1/acq1/out.nii.gz").out
    assert "raw.dcm" in text and job_id in text
    missing = cli_env.run("provenance", "show", "nope")
    assert missing.code != 0 and "error:" in missing.err
    db.dispose()


def test_cli_scratch_gc_never_touches_a_live_job(cli_env: CliEnv, tmp_path: Path) -> None:
    from hpcgear.auth.identity import os_login
    from hpcgear.db.models import Job as JobRow

    db, settings = _open_db(cli_env)
    login = os_login()
    src = tmp_path / "raw.dcm"
    src.write_bytes(b"raw")
    cli_env.ok("group", "create", "lab")
    cli_env.ok("project", "create", "lab/p1")
    cli_env.ok("upload", "lab/p1/s1/ses1/acq1", str(src))
    ids: dict[str, str] = {}
    with db.session() as s:
        dest = s.query(Container).filter_by(label="acq1").one()
        gear = make_gear(s, "converter", "converter")
        for state in ("running", "complete", "failed"):
            job = make_job(s, gear, dest, [], origin_id=login)
            job.state = state
            ids[state] = job.id
    root = Path(settings.scratch_root) / "hpcgear"
    old = time.time() - 60 * 86400
    for name in [*ids.values(), "ghostjob"]:
        meta = root / name / "a1" / ".hpcgear"
        meta.mkdir(parents=True)
        (meta / "slurm-1.out").write_text("x")
        for p in (meta / "slurm-1.out", meta, meta.parent):
            os.utime(p, (old, old))
    dry = cli_env.ok("scratch", "gc", "--dry-run", "--json").json()
    actions = {d["job_id"]: d["action"] for d in dry["directories"]}
    assert actions == {ids["running"]: "keep", ids["complete"]: "remove",
                       ids["failed"]: "remove", "ghostjob": "remove"}
    assert (root / ids["complete"]).exists()  # dry run removed nothing
    cli_env.ok("scratch", "gc", "--site", "local")
    assert (root / ids["running"] / "a1" / ".hpcgear" / "slurm-1.out").exists()
    assert sorted(p.name for p in root.iterdir()) == [ids["running"]]
    res = cli_env.run("scratch", "gc", "--older-than", "forever")
    assert res.code != 0 and "--older-than" in res.err
    with db.session() as s:
        assert s.get(JobRow, ids["running"]) is not None
    db.dispose()
