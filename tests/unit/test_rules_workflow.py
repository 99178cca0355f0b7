"""Session rules on SQLite and PostgreSQL: prerequisites, inputs, retry bounds, explanations."""

from __future__ import annotations

from sqlalchemy import select

from hpcgear.db.models import GearRule, Job
from hpcgear.gears.service import get_gear
from hpcgear.hierarchy import service as hs
from hpcgear.jobs.service import _input_spec, prepare_job, retry_job, store_job
from hpcgear.rules.engine import test_rule
from hpcgear.states import FailureKind, JobState
from tests.unit.rules_support import ADMIN, World, world_fixture  # noqa: F401

QC_RULE = """
project: lab/p1
rules:
  - name: qc
    gear: test-gear@1.0.0
    after:
      require: {require}
      gears: [dcm2niix, dicom-header]
    session_inputs:
      input_file: 'T1w.*\\.nii\\.gz$'
    retries: {retries}
    config: {{num_files: 2}}
    tags: [hpc]
"""


def qc_rule(require: str = "all", retries: int = 1) -> str:
    return QC_RULE.format(require=require, retries=retries)


def run_gear_job(w: World, gear: str, dest: str, state: JobState = JobState.COMPLETE) -> str:
    """A job of ``gear`` on ``dest`` (as a user would start it), moved to ``state``."""
    with w.db.session() as s:
        g = get_gear(s, gear)
        c = hs.ensure_path(s, ADMIN, dest)
        inputs = []
        if gear in ("dcm2niix", "dicom-header"):
            f = s.scalar(
                select(hs.File).where(hs.File.container_id == c.id, hs.File.type == "dicom")
            )
            if f is None:
                w_res = hs.add_file_version(
                    s,
                    c,
                    "series.dicom.zip",
                    "sha256:" + "0" * 64,
                    1,
                    ADMIN,
                    origin_type="user",
                    origin_id=ADMIN,
                )
                f = s.get(hs.File, w_res.file_id)
            assert f is not None
            inputs = [_input_spec("dicom", "file", c, f, hs.file_version(s, f))]
        p = prepare_job(s, ADMIN, w.sites, gear=g, destination=c, inputs=inputs)
        job_id = store_job(s, ADMIN, p).id
    if state != JobState.PENDING:
        w.finish(job_id, state)
    return job_id


def qc_jobs(w: World) -> list[Job]:
    return [j for j in w.jobs() if j.origin_type == "rule"]


def session_setup(w: World, retries: int = 1, require: str = "all") -> None:
    w.apply(qc_rule(require, retries))
    w.upload("lab/p1/s1/ses1/anat", "sub-01_T1w.nii.gz", "t1")
    w.upload("lab/p1/s1/ses1/anat", "sub-01_T2w.nii.gz", "t2")


def test_all_prerequisites_then_one_job(world: World) -> None:
    w = world
    session_setup(w)
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    rep = w.evaluate()
    assert rep.sessions_evaluated == 1 and rep.jobs_created == 0  # dicom-header missing
    run_gear_job(w, "dicom-header", "lab/p1/s1/ses1/anat", JobState.FAILED)
    assert w.evaluate().jobs_created == 0  # a failed prerequisite does not count
    run_gear_job(w, "dicom-header", "lab/p1/s1/ses1/anat")
    rep = w.evaluate()
    assert rep.jobs_created == 1
    (job,) = qc_jobs(w)
    ses = w.container("lab/p1/s1/ses1")
    assert job.destination_id == ses.id and job.tags == ["hpc"] and job.config["num_files"] == 2
    assert job.inputs[0]["file_name"] == "sub-01_T1w.nii.gz"
    # Another completion on the same session: same inputs, same config: nothing new.
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.duplicates == 1


def test_session_waits_for_every_prerequisite_job_on_it(world: World) -> None:
    """Issue 11: three dcm2niix jobs on one session; the rule fired when the first
    finished, on partial data. Ready means no job of the gear is still unfinished."""
    w = world
    session_setup(w, require="any")
    first = run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat", JobState.PENDING)
    second = run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat", JobState.PENDING)
    w.apply(qc_rule("any"))
    w.finish(first, JobState.COMPLETE)
    rep = w.evaluate()
    assert rep.sessions_evaluated == 1 and rep.jobs_created == 0 and not qc_jobs(w)
    third = run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")  # completes; second pending
    assert w.evaluate().jobs_created == 0
    w.finish(second, JobState.FAILED)  # the last one ended: the session is ready
    rep = w.evaluate()
    assert rep.jobs_created == 1, rep.notes
    assert third


def test_any_prerequisite(world: World) -> None:
    w = world
    session_setup(w, require="any")
    run_gear_job(w, "dicom-header", "lab/p1/s1/ses1/anat")
    assert w.evaluate().jobs_created == 1


def test_unrelated_gears_and_other_sessions_do_not_trigger(world: World) -> None:
    w = world
    session_setup(w, require="any")
    w.upload("lab/p1/s1/ses2/anat", "x.txt", "x")
    run_gear_job(w, "test-analysis", "lab/p1/s1/ses1")
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses2/anat")  # ses2 has no T1w: error, no job
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.sessions_evaluated == 1 and rep.errors == 1
    assert "no file on the session or the project matches" in rep.notes[0]


def test_analysis_label_prerequisite(world: World) -> None:
    w = world
    w.apply(
        """
project: lab/p1
rules:
  - name: after-check
    gear: test-gear@1.0.0
    after:
      gears:
        - {gear: test-analysis, analysis_label: "completeness*"}
"""
    )
    w.upload("lab/p1/s1/ses1", "notes.txt", "n")
    first = run_gear_job(w, "test-analysis", "lab/p1/s1/ses1")
    w.analysis("lab/p1/s1/ses1", "curate 2026-01-31", first)
    rep = w.evaluate()
    assert rep.sessions_evaluated == 1 and rep.jobs_created == 0
    ses = "lab/p1/s1/ses1"
    with w.db.session() as s:
        t = test_rule(s, ADMIN, w.sites, "lab/p1/after-check", ses)
    text = "\n".join(t.explanation.lines())
    assert "analyses are labelled 'curate 2026-01-31'" in text and not t.would_fire
    second = run_gear_job(w, "test-analysis", "lab/p1/s1/ses1", JobState.PENDING)
    w.analysis("lab/p1/s1/ses1", "completeness check", second)
    w.finish(second)
    assert w.evaluate().jobs_created == 1


def test_inputs_from_session_then_project(world: World) -> None:
    w = world
    w.apply(
        """
project: lab/p1
rules:
  - name: with-template
    gear: test-gear@1.0.0
    after: [dcm2niix]
    session_inputs: {input_file: '^template\\.nii\\.gz$'}
"""
    )
    w.upload("lab/p1", "template.nii.gz", "project template")
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    assert w.evaluate().jobs_created == 1
    (job,) = qc_jobs(w)
    assert job.inputs[0]["container_type"] == "project"
    # A session's own file wins over the project's.
    w.upload("lab/p1/s2/ses1/anat", "template.nii.gz", "session template")
    run_gear_job(w, "dcm2niix", "lab/p1/s2/ses1/anat")
    w.evaluate()
    assert qc_jobs(w)[-1].inputs[0]["container_type"] == "acquisition"
    # Two session files matching is an error that names them.
    w.upload("lab/p1/s3/ses1/a", "template.nii.gz", "a")
    w.upload("lab/p1/s3/ses1/b", "template.nii.gz", "b")
    run_gear_job(w, "dcm2niix", "lab/p1/s3/ses1/a")
    rep = w.evaluate()
    assert rep.jobs_created == 0 and "2 session files match (a/template.nii.gz, b/" in rep.notes[0]


def test_retries_are_bounded_and_giving_up_is_said(world: World) -> None:
    w = world
    session_setup(w, retries=2)
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    run_gear_job(w, "dicom-header", "lab/p1/s1/ses1/anat")
    assert w.evaluate().jobs_created == 1
    for attempt in (1, 2, 3):
        job = qc_jobs(w)[-1]
        assert job.attempt == attempt
        w.finish(job.id, JobState.FAILED)
        rep = w.evaluate()
        assert rep.jobs_created == 0, "no new attempt before the controller's retry decision"
        w.no_retry_decision(job.id)
        rep = w.evaluate()
        if attempt < 3:
            assert rep.jobs_created == 1
            new = qc_jobs(w)[-1]
            assert new.previous_id == job.id and new.attempt == attempt + 1
        else:
            assert rep.jobs_created == 0 and rep.gave_up == 1
            assert "gave up after 3 failed attempt(s) (retries: 2)" in rep.notes[0]
    last = qc_jobs(w)[-1]
    assert [e.kind for e in w.events(last.id)][-1] == "rule_gave_up"
    # Said once, not on every evaluation.
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    rep = w.evaluate()
    assert rep.gave_up == 0 and rep.jobs_created == 0 and len(qc_jobs(w)) == 3


def test_controller_retries_count_as_attempts(world: World) -> None:
    w = world
    session_setup(w, retries=1)
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    run_gear_job(w, "dicom-header", "lab/p1/s1/ses1/anat")
    w.evaluate()
    (first,) = qc_jobs(w)
    w.finish(first.id, JobState.FAILED, FailureKind.NODE_FAILURE)
    with w.db.session() as s:  # the controller retries infrastructure failures itself
        second = retry_job(s, ADMIN, first.id, reason="automatic retry after node_failure").id
    w.no_retry_decision(first.id)
    assert w.evaluate().jobs_created == 0
    w.finish(second, JobState.FAILED)
    w.no_retry_decision(second)
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.gave_up == 1


def test_cancelled_attempts_are_not_retried(world: World) -> None:
    w = world
    session_setup(w, retries=3)
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    run_gear_job(w, "dicom-header", "lab/p1/s1/ses1/anat")
    w.evaluate()
    (job,) = qc_jobs(w)
    w.finish(job.id, JobState.CANCELLED)
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    assert w.evaluate().jobs_created == 0
    with w.db.session() as s:
        t = test_rule(s, ADMIN, w.sites, "lab/p1/qc", "lab/p1/s1/ses1")
    assert "was cancelled; no automatic retry" in "\n".join(t.explanation.lines())


def test_new_input_version_starts_a_fresh_attempt(world: World) -> None:
    w = world
    session_setup(w, retries=0)
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    run_gear_job(w, "dicom-header", "lab/p1/s1/ses1/anat")
    w.evaluate()
    (job,) = qc_jobs(w)
    w.finish(job.id, JobState.FAILED)
    w.no_retry_decision(job.id)
    assert w.evaluate().gave_up == 1
    w.upload("lab/p1/s1/ses1/anat", "sub-01_T1w.nii.gz", "t1 fixed")
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    assert w.evaluate().jobs_created == 1
    assert qc_jobs(w)[-1].inputs[0]["version"] == 2


def test_session_when_and_metadata_trigger(world: World) -> None:
    w = world
    w.apply(
        """
project: lab/p1
rules:
  - name: qc-when-ready
    gear: test-gear@1.0.0
    after: [dcm2niix]
    when: {session.tags: ready}
"""
    )
    w.upload("lab/p1/s1/ses1/anat", "x.txt", "x")
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    assert w.evaluate().jobs_created == 0
    w.tag("lab/p1/s1/ses1", "ready")
    rep = w.evaluate()
    assert rep.jobs_created == 1 and rep.sessions_evaluated == 1


def test_rule_test_on_a_session_explains(world: World) -> None:
    w = world
    session_setup(w)
    run_gear_job(w, "dcm2niix", "lab/p1/s1/ses1/anat")
    with w.db.session() as s:
        t = test_rule(s, "rory", w.sites, "lab/p1/qc", "lab/p1/s1/ses1")
    text = "\n".join(t.explanation.lines())
    assert not t.would_fire
    assert "[FAIL] all prerequisites completed: 1 of 2 completed" in text
    assert "[PASS] dcm2niix completed: job " in text
    assert "[FAIL] dicom-header completed: no completed dicom-header job on this session" in text
    run_gear_job(w, "dicom-header", "lab/p1/s1/ses1/anat")
    with w.db.session() as s:
        t = test_rule(s, "rory", w.sites, "lab/p1/qc", "lab/p1/s1/ses1")
    text = "\n".join(t.explanation.lines())
    assert t.would_fire, text
    assert "[PASS] input input_file matches" in text and "anat/sub-01_T1w.nii.gz v1" in text
    assert "[PASS] attempts: none yet (up to 2 allowed)" in text


def test_session_rules_refuse_file_conditions(world: World) -> None:
    import pytest

    from hpcgear.errors import SchemaError

    with pytest.raises(SchemaError) as info:
        world.apply(
            """
project: lab/p1
rules:
  - name: bad
    gear: test-gear@1.0.0
    after: [dcm2niix]
    when: {file.type: nifti}
"""
        )
    assert info.value.message.startswith("test.yaml:7: rules[0].when:")
    assert "runs on a session" in info.value.message
    with world.db.session() as s:
        assert s.scalars(select(GearRule)).all() == []
