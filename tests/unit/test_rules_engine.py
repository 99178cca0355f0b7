"""The file-rule engine on SQLite and PostgreSQL: edges, dedupe, guards, cursors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from hpcgear.db.models import ChangeLog, GearRule, Job, RuleCursor, RuleMatch
from hpcgear.errors import HpcgearError, PermissionDeniedError
from hpcgear.hierarchy import service as hs
from hpcgear.jobs.sites import SiteRegistry
from hpcgear.rules import cursors
from hpcgear.rules.engine import evaluate, evaluate_for_controller, test_rule
from hpcgear.states import JobState
from hpcgear.units import parse_since
from tests.unit.rules_support import ADMIN, GEARS, REPO, World, world_fixture  # noqa: F401

DICOM_RULE = """
project: lab/p1
rules:
  - name: convert
    gear: dcm2niix
    when:
      all:
        - file.type: dicom
        - file.classification.Intent: Structural
    input: dicom
    config: {compress_images: "n"}
    tags: [hpc]
    priority: high
"""


def rule_id(w: World, name: str = "convert") -> int:
    with w.db.session() as s:
        rid = s.scalar(select(GearRule.id).where(GearRule.name == name))
    assert rid is not None
    return int(rid)


STRUCTURAL = {"classification": {"Intent": ["Structural"], "Measurement": ["T1"]}}


def test_new_matching_upload_queues_one_job_with_rule_origin(world: World) -> None:
    w = world
    assert w.apply(DICOM_RULE) == ["created"]
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    w.upload("lab/p1/s1/ses1/T2", "t2.dicom.zip", "x", metadata={"classification": {}})
    rep = w.evaluate()
    assert (rep.changes_read, rep.files_evaluated, rep.jobs_created) == (2, 2, 1)
    (job,) = w.jobs()
    rid = rule_id(w)
    assert job.rule_id == rid and job.origin_type == "rule" and job.origin_id == str(rid)
    assert job.inputs[0]["name"] == "dicom" and job.inputs[0]["version"] == 1
    assert job.config["compress_images"] == "n" and job.priority == "high"
    assert job.tags == ["hpc"] and job.site == "curc-alpine"  # the hpc tag routes to the cluster
    events = w.events(job.id)
    assert events[0].actor == ADMIN and "rule convert" in (events[0].message or "")
    assert rep.jobs[0]["id"] == job.id and rep.jobs[0]["rule"] == "convert"
    # Nothing new: nothing read, nothing queued.
    again = w.evaluate()
    assert (again.changes_read, again.jobs_created) == (0, 0)


def test_reupload_of_same_bytes_queues_nothing(world: World) -> None:
    w = world
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "same", metadata=STRUCTURAL)
    assert w.evaluate().jobs_created == 1
    res = w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "same", metadata=STRUCTURAL)
    assert res.created is False
    rep = w.evaluate()
    # identical bytes with metadata: a file.meta change is read, but the version already matched
    assert rep.changes_read == 1 and rep.files_evaluated == 1 and rep.jobs_created == 0
    assert len(w.jobs()) == 1


def test_new_version_that_matches_queues_exactly_one_job(world: World) -> None:
    w = world
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    w.evaluate()
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v2")
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v3")  # two versions before one evaluation
    rep = w.evaluate()
    assert rep.jobs_created == 1
    jobs = w.jobs()
    assert [j.inputs[0]["version"] for j in jobs] == [1, 3]
    assert w.evaluate().jobs_created == 0


def test_metadata_change_that_makes_a_file_match_queues_one_job(world: World) -> None:
    w = world
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1")
    assert w.evaluate().jobs_created == 0  # no classification yet
    w.set_meta("lab/p1/s1/ses1/T1/t1.dicom.zip", STRUCTURAL)
    assert w.evaluate().jobs_created == 1
    # More metadata on an already matching version: no new job (edge, not state).
    w.tag("lab/p1/s1/ses1/T1/t1.dicom.zip", "reviewed")
    w.set_meta("lab/p1/s1/ses1/T1/t1.dicom.zip", {"info": {"note": "checked"}})
    rep = w.evaluate()
    assert rep.changes_read == 2 and rep.jobs_created == 0 and rep.duplicates == 0
    # Stop matching, match again: a new edge, but the job would be identical: deduplicated.
    w.set_meta("lab/p1/s1/ses1/T1/t1.dicom.zip", {"classification": {}})
    w.evaluate()
    w.set_meta("lab/p1/s1/ses1/T1/t1.dicom.zip", STRUCTURAL)
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.duplicates == 1
    assert len(w.jobs()) == 1


def test_container_metadata_change_makes_files_match(world: World) -> None:
    w = world
    w.apply(
        """
project: lab/p1
rules:
  - name: on-qc-session
    gear: test-gear@1.0.0
    when: {all: [{file.type: nifti}, {session.tags: qc-pass}]}
    input: input_file
"""
    )
    w.upload("lab/p1/s1/ses1/T1", "a.nii.gz", "a")
    w.upload("lab/p1/s1/ses1/T2", "b.nii.gz", "b")
    w.upload("lab/p1/s1/ses2/T1", "c.nii.gz", "c")
    assert w.evaluate().jobs_created == 0
    w.tag("lab/p1/s1/ses1", "qc-pass")
    rep = w.evaluate()
    assert rep.jobs_created == 2 and rep.files_evaluated == 2  # only ses1's files are looked at
    assert {j.inputs[0]["file_name"] for j in w.jobs()} == {"a.nii.gz", "b.nii.gz"}


def test_disabling_a_rule_stops_it(world: World) -> None:
    w = world
    w.apply(DICOM_RULE)
    with w.db.session() as s:
        from hpcgear.rules.service import set_enabled

        set_enabled(s, ADMIN, "lab/p1/convert", False)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    rep = w.evaluate()
    assert rep.changes_read == 1 and rep.jobs_created == 0
    with w.db.session() as s:
        from hpcgear.rules.service import set_enabled

        set_enabled(s, ADMIN, "lab/p1/convert", True)
    # Re-enabling does not replay what happened while it was off ...
    assert w.evaluate().jobs_created == 0
    # ... but acts on the next change.
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v2")
    assert w.evaluate().jobs_created == 1


def test_same_inputs_and_config_are_never_queued_twice(world: World) -> None:
    w = world
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    w.evaluate()
    # Forget the memory: only the dedupe key protects now (e.g. after a manual DB repair).
    with w.db.session() as s:
        for m in s.scalars(select(RuleMatch)):
            s.delete(m)
    w.tag("lab/p1/s1/ses1/T1/t1.dicom.zip", "again")
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.duplicates == 1
    # Changing the rule's config makes a different job: the edge then needs a new change.
    w.apply(DICOM_RULE.replace('compress_images: "n"', 'compress_images: "y"'))
    w.tag("lab/p1/s1/ses1/T1/t1.dicom.zip", "again2")
    assert w.evaluate().jobs_created == 0  # still the same matched version: no edge
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v2")
    assert w.evaluate().jobs_created == 1
    assert [j.config["compress_images"] for j in w.jobs()] == ["n", "y"]


def _analysis_output(w: World, job: Job, name: str, data: str) -> None:
    w.upload(
        "lab/p1/s1/ses1/T1",
        name,
        data,
        origin_type="job",
        origin_id=job.id,
        metadata={"type": "nifti", "classification": {"Intent": ["Structural"]}},
    )


def test_outputs_of_failed_or_unfinished_jobs_never_trigger(world: World) -> None:
    w = world
    w.apply(
        DICOM_RULE
        + """
  - name: nifti-qc
    gear: test-gear@1.0.0
    when: {file.type: nifti}
    input: input_file
"""
    )
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    w.evaluate()
    (conv,) = w.jobs()
    # A job still running (it should never publish, but guard anyway) ...
    _analysis_output(w, conv, "early.nii.gz", "early")
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.guarded == 1
    # ... and a failed one never trigger rules.
    w.finish(conv.id, JobState.FAILED)
    _analysis_output(w, conv, "partial.nii.gz", "partial")
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.guarded == 1
    # A complete job's outputs do (control case).
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v2")
    w.evaluate()
    conv2 = w.jobs()[-1]
    w.finish(conv2.id, JobState.COMPLETE)
    _analysis_output(w, conv2, "good.nii.gz", "good")
    rep = w.evaluate()
    assert rep.jobs_created == 1 and rep.jobs[0]["rule"] == "nifti-qc"
    with w.db.session() as s:
        notes = {m.note for m in s.scalars(select(RuleMatch).where(RuleMatch.outcome == "guarded"))}
    assert any("which is failed, not complete" in (n or "") for n in notes)


def test_rules_never_trigger_themselves(world: World) -> None:
    w = world
    w.apply(
        """
project: lab/p1
rules:
  - name: loop
    gear: test-gear@1.0.0
    when: {file.type: text}
    input: input_file
"""
    )
    w.upload("lab/p1/s1/ses1/A", "a.txt", "a")
    w.evaluate()
    (job,) = w.jobs()
    w.finish(job.id)
    w.upload("lab/p1/s1/ses1/A", "report.txt", "out", origin_type="job", origin_id=job.id)
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.guarded == 1


def test_rule_jobs_act_as_the_owner_who_needs_read_write(world: World) -> None:
    w = world
    w.apply(DICOM_RULE, actor="alice")
    with w.db.session() as s:
        assert s.scalar(select(GearRule.created_by)) == "alice"
        hs.revoke_role(s, ADMIN, "alice", "lab/p1")
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    rep = w.evaluate()
    assert rep.jobs_created == 0 and rep.errors == 1
    assert "alice" in rep.notes[0] and "read-write" in rep.notes[0]
    # The role comes back: the failed attempt is retried on the file's next change.
    with w.db.session() as s:
        hs.grant_role(s, ADMIN, "alice", "lab/p1", "read-write")
    w.tag("lab/p1/s1/ses1/T1/t1.dicom.zip", "retry")
    rep = w.evaluate()
    assert rep.jobs_created == 1
    (job,) = w.jobs()
    assert w.events(job.id)[0].actor == "alice"


def test_changes_from_before_a_rule_existed_need_a_backfill(world: World) -> None:
    w = world
    w.upload("lab/p1/s1/ses1/T1", "old.dicom.zip", "old", metadata=STRUCTURAL)
    w.apply(DICOM_RULE)
    rep = w.evaluate()
    assert rep.changes_read == 1 and rep.jobs_created == 0
    dry = w.evaluate(since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), dry_run=True)
    assert dry.jobs_created == 1 and dry.jobs[0]["id"] is None and w.jobs() == []
    back = w.evaluate(since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert back.jobs_created == 1 and back.changes_read == 1
    again = w.evaluate(since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert again.jobs_created == 0
    with w.db.session() as s:
        cur = s.get(RuleCursor, cursors.CHANGES)
        assert cur is not None and cur.position == 1


def test_dry_run_changes_nothing(world: World) -> None:
    w = world
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    dry = w.evaluate(dry_run=True)
    assert dry.jobs_created == 1 and dry.dry_run
    with w.db.session() as s:
        assert s.scalars(select(RuleMatch)).all() == []
        cur = s.get(RuleCursor, cursors.CHANGES)
        assert cur is None or cur.position == 0
    assert w.jobs() == []
    assert w.evaluate().jobs_created == 1


def test_interrupted_batch_is_redone_without_duplicates(world: World) -> None:
    """A crash mid-evaluation rolls back that batch only; a rerun finishes the job once."""
    w = world
    w.apply(DICOM_RULE)
    for i in range(7):
        w.upload(f"lab/p1/s1/ses{i}/T1", "t1.dicom.zip", f"x{i}", metadata=STRUCTURAL)
    first = w.evaluate(batch_size=3, max_batches=1)
    assert first.jobs_created == 3 and first.change_cursor == 3

    def interrupted() -> SiteRegistry:
        raise KeyboardInterrupt  # ^C while the next batch prepares its first job

    with pytest.raises(KeyboardInterrupt):
        evaluate(w.db, interrupted, batch_size=3)
    assert len(w.jobs()) == 3
    with w.db.session() as s:
        cur = s.get(RuleCursor, cursors.CHANGES)
        assert cur is not None and cur.position == 3
    rest = w.evaluate(batch_size=3)
    assert rest.jobs_created == 4 and rest.changes_read == 4
    assert len({j.inputs[0]["file_id"] for j in w.jobs()}) == 7


def test_cursor_compare_and_set_stops_a_racing_evaluator(world: World) -> None:
    w = world
    with w.db.session() as s:
        old = cursors.read_cursor(s, cursors.CHANGES)
    with w.db.session() as s:
        cursors.save_cursor(s, old, cursors.CursorState(cursors.CHANGES, 5, []))
    with pytest.raises(cursors.CursorMoved), w.db.session() as s:
        cursors.save_cursor(s, old, cursors.CursorState(cursors.CHANGES, 9, []))
    with w.db.session() as s:
        assert cursors.read_cursor(s, cursors.CHANGES).position == 5


def test_gap_ids_are_read_when_their_transaction_commits_late(world: World) -> None:
    """PostgreSQL may commit id 3 after id 4: the evaluator must not skip 3 for good."""
    w = world
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "a.dicom.zip", "a", metadata=STRUCTURAL)  # seq 1
    late_container = w.container("lab/p1/s1/ses1/T1")
    w.upload("lab/p1/s1/ses2/T1", "b.dicom.zip", "b", metadata=STRUCTURAL)  # seq 2
    fid = w.file_id("lab/p1/s1/ses2/T1/b.dicom.zip")
    with w.db.session() as s:  # make seq 2 look like it has not committed yet
        row = s.get(ChangeLog, 2)
        assert row is not None
        s.delete(row)
        s.execute(
            insert(ChangeLog).values(
                seq=3,
                kind="file.meta",
                container_id=late_container.id,
                file_id=w.file_id("lab/p1/s1/ses1/T1/a.dicom.zip"),
                file_version=1,
                actor=ADMIN,
            )
        )
    rep = w.evaluate()
    assert rep.changes_read == 2 and rep.jobs_created == 1
    with w.db.session() as s:
        cur = s.get(RuleCursor, cursors.CHANGES)
        assert cur is not None and cur.position == 3 and [g for g, _ in cur.gaps] == [2]
        s.execute(  # the late transaction commits
            insert(ChangeLog).values(
                seq=2,
                kind="file.version",
                container_id=late_container.id,
                file_id=fid,
                file_version=1,
                actor=ADMIN,
            )
        )
    rep = w.evaluate()
    assert rep.changes_read == 1 and rep.jobs_created == 1
    with w.db.session() as s:
        cur = s.get(RuleCursor, cursors.CHANGES)
        assert cur is not None and cur.gaps == []


def test_gap_bookkeeping() -> None:
    st = cursors.CursorState("x", 10, [(5, 1000.0)])
    new = cursors.advance(st, [11, 14, 15], {5}, now=2000.0)
    assert new.position == 15 and new.gaps == [(12, 2000.0), (13, 2000.0)]
    later = cursors.advance(new, [], set(), now=2000.0 + cursors.GAP_GRACE_SECONDS + 1)
    assert later.gaps == [] and later.position == 15
    jump = cursors.advance(st, [10 + cursors.MAX_GAP_RUN + 5], set(), now=1000.5)
    assert jump.gaps == [(5, 1000.0)]  # a sequence jump is not a gap


def test_controller_hook_creates_jobs(world: World, db_url: str) -> None:
    from hpcgear.config.settings import Settings
    from hpcgear.controller.context import ControllerContext

    w = world
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    settings = Settings(
        config_path=w.tmp / "c.yaml",
        database_url=db_url,
        storage_root=w.tmp / "store",
        scratch_root=w.tmp / "scratch",
        sites=(REPO / "site_configs" / "curc-alpine.yaml",),
    )
    ctx = ControllerContext(db=w.db, store=w.store, settings=settings)
    assert evaluate_for_controller(ctx) == 1
    assert evaluate_for_controller(ctx) == 0
    (job,) = w.jobs()
    assert job.state == JobState.PENDING.value and job.site == "curc-alpine"


def test_rule_test_explains(world: World) -> None:
    w = world
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1")
    with w.db.session() as s:
        t = test_rule(s, "rory", w.sites, "lab/p1/convert", "lab/p1/s1/ses1/T1/t1.dicom.zip")
    assert not t.would_fire
    lines = "\n".join(t.explanation.lines())
    assert "[FAIL] file.classification.Intent contains 'Structural': " in lines
    assert "file.classification.Intent is empty" in lines
    assert "[PASS] file.type equals 'dicom'" in lines
    w.set_meta("lab/p1/s1/ses1/T1/t1.dicom.zip", STRUCTURAL)
    with w.db.session() as s:
        t = test_rule(s, ADMIN, w.sites, "lab/p1/convert", "lab/p1/s1/ses1/T1/t1.dicom.zip")
    assert t.would_fire, "\n".join(t.explanation.lines())
    w.evaluate()
    with w.db.session() as s:
        t = test_rule(s, ADMIN, w.sites, "lab/p1/convert", "lab/p1/s1/ses1/T1/t1.dicom.zip")
    text = "\n".join(t.explanation.lines())
    assert not t.would_fire and "[FAIL] this version newly matches (edge)" in text
    assert "[FAIL] no equal job of this rule exists" in text
    with w.db.session() as s:
        hs.add_user(s, ADMIN, "eve")
    with pytest.raises(PermissionDeniedError), w.db.session() as s:
        test_rule(s, "eve", w.sites, "lab/p1/convert", "lab/p1/s1/ses1/T1/t1.dicom.zip")


def test_saving_checks_gear_inputs_and_config(world: World) -> None:
    w = world
    cases = [
        (DICOM_RULE.replace("compress_images", "compres_images"), "unknown config key"),
        (DICOM_RULE.replace('"n"', '"maybe"'), "compress_images"),
        (DICOM_RULE.replace("input: dicom", "input: t1"), "has no input 't1'"),
        (DICOM_RULE.replace("gear: dcm2niix", "gear: dcm2niix@9"), "not installed"),
        (DICOM_RULE.replace("gear: dcm2niix", "gear: nope"), "nope"),
        (DICOM_RULE.replace("tags: [hpc]", "tags: ['bad tag']"), "tag"),
        (
            "project: lab/p1\nrules:\n  - {name: self, gear: test-gear, after: [test-gear]}\n",
            "cannot wait for its own gear",
        ),
        (
            "project: lab/p1\nrules:\n  - {name: req, gear: dcm2niix, after: [dicom-header]}\n",
            "required input(s) dicom of gear dcm2niix get no file",
        ),
        (
            "project: lab/p1\nrules:\n"
            "  - {name: fx, gear: test-gear, when: {file.type: x}, input: input_file,"
            " fixed_inputs: {input_file: lab/p1/none.txt}}\n",
            "both the trigger input and a fixed input",
        ),
    ]
    for text, needle in cases:
        with pytest.raises(HpcgearError) as info:
            w.apply(text)
        assert needle in info.value.message and info.value.hint, (needle, info.value.message)
    with pytest.raises(PermissionDeniedError):
        w.apply(DICOM_RULE, actor="rory")
    with w.db.session() as s:
        assert s.scalars(select(GearRule)).all() == []


def test_since_parsing() -> None:
    now = dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC)
    assert parse_since("2h", now) == now - dt.timedelta(hours=2)
    assert parse_since("7d", now) == now - dt.timedelta(days=7)
    assert parse_since("2026-01-30T08:00", now) == dt.datetime(2026, 1, 30, 8, tzinfo=dt.UTC)
    with pytest.raises(Exception, match="neither a time nor a duration"):
        parse_since("yesterday", now)


def install_two_input_gear(w: World, tmp: Path) -> None:
    """test-gear's manifest with a second file input, ``template`` (a derived test gear)."""
    import json

    from hpcgear.gears.service import install_gear

    manifest = json.loads((GEARS["test-gear"] / "manifest.json").read_text())
    manifest["name"] = "two-inputs"
    manifest["inputs"]["template"] = {"base": "file", "description": "A template."}
    d = tmp / "two-inputs"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(manifest))
    with w.db.session() as s:
        install_gear(s, w.store, ADMIN, d)


def test_fixed_inputs_stay_pinned(world: World, tmp_path: Path) -> None:
    w = world
    install_two_input_gear(w, tmp_path)
    w.upload("lab/p1", "template.txt", "template v1")
    w.apply(
        """
project: lab/p1
rules:
  - name: with-template
    gear: two-inputs
    when: {file.name: "*.bval"}
    input: input_file
    fixed_inputs: {template: lab/p1/template.txt}
"""
    )
    w.upload("lab/p1", "template.txt", "template v2")  # the pin stays at v1
    w.upload("lab/p1/s1/ses1/dwi", "dwi.bval", "0 1000")
    w.evaluate()
    (job,) = w.jobs()
    assert sorted((i["name"], i["file_name"], i["version"]) for i in job.inputs) == [
        ("input_file", "dwi.bval", 1),
        ("template", "template.txt", 1),
    ]
    with w.db.session() as s:
        from hpcgear.rules.service import get_rule_row, rule_to_dict

        data = rule_to_dict(s, get_rule_row(s, ADMIN, "lab/p1/with-template")[1])
    assert data["fixed_inputs"]["template"]["version"] == 1
    # Re-applying the same file keeps the pin (idempotent), an explicit version moves it.
    text = (
        "project: lab/p1\nrules:\n  - {name: with-template, gear: two-inputs, "
        "when: {file.name: '*.bval'}, input: input_file, fixed_inputs: {template: %s}}\n"
    )
    assert w.apply(text % "lab/p1/template.txt") == ["unchanged"]
    assert w.apply(text % "{path: lab/p1/template.txt, version: 2}") == ["updated"]


def test_auto_update_follows_new_gear_versions(world: World, tmp_path: Path) -> None:
    import json

    from hpcgear.gears.service import install_gear, set_disabled

    w = world
    w.apply(
        """
project: lab/p1
rules:
  - {name: latest, gear: test-gear, auto_update: true, when: {file.type: text}, input: input_file}
  - {name: pinned, gear: test-gear, when: {file.type: text}, input: input_file}
"""
    )
    manifest = json.loads((GEARS["test-gear"] / "manifest.json").read_text())
    manifest["version"] = "1.1.0"
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with w.db.session() as s:
        install_gear(s, w.store, ADMIN, newer)
    w.upload("lab/p1/s1/ses1/a", "a.txt", "a")
    w.evaluate()
    used = {j.rule_id: j.gear_id for j in w.jobs()}
    with w.db.session() as s:
        from hpcgear.db.models import Gear

        versions = {rid: s.get(Gear, gid).version for rid, gid in used.items()}  # type: ignore[union-attr]
    assert versions == {rule_id(w, "latest"): "1.1.0", rule_id(w, "pinned"): "1.0.0"}
    # A disabled newest version is skipped: auto_update means the latest *enabled* one.
    with w.db.session() as s:
        set_disabled(s, ADMIN, "test-gear@1.1.0")
    w.upload("lab/p1/s1/ses1/a", "a.txt", "a2")
    rep = w.evaluate()
    assert rep.jobs_created == 2  # both rules: a new input version
    assert {j["gear"] for j in rep.jobs} == {"test-gear@1.0.0"}


def test_a_locked_database_is_one_clear_transient_error(tmp_path: Path) -> None:
    """SQLite held by another writer: the batch rolls back and the error says to rerun."""
    import sqlite3

    from sqlalchemy import create_engine

    from hpcgear.db.session import Database, upgrade
    from hpcgear.errors import DatabaseError
    from tests.unit.rules_support import make_world

    url = f"sqlite:///{tmp_path / 'x.db'}"
    main = Database(create_engine(url))
    upgrade(main.engine)
    w = make_world(main, tmp_path)
    w.apply(DICOM_RULE)
    w.upload("lab/p1/s1/ses1/T1", "t1.dicom.zip", "v1", metadata=STRUCTURAL)
    impatient = Database(create_engine(url, connect_args={"timeout": 0.2}))
    holder = sqlite3.connect(tmp_path / "x.db")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(DatabaseError) as info:
            evaluate(impatient, w.sites)
        assert info.value.transient and "database is locked" in info.value.message
        assert "run again" in info.value.hint
    finally:
        holder.rollback()
        holder.close()
    assert w.jobs() == []
    rep = evaluate(impatient, w.sites)
    assert rep.jobs_created == 1
    impatient.dispose()
    main.dispose()
