"""stage-in: one attempt's job directory on scratch (inputs, config.json, script)."""

from __future__ import annotations

from typing import Any

from hpcgear.errors import StagingError
from hpcgear.render import JobPaths
from hpcgear.runtimes.envfile import render_gear_env
from hpcgear.spec import JobSpec
from hpcgear.states import FailureKind

from .context import ControllerContext, CycleReport, fail_job, job_session
from .sites import SiteRuntime


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

    try:
        stage_in(
            rt.transport,
            ctx.store,
            spec,
            paths,
            config_json=config_json,
            gear_env=render_gear_env(spec),
            script_text=script_text,
        )
    except StagingError as exc:
        with job_session(ctx, spec.job_id) as (s, job):
            fail_job(s, job, ctx.actor, FailureKind.INPUT_STAGING, exc.message)
        report.failed += 1
        return False
    return True
