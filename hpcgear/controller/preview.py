"""``--dry-run``: the resolved resources and the exact sbatch script, changing nothing."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from sqlalchemy.orm import Session

from hpcgear.controller.resolve import attempt_paths, resolve_spec
from hpcgear.db.models import Job
from hpcgear.gears.images import digest_hex
from hpcgear.jobs.service import PreparedJob, input_spec_to_json, resources_to_json
from hpcgear.render import build_runtime_argv, render_sbatch

DRY_RUN_ID = "dry-run"


@dataclass(frozen=True, slots=True)
class Preview:
    site: str
    resources: list[str]
    script: str
    script_sha256: str
    argv: list[str]


def preview_job(session: Session, prepared: PreparedJob, actor: str) -> Preview:
    """Render what the controller would submit for ``prepared`` (nothing is stored)."""
    job = Job(  # transient: never added to the session
        id=prepared.job.id if prepared.job is not None else DRY_RUN_ID,
        attempt=1,
        gear_id=prepared.gear.id,
        config=prepared.config,
        inputs=[input_spec_to_json(s) for s in prepared.inputs],
        resources=resources_to_json(prepared.resources),
        destination_type=prepared.destination.type,
        destination_id=prepared.destination.id,
        tags=list(prepared.tags),
        priority=prepared.priority,
        origin_type="user",
        origin_id=actor,
    )
    site = prepared.site
    digest = prepared.gear.image_digest or "sha256:" + "0" * 64
    sif = posixpath.join(site.runtime.image_cache, f"sha256-{digest_hex(digest)}.sif")
    spec = resolve_spec(session, job, site, sif)
    paths = attempt_paths(site, job)
    script = render_sbatch(spec, site, paths)
    return Preview(
        site=site.name,
        resources=prepared.resources.explain(),
        script=script.text,
        script_sha256=script.sha256,
        argv=build_runtime_argv(spec, site, paths),
    )
