"""stage-in: one attempt's job directory on scratch (inputs, config.json, script,
and the BIDS view a gear's manifest asks for)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from hpcgear.db.models import Job
from hpcgear.errors import HpcgearError, StagingError
from hpcgear.render import JobPaths, TaskFile
from hpcgear.runtimes.envfile import render_gear_env
from hpcgear.spec import JobSpec, TreeFile
from hpcgear.states import FailureKind

from .context import ControllerContext, CycleReport, fail_job, heartbeat, job_session
from .sites import SiteRuntime

BIDS_VIEW_EVENT = "bids_view.staged"


def bids_view_files(session: Session, job: Job, spec: JobSpec) -> list[TreeFile]:
    """The BIDS tree of the job's destination, as the job's requester may read it
    (the rule's author for rule jobs); the same plan ``hpcgear export bids`` writes."""
    from hpcgear.auth.keys import job_key_owner
    from hpcgear.ingest.bids import bids_view

    assert spec.bids_view is not None
    plan = bids_view(
        session,
        job_key_owner(session, job),
        spec.destination_type,
        spec.destination_id,
        data_types=spec.bids_view.data_types,
    )
    return plan.files


def bids_view_tree(ctx: ControllerContext, spec: JobSpec) -> list[TreeFile]:
    """``bids_view_files`` in a transaction of its own."""
    with job_session(ctx, spec.job_id) as (s, job):
        return bids_view_files(s, job, spec)


def stage_attempt(
    ctx: ControllerContext,
    rt: SiteRuntime,
    spec: JobSpec,
    paths: JobPaths,
    config_json: dict[str, Any],
    script_text: str,
    report: CycleReport,
) -> bool:
    """Stage one attempt in; a staging failure fails the job (input_staging)."""
    from hpcgear.staging.stagein import stage_in

    tree: list[TreeFile] = []
    try:
        if spec.bids_view is not None:
            try:
                tree = bids_view_tree(ctx, spec)
            except HpcgearError as exc:
                raise StagingError(f"BIDS view: {exc.message}", exc.hint) from None
        stage_in(
            rt.transport,
            ctx.store,
            spec,
            paths,
            config_json=config_json,
            gear_env=render_gear_env(spec),
            script_text=script_text,
            tree=tree,
            tree_dir=spec.bids_view.dir if spec.bids_view is not None else None,
        )
    except StagingError as exc:
        with job_session(ctx, spec.job_id) as (s, job):
            fail_job(s, job, ctx.actor, FailureKind.INPUT_STAGING, exc.message)
        report.failed += 1
        return False
    if spec.bids_view is not None:
        _record_bids_view(ctx, spec, tree)
    return True


def _record_bids_view(ctx: ControllerContext, spec: JobSpec, tree: Sequence[TreeFile]) -> None:
    """The ``bids_view.staged`` event; provenance counts the view's stored files as
    inputs (role "bids-view")."""
    from hpcgear.jobs.transitions import record_event

    assert spec.bids_view is not None
    files = [
        {"path": t.path, "file_id": t.file_id, "version": t.version, "sha256": t.sha256,
         "size": t.size, "container_id": t.container_id}
        for t in tree
        if t.file_id is not None
    ]
    with job_session(ctx, spec.job_id) as (s, job):
        record_event(
            s, job, BIDS_VIEW_EVENT, ctx.actor,
            f"BIDS view of {len(tree)} file(s) in /flywheel/v0/{spec.bids_view.dir}",
            data={"dir": spec.bids_view.dir, "count": len(tree), "files": files},
        )


def stage_array_attempts(
    ctx: ControllerContext,
    rt: SiteRuntime,
    specs: Sequence[JobSpec],
    all_paths: Sequence[JobPaths],
    configs: Sequence[dict[str, Any]],
    tasks_dat: str,
    report: CycleReport,
) -> list[tuple[int, tuple[TaskFile, ...]]]:
    """Stage an array in as ONE ``tasks.dat`` (each task builds its job directory from it
    when it starts); ``(index, files)`` of the tasks staged. A task that could not be
    staged is failed (``input_staging``), as is every task when the file cannot be written.
    """
    from hpcgear.staging.stagein import ArrayTask, stage_array

    tasks: list[ArrayTask] = []
    index: list[int] = []
    trees: dict[int, list[TreeFile]] = {}
    failed: dict[int, str] = {}
    for i, (spec, paths, cfg) in enumerate(zip(specs, all_paths, configs, strict=True)):
        tree: list[TreeFile] = []
        if spec.bids_view is not None:
            heartbeat(ctx)
            try:
                tree = bids_view_tree(ctx, spec)
            except HpcgearError as exc:
                failed[i] = f"BIDS view: {exc.message}"
                continue
            trees[i] = tree
        tasks.append(ArrayTask(
            spec, paths, cfg, render_gear_env(spec), tree,
            spec.bids_view.dir if spec.bids_view is not None else None,
        ))
        index.append(i)
    staged: list[tuple[int, tuple[TaskFile, ...]]] = []
    try:
        result = stage_array(rt.transport, ctx.store, tasks_dat, tasks)
    except StagingError as exc:
        failed.update(dict.fromkeys(index, exc.message))
    else:
        for n, files in enumerate(result.files):
            if files is None:
                failed[index[n]] = result.errors[n].message
            else:
                staged.append((index[n], files))
    for i, message in sorted(failed.items()):
        with job_session(ctx, specs[i].job_id) as (s, job):
            fail_job(s, job, ctx.actor, FailureKind.INPUT_STAGING, message)
        report.failed += 1
    for i, _files in staged:
        spec = specs[i]
        if spec.bids_view is None:
            continue
        _record_bids_view(ctx, spec, trees[i])
    return staged
