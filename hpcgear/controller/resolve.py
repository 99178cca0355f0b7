"""resolve: a job row and its gear become the frozen JobSpec of one attempt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.config.site import SiteConfig
from hpcgear.db.bulk import ByIdentity, records, shared_json
from hpcgear.db.models import Gear, Job
from hpcgear.errors import InvalidInputError
from hpcgear.gears.configjson import build_config_json
from hpcgear.gears.manifest import GearManifest, parse_manifest
from hpcgear.gears.reserved import split_reserved
from hpcgear.jobs.service import input_spec_from_json
from hpcgear.render import JobPaths
from hpcgear.spec import GearRef, InputSpec, JobSpec, Resources
from hpcgear.states import FailureKind

from .context import ControllerContext, CycleReport, fail_job, job_session, spec_user
from .sites import SiteRuntime

#: The job columns a spec and its config.json are built from (a Core row of these, or
#: an ORM ``Job``, serves as the job in :class:`SpecMaker`); the JSON ones are read
#: with :func:`spec_columns`.
SPEC_COLUMNS = (
    Job.id, Job.attempt, Job.gear_id, Job.config, Job.inputs, Job.destination_type,
    Job.destination_id, Job.resources, Job.origin_type, Job.origin_id, Job.rule_id, Job.tags,
    Job.priority,
)  # fmt: skip
_SPEC_JSON = ("config", "inputs", "resources", "tags")


def spec_columns(*extra: Any) -> list[Any]:
    """:data:`SPEC_COLUMNS` and ``extra`` to select, the JSON ones decoded once per
    distinct document for the whole query (a batch's jobs mostly share config,
    resources and tags): rows hold the same objects, which must not be changed."""
    columns = [*SPEC_COLUMNS, *extra]
    shared = {lab.name: lab for lab in shared_json(*(c for c in columns if c.key in _SPEC_JSON))}
    return [shared.get(c.key, c) for c in columns]


class SpecMaker:
    """Builds the frozen specs, job directories and config.json of many attempts on one
    site: each gear's manifest is parsed once, and what jobs share (gear reference,
    resources, the gear config once the reserved keys are split off, scratch root) is
    worked out once per distinct value, not per job.
    """

    def __init__(self, session: Session, site: SiteConfig, sif_path: str) -> None:
        self.session, self.site, self.sif_path = session, site, sif_path
        self._gears: dict[int, tuple[GearRef, GearManifest]] = {}
        self._resources: dict[str, tuple[Resources, Any, bool]] = {}
        self._gear_configs: dict[tuple[int, str], dict[str, Any]] = {}
        self._roots: dict[str, str] = {}
        # Rows read with spec_columns() share their JSON documents.
        self._by_resources, self._by_inputs = ByIdentity(), ByIdentity()
        self._by_tags, self._by_config = ByIdentity(), ByIdentity()

    def gear(
        self, gear_id: int, manifest: GearManifest | None = None
    ) -> tuple[GearRef, GearManifest]:
        """The gear's reference and its parsed manifest."""
        got = self._gears.get(gear_id)
        if got is None:
            gear = self.session.get(Gear, gear_id)
            assert gear is not None
            if manifest is None:
                manifest = parse_manifest(gear.manifest, source=f"{gear.name}@{gear.version}")
            ref = GearRef(
                name=gear.name,
                version=gear.version,
                manifest_sha256=gear.manifest_sha256,
                image_ref=gear.image_ref or "",
                image_digest=gear.image_digest or "",
                sif_path=self.sif_path,
                command=manifest.command,
                environment=manifest.environment,
                category=gear.category,
            )
            got = self._gears[gear_id] = (ref, manifest)
        return got

    def _resources_of(self, r: dict[str, Any] | None) -> tuple[Resources, Any, bool]:
        if r is None:
            return self._resources_by_value({})
        got: tuple[Resources, Any, bool] = self._by_resources.get(r, self._resources_by_value)
        return got

    def _resources_by_value(self, r: dict[str, Any]) -> tuple[Resources, Any, bool]:
        key = json.dumps(r, sort_keys=True, default=str)
        got = self._resources.get(key)
        if got is None:
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
            got = self._resources[key] = (resources, r.get("writable"), bool(r.get("debug")))
        return got

    def scratch_root(self, user: str) -> str:
        root = self._roots.get(user)
        if root is None:
            root = self._roots[user] = self.site.render_scratch_root(user)
        return root

    def spec(self, job: Any, manifest: GearManifest | None = None) -> JobSpec:
        """The frozen JobSpec of ``job`` (an ORM ``Job`` or a Core row of SPEC_COLUMNS)."""
        ref, manifest = self.gear(job.gear_id, manifest)
        resources, writable, debug = self._resources_of(job.resources)
        return JobSpec(
            job_id=job.id,
            attempt=job.attempt,
            gear=ref,
            config=dict(job.config or {}),
            inputs=self._by_inputs.get(job.inputs, _input_specs),
            destination_type=job.destination_type,
            destination_id=job.destination_id,
            resources=resources,
            site=self.site.name,
            user=spec_user(job),
            tags=self._by_tags.get(job.tags, lambda t: tuple(t or ())),
            priority=job.priority,
            writable_tmpfs=writable,
            runtime_debug=debug,
            bids_view=manifest.bids_view,
        )

    def paths(self, job: Any) -> JobPaths:
        """Where ``job``'s attempt lives on the site's scratch."""
        return JobPaths.for_job(self.scratch_root(spec_user(job)), job.id, job.attempt)

    def config_json(
        self, job: Any, spec: JobSpec, api_url: str | None = None, *, check_json: bool = True,
        share: bool = False,
    ) -> dict[str, Any]:
        """:func:`config_json_for`, the gear config split once per distinct config
        (``check_json``, ``share``: see :func:`hpcgear.gears.configjson.build_config_json`)."""
        _ref, manifest = self.gear(job.gear_id)
        key = (
            job.gear_id,
            self._by_config.get(job.config, lambda c: json.dumps(c, sort_keys=True, default=str)),
        )
        gear_config = self._gear_configs.get(key)
        if gear_config is None:
            gear_config, _ = split_reserved(spec.config, declared=manifest.config_names)
            self._gear_configs[key] = gear_config
        return _config_json(
            self.session, job, spec, manifest, gear_config if share else dict(gear_config),
            api_url, check_json=check_json, share=share,
        )


def _input_specs(inputs: list[dict[str, Any]] | None) -> tuple[InputSpec, ...]:
    return tuple(input_spec_from_json(i) for i in inputs or [])


def resolve_spec(
    session: Session,
    job: Job,
    site: SiteConfig,
    sif_path: str,
    *,
    manifest: GearManifest | None = None,
) -> JobSpec:
    """Build the frozen JobSpec for one attempt from its row and its gear."""
    return SpecMaker(session, site, sif_path).spec(job, manifest)


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
    return _config_json(session, job, spec, manifest, gear_config, api_url)


def _config_json(
    session: Session,
    job: Any,
    spec: JobSpec,
    manifest: GearManifest,
    gear_config: dict[str, Any],
    api_url: str | None,
    *,
    check_json: bool = True,
    share: bool = False,
) -> dict[str, Any]:
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
        check_json=check_json,
        share=share,
    )


def prepare_attempt(
    ctx: ControllerContext, rt: SiteRuntime, job_id: str, sif: str
) -> tuple[JobSpec, JobPaths, dict[str, Any]]:
    """The frozen spec, job directory and config.json of one attempt."""
    with job_session(ctx, job_id) as (s, job):
        maker = SpecMaker(s, rt.site, sif)
        spec = maker.spec(job)
        return spec, maker.paths(job), maker.config_json(job, spec, rt.site.api_url)


#: What the array's write-ahead intent compares and sets, read with the spec columns.
CAS_COLUMNS = (Job.state, Job.state_seq)


def prepare_attempts(
    ctx: ControllerContext, rt: SiteRuntime, job_ids: Sequence[str], sif: str
) -> tuple[list[tuple[JobSpec, JobPaths, dict[str, Any]]], dict[str, Any]]:
    """``prepare_attempt`` for many jobs in one transaction, from Core rows (no ORM
    objects), shared parts worked out once; and each job's row as read (with
    :data:`CAS_COLUMNS`), for a later compare-and-set."""
    ids = list(job_ids)
    columns = spec_columns(*CAS_COLUMNS)
    with ctx.db.session() as s:
        rows: dict[str, Any] = {}
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            # Named tuples: a spec, its paths and its config.json read ~25 columns a row.
            for r in records(s.execute(select(*columns).where(Job.id.in_(chunk)))):
                rows[r.id] = r
        maker = SpecMaker(s, rt.site, sif)
        out = []
        for jid in ids:
            job = rows.get(jid)
            if job is None:
                raise InvalidInputError(f"job {jid} vanished", "it was deleted meanwhile")
            spec = maker.spec(job)
            # The array's stage-in encodes each config.json and fails a task whose
            # document is not JSON data (input_staging): no second encoding here, and
            # it only encodes it: no copy of the config its jobs share.
            cfg = maker.config_json(job, spec, rt.site.api_url, check_json=False, share=True)
            out.append((spec, maker.paths(job), cfg))
    return out, rows


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
