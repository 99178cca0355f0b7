"""resolve: a job row and its gear become the frozen JobSpec of one attempt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.config.site import SiteConfig
from hpcgear.db.models import Gear, Job
from hpcgear.errors import InvalidInputError
from hpcgear.gears.configjson import build_config_json
from hpcgear.gears.manifest import GearManifest, parse_manifest
from hpcgear.gears.reserved import split_reserved
from hpcgear.jobs.service import input_spec_from_json
from hpcgear.render import JobPaths
from hpcgear.spec import GearRef, JobSpec, Resources
from hpcgear.states import FailureKind

from .context import ControllerContext, CycleReport, fail_job, job_session, spec_user
from .sites import SiteRuntime


def resolve_spec(
    session: Session,
    job: Job,
    site: SiteConfig,
    sif_path: str,
    *,
    manifest: GearManifest | None = None,
) -> JobSpec:
    """Build the frozen JobSpec for one attempt from its row and its gear."""
    gear = session.get(Gear, job.gear_id)
    assert gear is not None
    if manifest is None:
        manifest = parse_manifest(gear.manifest, source=f"{gear.name}@{gear.version}")
    r = job.resources or {}
    resources = Resources(
        cpus=int(r.get("cpus") or 1),
        mem_mb=int(r.get("mem_mb") or 2048),
        time_minutes=int(r.get("time_minutes") or 60),
        gpus=int(r.get("gpus") or 0),
        gres=r.get("gres"),
        nodes=int(r.get("nodes") or 1),
        ntasks=int(r.get("ntasks") or 1),
        partition=r.get("partition"),
        qos=r.get("qos"),
        account=r.get("account"),
    )
    return JobSpec(
        job_id=job.id,
        attempt=job.attempt,
        gear=GearRef(
            name=gear.name,
            version=gear.version,
            manifest_sha256=gear.manifest_sha256,
            image_ref=gear.image_ref or "",
            image_digest=gear.image_digest or "",
            sif_path=sif_path,
            command=manifest.command,
            environment=manifest.environment,
            category=gear.category,
        ),
        config=dict(job.config or {}),
        inputs=tuple(input_spec_from_json(i) for i in job.inputs or []),
        destination_type=job.destination_type,
        destination_id=job.destination_id,
        resources=resources,
        site=site.name,
        user=spec_user(job),
        tags=tuple(job.tags or ()),
        priority=job.priority,
        writable_tmpfs=r.get("writable"),
        runtime_debug=bool(r.get("debug")),
        bids_view=manifest.bids_view,
    )


def attempt_paths(site: SiteConfig, job: Job) -> JobPaths:
    """Where this job row's attempt lives on ``site``'s scratch."""
    return JobPaths.for_job(site.render_scratch_root(spec_user(job)), job.id, job.attempt)


def config_json_for(
    session: Session,
    job: Job,
    spec: JobSpec,
    *,
    manifest: GearManifest | None = None,
    api_url: str | None = None,
) -> dict[str, Any]:
    """The job's config.json; a gear with an api-key input gets a job-scoped key for
    ``api_url`` (the site's), written only into this private document."""
    if manifest is None:
        gear = session.get(Gear, job.gear_id)
        assert gear is not None
        manifest = parse_manifest(gear.manifest, source=f"{gear.name}@{gear.version}")
    gear_config, _ = split_reserved(spec.config, declared=manifest.config_names)
    api_key = None
    if api_url and any(i.base == "api-key" for i in manifest.inputs):
        from hpcgear.auth.keys import create_job_key, format_key, job_key_owner

        api_key = format_key(api_url, create_job_key(session, job, job_key_owner(session, job)))
    return build_config_json(
        gear_config,
        spec.inputs,
        spec.destination_type,
        spec.destination_id,
        manifest=manifest,
        job_id=job.id,
        api_key=api_key,
    )


def prepare_attempt(
    ctx: ControllerContext, rt: SiteRuntime, job_id: str, sif: str
) -> tuple[JobSpec, JobPaths, dict[str, Any]]:
    """The frozen spec, job directory and config.json of one attempt."""
    with job_session(ctx, job_id) as (s, job):
        spec = resolve_spec(s, job, rt.site, sif)
        cfg = config_json_for(s, job, spec, api_url=rt.site.api_url)
        return spec, attempt_paths(rt.site, job), cfg


def prepare_attempts(
    ctx: ControllerContext, rt: SiteRuntime, job_ids: Sequence[str], sif: str
) -> list[tuple[JobSpec, JobPaths, dict[str, Any]]]:
    """``prepare_attempt`` for many jobs: one transaction, each gear's manifest parsed once."""
    with ctx.db.session() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(list(job_ids))))}
        manifests: dict[int, GearManifest] = {}
        out = []
        for jid in job_ids:
            job = rows.get(jid)
            if job is None:
                raise InvalidInputError(f"job {jid} vanished", "it was deleted meanwhile")
            if job.gear_id not in manifests:
                gear = s.get(Gear, job.gear_id)
                assert gear is not None
                manifests[job.gear_id] = parse_manifest(
                    gear.manifest, source=f"{gear.name}@{gear.version}"
                )
            spec = resolve_spec(s, job, rt.site, sif, manifest=manifests[job.gear_id])
            cfg = config_json_for(
                s, job, spec, manifest=manifests[job.gear_id], api_url=rt.site.api_url
            )
            out.append((spec, attempt_paths(rt.site, job), cfg))
    return out


def image_digest_or_fail(ctx: ControllerContext, job_id: str, report: CycleReport) -> str | None:
    """The gear's built image digest; without one the job fails (rejected)."""
    with job_session(ctx, job_id) as (s, job):
        gear = s.get(Gear, job.gear_id)
        assert gear is not None
        if not gear.image_digest:
            fail_job(
                s,
                job,
                ctx.actor,
                FailureKind.REJECTED,
                f"gear {gear.name}@{gear.version} has no built image",
            )
            report.failed += 1
            return None
        return str(gear.image_digest)
