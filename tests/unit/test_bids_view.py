"""A gear whose manifest asks for a BIDS view (``custom.hpcgear.bids-view``) gets the BIDS tree
of its destination staged in ``/flywheel/v0/work/bids`` (where Flywheel's BIDS-app toolkit
looks before it downloads), planned by the same code as ``hpcgear export bids``, checked with
the BIDS validator, and recorded in the job's provenance. Database tests run on SQLite and
PostgreSQL; SLURM is a fake at the subprocess boundary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hpcgear.controller.context import ControllerContext, CycleReport
from hpcgear.controller.sites import SiteRuntime
from hpcgear.controller.submit import submit_job
from hpcgear.db.models import Container, Gear, Job, JobEvent
from hpcgear.errors import ManifestError
from hpcgear.gears.manifest import parse_manifest
from hpcgear.render.paths import JobPaths
from hpcgear.spec import BidsViewRequest
from tests.unit.test_bids import check_bids, make_bids
from tests.unit.test_controller_reliability import FakeSlurm, _rt
from tests.unit.test_controller_steps import REPO, setup  # noqa: F401
from tests.unit.test_manifest import base_manifest, errors_of

CORPUS = Path("/work/shared/corpus/gear-manifests")
if not CORPUS.is_dir():  # the layout tests/unit/test_manifest_corpus.py expects
    CORPUS = REPO.parent / "shared" / "corpus" / "gear-manifests"


# ------------------------------------------------------------------ the manifest key


def with_view(view: Any, **custom: Any) -> dict[str, Any]:
    data = base_manifest()
    data["custom"] = {**data["custom"], **custom, "hpcgear": {"bids-view": view}}
    return data


def test_bids_view_key_defaults_and_the_gears_own_datatypes() -> None:
    assert parse_manifest(base_manifest()).bids_view is None
    assert parse_manifest(with_view(False)).bids_view is None
    assert parse_manifest(with_view(True)).bids_view == BidsViewRequest("work/bids", ())
    # a BIDS app's own list (bids-mriqc's key, bids-qsiprep's key) is the default filter
    got = parse_manifest(with_view(True, **{"bids-app-data-types": ["anat", "func"]}))
    assert got.bids_view == BidsViewRequest("work/bids", ("anat", "func"))
    got = parse_manifest(with_view({}, **{"bids-app-modalities": ["dwi", "anat", "dwi"]}))
    assert got.bids_view == BidsViewRequest("work/bids", ("dwi", "anat"))
    got = parse_manifest(with_view({"dir": "input/bids", "data-types": ["func"]},
                                   **{"bids-app-data-types": ["anat"]}))
    assert got.bids_view == BidsViewRequest("input/bids", ("func",))


@pytest.mark.parametrize(("custom", "fragment"), [
    ({"hpcgear": {"bids_view": True}}, "unknown key (did you mean 'bids-view'?)"),
    ({"hpcgear": ["bids-view"]}, "custom.hpcgear: must be an object"),
    ({"hpcgear": {"bids-view": "yes"}}, "must be true, false or an object"),
    ({"hpcgear": {"bids-view": {"folders": ["anat"]}}}, "valid keys: dir, data-types"),
    ({"hpcgear": {"bids-view": {"dir": "../bids"}}}, "not a directory below work/ or input/"),
    ({"hpcgear": {"bids-view": {"dir": "output/bids"}}}, "not a directory below work/ or input/"),
    ({"hpcgear": {"bids-view": {"dir": "work"}}}, "not a directory below work/ or input/"),
    ({"hpcgear": {"bids-view": {"dir": "input/dicom"}}}, "the gear's input 'dicom'"),
    ({"hpcgear": {"bids-view": {"data-types": ["anatomy"]}}}, 'not BIDS datatypes: "anatomy"'),
    ({"hpcgear": {"bids-view": {"data-types": "anat"}}}, "must be a list of BIDS datatypes"),
    ({"bids-app-data-types": ["T1w"], "hpcgear": {"bids-view": True}},
     "custom.bids-app-data-types"),
])
def test_bad_bids_view_keys_are_errors_naming_the_fix(custom: dict[str, Any],
                                                      fragment: str) -> None:
    data = base_manifest()
    data["custom"] = {**data["custom"], **custom}
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, source="manifest.json")
    assert fragment in f"{info.value.message} {info.value.hint}"
    assert "custom." in errors_of(data)


def test_a_bids_apps_odd_datatype_list_is_its_own_business_without_the_key() -> None:
    data = base_manifest()
    data["custom"]["bids-app-data-types"] = ["T1w"]
    assert parse_manifest(data).bids_view is None


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no gear manifest corpus at {CORPUS}")
@pytest.mark.parametrize(("name", "types"), [
    ("intermountainneuroimaging__bids-mriqc.json", ("anat", "func")),
    ("intermountainneuroimaging__bids-qsiprep.json", ("anat", "dwi", "fmap", "func")),
    ("flywheel-apps__bids-fmriprep.json", ()),
])
def test_real_bids_apps_opt_in_with_one_key(name: str, types: tuple[str, ...]) -> None:
    """Published BIDS apps install unchanged (no view); adding the key is all it takes."""
    raw = json.loads((CORPUS / name).read_text())
    assert parse_manifest(raw).bids_view is None
    raw["custom"]["hpcgear"] = {"bids-view": True}
    assert parse_manifest(raw).bids_view == BidsViewRequest("work/bids", types)


# ------------------------------------------------------------------ staged by the controller


def install_view_gear(ctx: ControllerContext, tmp_path: Path, view: Any) -> None:
    from hpcgear.gears.service import install_gear

    src = tmp_path / "bids-gear"
    shutil.copytree(REPO / "containers" / "test-gear", src)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["name"] = "bids-gear"
    manifest["custom"]["hpcgear"] = {"bids-view": view}
    (src / "manifest.json").write_text(json.dumps(manifest))
    sif = tmp_path / "x.sif"
    with ctx.db.session() as s:
        install_gear(s, ctx.store, "admin", src, image=str(sif))


def ingest_dataset(ctx: ControllerContext, tmp_path: Path) -> None:
    from hpcgear.hierarchy.service import grant_role
    from hpcgear.ingest.bids import ingest_bids_extras
    from hpcgear.ingest.service import NiftiIngestOptions, ingest_nifti

    src = make_bids(tmp_path / "ds")
    with ctx.db.session() as s:
        report = ingest_nifti(s, ctx.store, "admin", src,
                              NiftiIngestOptions(group="g", project="p1"))
        ingest_bids_extras(s, ctx.store, "admin", src, "g/p1", report)
        grant_role(s, "admin", "alice", "g/p1", "read-write")


def view_job(ctx: ControllerContext, user: str, path: tuple[str, ...]) -> str:
    from hpcgear.hierarchy.service import new_id

    with ctx.db.session() as s:
        gear = s.scalars(select(Gear).where(Gear.name == "bids-gear")).one()
        node = s.scalars(select(Container).where(Container.label == "p1")).one()
        for label in path:
            node = s.scalars(select(Container).where(Container.parent_id == node.id,
                                                     Container.label == label)).one()
        job = Job(id=new_id(), gear_id=gear.id, state="submitting", site="t", config={},
                  inputs=[], resources={"cpus": 1, "mem_mb": 100, "time_minutes": 10},
                  destination_type=node.type, destination_id=node.id,
                  project_id=node.project_id, tags=["hpc"], origin_type="user", origin_id=user)
        s.add(job)
        return job.id


def staged_tree(rt: SiteRuntime, jid: str, user: str, where: str = "work/bids") -> Path:
    paths = JobPaths.for_job(rt.site.render_scratch_root(user), jid, 1)
    return Path(paths.flywheel) / where


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_session_gear_gets_its_sessions_bids_view_and_provenance_counts_it(
        setup: tuple[ControllerContext, SiteRuntime], tmp_path: Path) -> None:  # noqa: F811
    ctx, rt = setup
    install_view_gear(ctx, tmp_path, {"data-types": ["anat", "func"]})
    ingest_dataset(ctx, tmp_path)
    jid = view_job(ctx, "alice", ("sub-01", "default"))
    runner = FakeSlurm()
    submit_job(ctx, _rt(rt, runner, ctx), jid, CycleReport(site="t"))
    with ctx.db.session() as s:
        job = s.get(Job, jid)
        assert job is not None and job.state == "queued", job.failure_message
        event = s.scalars(select(JobEvent).where(JobEvent.job_id == jid,
                                                 JobEvent.kind == "bids_view.staged")).one()
    root = staged_tree(rt, jid, "alice")
    assert files_under(root) == [
        "README", "dataset_description.json", "participants.tsv",
        "sub-01/anat/sub-01_T1w.json", "sub-01/anat/sub-01_T1w.nii",
        "sub-01/func/sub-01_task-rest_bold.json", "sub-01/func/sub-01_task-rest_bold.nii.gz",
        "sub-01/func/sub-01_task-rest_events.tsv"]
    check_bids(root)
    assert json.loads((root / "dataset_description.json").read_text())["Name"] == "seeds study"
    # what export bids writes for the same session, byte for byte
    from hpcgear.ingest.bids import export_bids

    out = tmp_path / "export"
    with ctx.db.session() as s:
        export_bids(s, ctx.store, "alice", "g/p1/sub-01/default", out)
    assert files_under(out) == files_under(root)
    for rel in files_under(out):
        assert (out / rel).read_bytes() == (root / rel).read_bytes(), rel
    # provenance: every stored file of the view is an input with role bids-view
    assert event.data["count"] == 8 and event.data["dir"] == "work/bids"
    from hpcgear.controller.record import collect_run_facts

    with ctx.db.session() as s:
        job = s.get(Job, jid)
        assert job is not None
        facts = collect_run_facts(s, job)
    viewed = {f.name: f for f in facts.inputs if f.role == "bids-view"}
    assert "sub-01/anat/sub-01_T1w.nii" in viewed
    assert sorted(viewed) == files_under(root), "every file here is a stored one"
    assert all(f.sha256.startswith("sha256:") and f.version == 1 for f in viewed.values())


def test_datatypes_and_levels(setup: tuple[ControllerContext, SiteRuntime],  # noqa: F811
                              tmp_path: Path) -> None:
    """data-types filters the datatype folders; a project gear sees every subject, a
    subject gear one, an acquisition gear that acquisition; the tree goes where the
    manifest says."""
    ctx, rt = setup
    install_view_gear(ctx, tmp_path, {"dir": "input/bids", "data-types": ["anat"]})
    ingest_dataset(ctx, tmp_path)
    runner = FakeSlurm()
    for path, want in [
        ((), ["sub-01/anat/sub-01_T1w.nii", "sub-02/anat/sub-02_T1w.nii"]),
        (("sub-02",), ["sub-02/anat/sub-02_T1w.nii"]),
        (("sub-01", "default", "anat"), ["sub-01/anat/sub-01_T1w.nii"]),
    ]:
        jid = view_job(ctx, "alice", path)
        submit_job(ctx, _rt(rt, runner, ctx), jid, CycleReport(site="t"))
        root = staged_tree(rt, jid, "alice", "input/bids")
        assert [f for f in files_under(root) if f.endswith(".nii")] == want
        assert not any("/func/" in f for f in files_under(root))
        check_bids(root)
        participants = (root / "participants.tsv").read_text()
        assert participants.startswith("participant_id\tage")


def test_a_user_without_access_gets_no_view_and_the_job_fails_clearly(
        setup: tuple[ControllerContext, SiteRuntime], tmp_path: Path) -> None:  # noqa: F811
    ctx, rt = setup
    install_view_gear(ctx, tmp_path, True)
    ingest_dataset(ctx, tmp_path)
    jid = view_job(ctx, "bob", ("sub-01",))  # bob has no role on g/p1
    runner = FakeSlurm()
    submit_job(ctx, _rt(rt, runner, ctx), jid, CycleReport(site="t"))
    with ctx.db.session() as s:
        job = s.get(Job, jid)
        assert job is not None
        assert (job.state, job.failure_kind) == ("failed", "input_staging")
        assert job.failure_message.startswith("BIDS view: ")
        assert "bob" in job.failure_message
    assert not runner.named("sbatch"), "nothing is submitted"
    assert not staged_tree(rt, jid, "bob").exists()


def test_manifest_error_names_the_file() -> None:
    with pytest.raises(ManifestError, match=r"custom\.hpcgear\.bids-view"):
        parse_manifest(with_view(7), source="manifest.json")


def test_gear_show_names_the_view(cli_env: Any, tmp_path: Path) -> None:
    sif = tmp_path / "fake.sif"
    sif.write_bytes(b"fake sif")
    for name in ("test-bids-app", "test-gear"):
        cli_env.ok("gear", "install", str(REPO / "containers" / name), "--image", str(sif))
    shown = cli_env.ok("gear", "show", "test-bids-app", "--json").json()
    assert shown["bids_view"] == {"dir": "work/bids", "data_types": ["anat", "func"]}
    text = cli_env.ok("gear", "show", "test-bids-app").out
    assert "bids view:        /flywheel/v0/work/bids (anat, func)" in text
    assert cli_env.ok("gear", "show", "test-gear", "--json").json()["bids_view"] is None
    assert "bids view" not in cli_env.ok("gear", "show", "test-gear").out
